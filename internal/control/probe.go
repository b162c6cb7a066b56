package control

import (
	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/probe"
)

// ProbeResult converts the agent's estimate of the path to a mirror
// (internal/probe) into the report's form.
func ProbeResult(mirror string, e probe.Estimate) *pb.ProbeResult {
	h := pb.Health_HEALTH_UNKNOWN
	switch e.Health {
	case probe.HealthUp:
		h = pb.Health_HEALTH_UP
	case probe.HealthDown:
		h = pb.Health_HEALTH_DOWN
	}
	r := &pb.ProbeResult{Mirror: mirror, RttNs: int64(e.RTT), MedianNs: int64(e.Median), MinNs: int64(e.Min),
		JitterNs: int64(e.Jitter), Loss: e.Loss, Health: h, Samples: uint64(max(e.Samples, 0)), Probes: uint64(max(e.Probes, 0))}
	if !e.LastProbe.IsZero() {
		r.LastProbeUnixNano = e.LastProbe.UnixNano()
	}
	return r
}
