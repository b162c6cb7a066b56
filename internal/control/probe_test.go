package control

import (
	"testing"
	"time"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/probe"
)

func TestProbeResult(t *testing.T) {
	at := time.Unix(1_800_000_000, 5)
	e := probe.Estimate{RTT: 12 * time.Millisecond, Median: 11 * time.Millisecond, Min: 9 * time.Millisecond,
		Jitter: time.Millisecond, Loss: 0.25, Health: probe.HealthDown, Samples: 6, Probes: 8, LastProbe: at}
	r := ProbeResult("paris", e)
	if r.GetMirror() != "paris" || r.GetRttNs() != int64(12*time.Millisecond) || r.GetMinNs() != int64(9*time.Millisecond) ||
		r.GetLoss() != 0.25 || r.GetHealth() != pb.Health_HEALTH_DOWN || r.GetSamples() != 6 || r.GetProbes() != 8 ||
		r.GetLastProbeUnixNano() != at.UnixNano() {
		t.Fatalf("%v", r)
	}
	if h := ProbeResult("x", probe.Estimate{}).GetHealth(); h != pb.Health_HEALTH_UNKNOWN {
		t.Fatalf("health %v", h)
	}
	if h := ProbeResult("x", probe.Estimate{Health: probe.HealthUp}).GetHealth(); h != pb.Health_HEALTH_UP {
		t.Fatalf("health %v", h)
	}
}
