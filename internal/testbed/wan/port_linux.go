package wan

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"

	"github.com/premirror/premirror/internal/testbed/internal/kernel"
)

// kernelPort is a switch port backed by a veth end in the switch's
// namespace.
type kernelPort struct {
	pc  *kernel.PacketConn
	xdp link.Link

	mu    sync.Mutex
	drops uint64 // accumulated: the kernel counter resets on read
}

// PassProgram loads the trivial XDP program OpenKernelPort attaches; load
// it once per switch and close it after the switch.
func PassProgram() (*ebpf.Program, error) { return kernel.NewPassProgram() }

// OpenKernelPort makes the veth end ifname (index ifindex) in namespace ns
// a switch port:
//
//   - it attaches pass (from [PassProgram]) in native mode, because a veth
//     drops frames that its peer sends with XDP_TX or XDP_REDIRECT unless
//     this end runs an XDP program;
//   - it turns GRO off (attaching XDP turns it on), so the switch sees the
//     frames as sent rather than coalesced super-packets, and transmit
//     checksum offload off;
//   - it opens an AF_PACKET socket bound to the port.
//
// Closing the returned PortIO closes the socket and detaches the program.
func OpenKernelPort(ns netns.NsHandle, ifname string, ifindex int, pass *ebpf.Program) (PortIO, error) {
	l, err := kernel.AttachXDP(ns, pass, ifindex)
	if err != nil {
		return nil, fmt.Errorf("port %s: %w", ifname, err)
	}
	if err := kernel.SetOffloads(ns, kernel.Offloads{}, ifname); err != nil {
		l.Close()
		return nil, fmt.Errorf("port %s: %w", ifname, err)
	}
	// 4 MiB absorbs bursts while the receive goroutine is descheduled.
	pc, err := kernel.OpenPacket(ns, ifindex, 4<<20)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("port %s: %w", ifname, err)
	}
	return &kernelPort{pc: pc, xdp: l}, nil
}

func (k *kernelPort) Read(buf []byte) (int, error) {
	n, err := k.pc.Read(buf)
	if errors.Is(err, kernel.ErrTruncated) {
		return 0, fmt.Errorf("%w", ErrOversize)
	}
	return n, err
}

func (k *kernelPort) Write(frame []byte) error { return k.pc.Write(frame) }

func (k *kernelPort) ReadBatch(bufs [][]byte, lens []int) (int, error) {
	return k.pc.ReadBatch(bufs, lens)
}

func (k *kernelPort) WriteBatch(frames [][]byte) (int, error) { return k.pc.WriteBatch(frames) }

// Overruns implements the optional overrun counter of PortIO.
func (k *kernelPort) Overruns() uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	if d, err := k.pc.Drops(); err == nil {
		k.drops += d
	}
	return k.drops
}

func (k *kernelPort) Close() error {
	return errors.Join(k.pc.Close(), k.xdp.Close())
}
