package agent

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/vishvananda/netlink"
)

// TestInterfaceChangesUnderRunningAgent changes the world under a running
// agent, in a namespace the test made: its interface is deleted and
// re-created under the same name (a new ifindex), its address replaced,
// the interface renamed away and back, set down and up. The agent had
// attached at start only: a re-created interface ran no program (VIP
// traffic went to the stack) while edge_xdp_attached, /healthz and /livez
// still said attached, until a restart; and outer sources read from the
// interface stayed the old address until the 5-minute resync. Now a gone
// interface shows in /healthz (not /livez: a restart cannot bring it
// back), and a returning one is attached again and steers traffic.
func TestInterfaceChangesUnderRunningAgent(t *testing.T) {
	requireRoot(t)
	ns, _, a := runningAgent(t)

	health := func(h http.HandlerFunc) (int, string) {
		rec := httptest.NewRecorder()
		h(rec, httptest.NewRequest("GET", "/", nil))
		b, _ := io.ReadAll(rec.Body)
		return rec.Code, string(b)
	}
	attachedSeries := func() string {
		exp, _ := testutil.CollectAndFormat(a.metrics, expfmt.TypeTextPlain, "edge_xdp_attached")
		return string(exp)
	}
	index := func(name string) int {
		var idx int
		ns.Do(func() {
			if l, err := netlink.LinkByName(name); err == nil {
				idx = l.Attrs().Index
			}
		})
		return idx
	}
	steered := func() uint64 {
		cs, err := a.router.Counters()
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, c := range cs {
			n += c.Packets
		}
		return n
	}
	eventually := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 5 s", what)
			}
		}
	}
	attached := func(what string) {
		t.Helper()
		eventually(what+": router attached to pa0 again", func() bool {
			code, _ := health(a.healthz)
			return code == http.StatusOK && xdpProgID(t, ns, "pa0") != 0
		})
		idx := index("pa0")
		a.mu.Lock()
		atIdx := a.attach[0].Ifindex
		a.mu.Unlock()
		if atIdx != idx {
			t.Fatalf("%s: attachment at ifindex %d, pa0 is %d", what, atIdx, idx)
		}
		if s := attachedSeries(); !strings.Contains(s, `iface="pa0"`) {
			t.Fatalf("%s: edge_xdp_attached %s", what, s)
		}
		before := steered()
		inject(t, ns, udpFrame(t, ns, "192.0.2.1", 53))
		eventually(what+": VIP packet steered", func() bool { return steered() > before })
	}
	gone := func(what string) {
		t.Helper()
		eventually(what+": healthz names pa0", func() bool {
			code, body := health(a.healthz)
			return code == http.StatusServiceUnavailable && strings.Contains(body, "pa0_router")
		})
		if code, body := health(a.livez); code != http.StatusOK {
			t.Fatalf("%s: livez %d %s: a restart cannot bring an interface back", what, code, body)
		}
		if s := attachedSeries(); strings.Contains(s, `iface="pa0"`) {
			t.Fatalf("%s: edge_xdp_attached still reports pa0:\n%s", what, s)
		}
	}
	attached("at start")
	first := index("pa0")

	steps := []struct {
		what   string
		change func(t *testing.T)
		check  func(what string)
	}{
		{"deleted", func(t *testing.T) {
			ns.Do(func() {
				l, _ := netlink.LinkByName("pa0")
				if err := netlink.LinkDel(l); err != nil {
					t.Fatal(err)
				}
			})
		}, gone},
		{"re-created under its name", func(t *testing.T) {
			agentNSLinks(t, ns)
		}, func(what string) {
			attached(what)
			if index("pa0") == first {
				t.Fatalf("the re-created pa0 kept ifindex %d", first)
			}
		}},
		{"address replaced", func(t *testing.T) {
			ns.Do(func() {
				l, _ := netlink.LinkByName("pa0")
				old, _ := netlink.ParseAddr("10.77.0.1/24")
				nw, _ := netlink.ParseAddr("10.79.0.5/24") // another subnet: deleting a primary takes its secondaries
				if err := netlink.AddrAdd(l, nw); err != nil {
					t.Fatal(err)
				}
				if err := netlink.AddrDel(l, old); err != nil {
					t.Fatal(err)
				}
			})
		}, func(what string) {
			eventually(what+": outer source follows", func() bool {
				st, err := a.router.Settings()
				return err == nil && st.OuterSourceV4 == mustAddr("10.79.0.5")
			})
		}},
		{"renamed away", func(t *testing.T) { rename(t, ns, "pa0", "px0") }, gone},
		{"renamed back", func(t *testing.T) { rename(t, ns, "px0", "pa0") }, attached},
		{"down and up", func(t *testing.T) {
			ns.Do(func() {
				l, _ := netlink.LinkByName("pa0")
				netlink.LinkSetDown(l)
				netlink.LinkSetUp(l)
			})
		}, attached},
	}
	for _, s := range steps {
		s.change(t)
		s.check(s.what)
	}
	if n, err := a.router.NextPrograms(nil); err != nil || len(n) != 0 {
		t.Fatalf("chain slots %v (%v), want none", n, err)
	}
}

// agentNSLinks creates agentNS's veth pair pa0/pa1 (again).
func agentNSLinks(t *testing.T, ns netNS) {
	t.Helper()
	if err := ns.n.AddVeth("pa0", "pa1"); err != nil {
		t.Fatal(err)
	}
	addPA0Addrs(t, ns.n)
}

func rename(t *testing.T, ns netNS, from, to string) {
	t.Helper()
	ns.Do(func() {
		l, err := netlink.LinkByName(from)
		if err != nil {
			t.Fatal(err)
		}
		netlink.LinkSetDown(l)
		if err := netlink.LinkSetName(l, to); err != nil {
			t.Fatal(err)
		}
		netlink.LinkSetUp(l)
	})
}

// TestInterfaceWatchHasOneReceiver: while the interface watch runs, its
// loop must be the only receiver of the link and address updates. A
// second receiver (a "drain" goroutine ranging over the channel) takes
// a share of the events, which the loop then never sees: a deleted,
// re-created or renamed interface, or a changed address, can go
// unnoticed. The watch subscribes in the test's own namespace (no
// namespace or link is created) and no event is needed: the stacks
// show the receivers.
func TestInterfaceWatchHasOneReceiver(t *testing.T) {
	a := New(&Config{Node: "n"}, "", discardLogger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	signalled := make(chan struct{}, 1)
	go func() {
		done <- a.watchInterfacesOnce(ctx, []string{"pm-none0"}, false, func() {
			select {
			case signalled <- struct{}{}:
			default:
			}
		})
	}()
	select {
	case <-signalled: // subscribed
	case err := <-done:
		t.Skipf("cannot subscribe to netlink here: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the watch never subscribed")
	}
	time.Sleep(50 * time.Millisecond) // let every goroutine it started park
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	var thieves []string
	for _, g := range strings.Split(string(buf[:n]), "\n\n") {
		if strings.Contains(g, "watchInterfacesOnce.func") && strings.Contains(g, "[chan receive]") {
			thieves = append(thieves, g)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(thieves) > 0 {
		t.Fatalf("%d goroutines receive the updates besides the watch loop:\n%s", len(thieves), strings.Join(thieves, "\n\n"))
	}
}
