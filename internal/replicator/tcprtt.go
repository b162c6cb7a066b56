package replicator

// Round-trip samples for delay-based rate control, read from the kernel's
// TCP state. The replication protocol's own acknowledgements (AckFull,
// AckData, AckCommit) come only after the mirror made data durable (every
// 64 MiB or 500 ms of a full copy, every 16 MiB of a cycle), so their
// timing mixes fsync with the path's queue and is far too coarse for a
// 25 ms target. The kernel measures the RTT of every acknowledged segment
// of the same connection: its smoothed RTT (tcpi_rtt) is the sender's
// view of the bottleneck queue the copy builds, with no protocol change
// and the same signal for full copies, cycles and verify repairs.

import (
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// rttSampleEvery is how often a link under delay control reads its RTT;
// the controller filters over the last four samples.
const rttSampleEvery = 10 * time.Millisecond

// tcpRTT returns the kernel's smoothed RTT of the TCP connection under c
// and whether data is in flight (only then is the RTT fresh: it updates
// as acknowledgements of new data arrive).
func tcpRTT(rc syscall.RawConn) (rtt time.Duration, inflight bool, ok bool) {
	var info *unix.TCPInfo
	var gerr error
	err := rc.Control(func(fd uintptr) {
		info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if err != nil || gerr != nil {
		return 0, false, false
	}
	return time.Duration(info.Rtt) * time.Microsecond, info.Unacked > 0, true
}

// rttSampler feeds a limiter's delay controller from one connection until
// stopped.
type rttSampler struct {
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// startRTTSampler starts sampling c's RTT into observe; nil when c is not
// a TCP connection (nothing to sample). sent counts the bytes written to
// c: a sample counts when data is in flight or was sent since the last
// one (a paced sender's quantum is often acknowledged before the next
// tick, and its RTT is fresh all the same); an idle link's RTT is stale
// and is not fed.
func startRTTSampler(c net.Conn, sent func() int64, observe func(time.Duration)) *rttSampler {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	s := &rttSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(rttSampleEvery)
		defer t.Stop()
		last := sent()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
			now := sent()
			if rtt, inflight, ok := tcpRTT(rc); ok && (inflight || now != last) {
				observe(rtt)
			}
			last = now
		}
	}()
	return s
}

// close stops the sampler and waits for it.
func (s *rttSampler) close() {
	if s == nil {
		return
	}
	s.once.Do(func() { close(s.stop) })
	<-s.done
}
