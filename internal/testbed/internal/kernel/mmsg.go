package kernel

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr (x/sys/unix does not define it).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// batchScratch holds the per-call arrays of one direction, reused to
// keep the hot path free of allocations.
type batchScratch struct {
	msgs  []mmsghdr
	iovs  []unix.Iovec
	addrs []unix.RawSockaddrLinklayer
}

func (b *batchScratch) prepare(bufs [][]byte, withAddr bool) {
	n := len(bufs)
	if cap(b.msgs) < n {
		b.msgs = make([]mmsghdr, n)
		b.iovs = make([]unix.Iovec, n)
		b.addrs = make([]unix.RawSockaddrLinklayer, n)
	}
	b.msgs, b.iovs, b.addrs = b.msgs[:n], b.iovs[:n], b.addrs[:n]
	for i, buf := range bufs {
		b.iovs[i].Base = &buf[0]
		b.iovs[i].SetLen(len(buf))
		b.msgs[i] = mmsghdr{}
		b.msgs[i].hdr.Iov = &b.iovs[i]
		b.msgs[i].hdr.SetIovlen(1)
		if withAddr {
			b.msgs[i].hdr.Name = (*byte)(unsafe.Pointer(&b.addrs[i]))
			b.msgs[i].hdr.Namelen = uint32(unsafe.Sizeof(b.addrs[i]))
		}
	}
}

// ReadBatch receives up to len(bufs) frames with one recvmmsg call,
// blocking (in the runtime poller) until at least one is there. For i < n,
// lens[i] is the length of the frame in bufs[i], -1 if the frame was longer
// than bufs[i] (it is lost), or 0 for a frame the interface itself sent
// (PACKET_OUTGOING), to be skipped. Not safe for concurrent use with
// another ReadBatch.
func (c *PacketConn) ReadBatch(bufs [][]byte, lens []int) (int, error) {
	b := &c.rx
	b.prepare(bufs, true)
	var n uintptr
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		n, _, errno = unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.msgs[0])),
			uintptr(len(b.msgs)), unix.MSG_TRUNC, 0, 0)
		return errno != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	for i := 0; i < int(n); i++ {
		switch l := int(b.msgs[i].len); {
		case b.addrs[i].Pkttype == unix.PACKET_OUTGOING:
			lens[i] = 0
		case l > len(bufs[i]) || b.msgs[i].hdr.Flags&unix.MSG_TRUNC != 0:
			lens[i] = -1
		default:
			lens[i] = l
		}
	}
	return int(n), nil
}

// WriteBatch sends frames in order with sendmmsg calls and returns how
// many were sent; on error, frames[n] is the one that failed. Not safe for
// concurrent use with another WriteBatch.
func (c *PacketConn) WriteBatch(frames [][]byte) (int, error) {
	b := &c.tx
	sent := 0
	for sent < len(frames) {
		b.prepare(frames[sent:], false)
		var n uintptr
		var errno syscall.Errno
		err := c.rc.Write(func(fd uintptr) bool {
			n, _, errno = unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.msgs[0])),
				uintptr(len(b.msgs)), 0, 0, 0)
			return errno != unix.EAGAIN
		})
		if err != nil {
			return sent, err
		}
		if errno != 0 {
			return sent, errno
		}
		sent += int(n)
	}
	return sent, nil
}
