package e2e

import (
	"net/netip"
	"regexp"
	"strconv"
	"testing"

	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/testbed"
)

// TestGUEMirrors: mirrors configured with encap gue are reached over GUE
// (IPv4 outer to m-eu, IPv6 outer to m-core) through the real agents —
// the edge's static mirror config and the mirrors' decap_gue_port — beside
// an IPIP mirror (m-us), for TCP and UDP over IPv4 and IPv6, and a route
// change moves new flows between the two encapsulations.
func TestGUEMirrors(t *testing.T) {
	const guePort = 6635
	e := startWith(t, 1, webResource(map[string]map[string]uint32{
		"eu": {"m-eu": 1},
		"us": {"m-core": 1},
	}, nil), func(s *agent.DesiredState) {
		for i := range s.Mirrors {
			if n := s.Mirrors[i].Name; n == "m-eu" || n == "m-core" {
				s.Mirrors[i].Encap, s.Mirrors[i].GUEPort = "gue", guePort
			}
		}
	}, func(h *testbed.Host, c *agent.Config) error {
		if h.Role == testbed.RoleMirror {
			c.DecapGUEPort = guePort
		}
		return nil
	})
	check := func(want map[string]string) {
		t.Helper()
		for region, mirror := range want {
			c := e.tb.Clients(region)[0]
			for _, network := range []string{"tcp", "udp"} {
				for _, vip := range []netip.Addr{vip4, vip6} {
					if got := e.ask(c.Name, network, vip); got != mirror {
						t.Errorf("%s %s %s served by %s, want %s", c.Name, network, vip, got, mirror)
					}
				}
			}
		}
	}
	check(map[string]string{"eu": "m-eu", "us": "m-core"})
	for _, m := range []string{"m-eu", "m-core"} {
		if n := decapCount(t, e, m, "gue"); n == 0 {
			t.Errorf("%s decapsulated no GUE", m)
		}
	}
	// us moves to the IPIP mirror: new flows follow, encapsulated IPIP.
	e.setState(routes(map[string]map[string]uint32{"eu": {"m-eu": 1}, "us": {"m-us": 1}}))
	check(map[string]string{"us": "m-us"})
	if n := decapCount(t, e, "m-us", "gue"); n != 0 {
		t.Errorf("IPIP mirror m-us decapsulated %d GUE packets", n)
	}
	if n := decapCount(t, e, "m-us", "decap_v4") + decapCount(t, e, "m-us", "decap_v6"); n == 0 {
		t.Error("IPIP mirror m-us decapsulated nothing")
	}
}

var decapMetric = regexp.MustCompile(`(?m)^edge_decap_packets_total\{reason="([a-z0-9_]+)"\} (\d+)$`)

// decapCount reads a mirror agent's edge_decap_packets_total{reason}.
func decapCount(t *testing.T, e *env, host, reason string) uint64 {
	t.Helper()
	m, err := e.lab.Metrics(host)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range decapMetric.FindAllStringSubmatch(m, -1) {
		if g[1] == reason {
			n, _ := strconv.ParseUint(g[2], 10, 64)
			return n
		}
	}
	t.Fatalf("%s metrics lack edge_decap_packets_total{reason=%q}", host, reason)
	return 0
}
