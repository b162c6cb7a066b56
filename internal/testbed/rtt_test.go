package testbed

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// TestRTTAccuracy measures UDP RTTs between a client and a mirror through
// the switch for several configured one-way delays and compares them with
// twice the delay. It asserts that no RTT is shorter than configured and
// a p50 error within max(5 ms, 2×RTTTolerance), looser than the stated
// tolerance so a CPU-saturated 2-core machine does not flake it; it logs
// p50/p99 errors for docs/BENCHMARKS.md.
func TestRTTAccuracy(t *testing.T) {
	p := netip.MustParsePrefix
	topo := Topology{
		VIPs:    []netip.Addr{netip.MustParseAddr("10.200.0.1")},
		Regions: []Region{{Name: "r", Edge: "e", Clients: 1, PrefixV4: p("10.1.0.0/24"), PrefixV6: p("fd00:1::/64")}},
		Edges:   []Edge{{Name: "e"}},
		Mirrors: []Mirror{{Name: "m"}},
	}
	tb := ForTest(t, topo, Options{})
	ctx := ctxT(t, 60*time.Second)
	c, m := tb.Clients("r")[0], tb.Host("m")
	n, interval := 100, 5*time.Millisecond
	if os.Getenv("PREMIRROR_LONG") != "" {
		n = 1000
	}
	var report strings.Builder
	fmt.Fprintf(&report, "| one-way delay | RTT configured | samples | p50 error | p99 error | max error |\n|---|---|---|---|---|---|\n")
	for _, d := range []time.Duration{0, 5 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond} {
		if err := tb.SetDelay(c.Name, m.Name, d); err != nil {
			t.Fatal(err)
		}
		rtts, err := MeasureRTT(ctx, c.NetNS, hostPort(m.V4(), 8053), n, interval)
		if err != nil {
			t.Fatal(err)
		}
		if len(rtts) < n*95/100 {
			t.Fatalf("delay %v: %d of %d answered", d, len(rtts), n)
		}
		want := 2 * d
		p50, p99, mx := Quantile(rtts, 0.5)-want, Quantile(rtts, 0.99)-want, rtts[len(rtts)-1]-want
		fmt.Fprintf(&report, "| %v | %v | %d | %.3f ms | %.3f ms | %.3f ms |\n", d, want, len(rtts),
			ms(p50), ms(p99), ms(mx))
		if rtts[0] < want {
			t.Errorf("delay %v: an RTT of %v is shorter than the configured %v", d, rtts[0], want)
		}
		// The stated tolerance holds with CPU to spare; with both vCPUs
		// saturated p50 errors of a few ms were seen, so assert more.
		if tol := max(5*time.Millisecond, 2*RTTTolerance(want)); p50 > tol {
			t.Errorf("delay %v: p50 RTT error %v exceeds %v", d, p50, tol)
		}
	}
	t.Logf("RTT error through the switch (measured - configured):\n%s", report.String())
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
