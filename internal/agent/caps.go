package agent

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// neededCaps are the capabilities the agent cannot run without, beyond
// what they imply (CAP_SYS_ADMIN passes the kernel's CAP_BPF and
// CAP_PERFMON checks too), and why.
var neededCaps = []struct {
	bit  int
	name string
	why  string
}{
	{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN", "every start after the first reopens the pinned route tables and chained programs by ID " +
		"(BPF_MAP_GET_FD_BY_ID, BPF_PROG_GET_FD_BY_ID), and the interface and next-hop watches enter the agent's network namespace (setns)"},
	{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN", "attach XDP programs, set forwarding sysctls"},
}

// checkCapabilities refuses to start without a needed capability in the
// effective set, naming it. Without CAP_SYS_ADMIN the first start works
// and every later one fails with a bare "operation not permitted" once
// routes are installed: a crash loop whose cause the error does not say.
func checkCapabilities() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	var missing []string
	for _, c := range neededCaps {
		if data[c.bit/32].Effective&(1<<(c.bit%32)) == 0 {
			missing = append(missing, fmt.Sprintf("%s, needed because %s", c.name, c.why))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the effective capabilities lack %s (deploy/kubernetes/edge-agent.yaml shows what to grant)",
			strings.Join(missing, "; and "))
	}
	return nil
}
