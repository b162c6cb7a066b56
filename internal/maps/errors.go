package maps

import (
	"errors"

	"github.com/cilium/ebpf"
)

func isNotExist(err error) bool { return errors.Is(err, ebpf.ErrKeyNotExist) }
