package kernel

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrTruncated is returned by PacketConn.Read for a frame longer than the
// buffer; the frame is consumed and lost.
var ErrTruncated = errors.New("frame longer than buffer")

// PacketConn is an AF_PACKET socket bound to one interface that sends and
// receives whole Ethernet frames. Reads and writes park the goroutine in
// the runtime poller, and Close unblocks them.
type PacketConn struct {
	f  *os.File
	rc syscall.RawConn

	rx, tx batchScratch
}

// OpenPacket opens a packet socket on ifindex inside h. Frames the socket's
// own interface transmits (PACKET_OUTGOING) are not delivered to it.
func OpenPacket(h netns.NsHandle, ifindex int, rcvbuf int) (*PacketConn, error) {
	var fd int
	err := InNS(h, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	// Kernels before 4.20 lack this option; Read filters by packet type
	// as well, so failure here only costs a copy.
	_ = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
	if rcvbuf > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
			return nil, fmt.Errorf("packet socket rcvbuf: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, rcvbuf); err != nil {
			return nil, fmt.Errorf("packet socket sndbuf: %w", err)
		}
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, fmt.Errorf("bind packet socket to ifindex %d: %w", ifindex, err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("packet:%d", ifindex))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		ok = true // f owns fd now
		return nil, fmt.Errorf("packet socket rawconn: %w", err)
	}
	ok = true
	return &PacketConn{f: f, rc: rc}, nil
}

// Read receives one incoming frame into buf. It skips frames the interface
// itself sent. A frame longer than buf returns ErrTruncated.
func (c *PacketConn) Read(buf []byte) (int, error) {
	for {
		var n int
		var sa unix.RawSockaddrLinklayer
		var errno syscall.Errno
		err := c.rc.Read(func(fd uintptr) bool {
			salen := uint32(unsafe.Sizeof(sa))
			r, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd,
				uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), unix.MSG_TRUNC,
				uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&salen)))
			n, errno = int(r), e
			return errno != unix.EAGAIN
		})
		if err != nil {
			return 0, err
		}
		switch {
		case errno == unix.EINTR:
			continue
		case errno != 0:
			return 0, errno
		case sa.Pkttype == unix.PACKET_OUTGOING:
			continue
		case n > len(buf):
			return 0, ErrTruncated
		}
		return n, nil
	}
}

// Write sends one frame out of the bound interface.
func (c *PacketConn) Write(frame []byte) error {
	_, err := rawIO(c.rc.Write, unix.SYS_WRITE, frame)
	return err
}

// rawIO runs the read(2)- or write(2)-like syscall trap on buf through the
// runtime poller (op is a RawConn's Read or Write), without allocating.
func rawIO(op func(func(uintptr) bool) error, trap uintptr, buf []byte) (int, error) {
	var n uintptr
	var errno syscall.Errno
	err := op(func(fd uintptr) bool {
		n, _, errno = unix.Syscall(trap, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
		return errno != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// Drops returns how many frames the kernel dropped because the socket's
// receive buffer was full since the previous call (the kernel resets the
// counter on each read).
func (c *PacketConn) Drops() (uint64, error) {
	var st *unix.TpacketStats
	var err error
	cerr := c.rc.Control(func(fd uintptr) {
		st, err = unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS)
	})
	if cerr != nil {
		return 0, cerr
	}
	if err != nil {
		return 0, fmt.Errorf("packet statistics: %w", err)
	}
	return uint64(st.Drops), nil
}

// Close closes the socket and wakes blocked readers and writers.
func (c *PacketConn) Close() error { return c.f.Close() }

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// NewPassProgram loads an XDP program that returns XDP_PASS. Attached to
// the far end of a veth it lets frames sent with XDP_TX or XDP_REDIRECT
// into that veth arrive (without a program on the peer the kernel drops
// them).
func NewPassProgram() (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "testbed_pass",
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 2), // XDP_PASS
			asm.Return(),
		},
		License: "GPL",
		// Declared multi-buffer aware (it never reads the packet), so a
		// veth running it accepts an MTU above a page (Linux 5.18+).
		Flags: unix.BPF_F_XDP_HAS_FRAGS,
	})
	if err != nil {
		return nil, fmt.Errorf("load xdp pass program: %w", err)
	}
	return p, nil
}

// AttachXDP attaches prog in native (driver) mode to ifindex inside h. The
// attachment is a BPF link owned by the returned value: closing it, or the
// death of this process, detaches the program.
func AttachXDP(h netns.NsHandle, prog *ebpf.Program, ifindex int) (link.Link, error) {
	var l link.Link
	err := InNS(h, func() error {
		var err error
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach xdp to ifindex %d: %w", ifindex, err)
	}
	return l, nil
}
