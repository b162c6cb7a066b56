package maps

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

func isNotExist(err error) bool { return errors.Is(err, ebpf.ErrKeyNotExist) }

// ByIDError names the missing capability when opening a BPF map or
// program by ID (BPF_MAP_GET_FD_BY_ID, BPF_PROG_GET_FD_BY_ID, and reading
// a map-in-map's value, which returns an ID) failed with EPERM: the kernel
// allows it only with CAP_SYS_ADMIN, even to a holder of CAP_BPF, and a
// bare "operation not permitted" does not say which capability to grant.
func ByIDError(err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%w (opening a BPF map or program by ID needs CAP_SYS_ADMIN)", err)
	}
	return err
}
