package controller

import (
	"fmt"
	"math"
	"time"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/forecast"
)

// A placed copy has a deadline: the time by which it should be in sync.
// The score weighs the whole horizon's demand; the copy matters most for
// its above-average part. So the deadline is the start of the first
// forecast bucket whose predicted benefit at the candidate — each
// region's median demand in that bucket times the latency the copy saves
// it — reaches the mean benefit over the score's horizon. Flat or
// falling demand makes it the next bucket's start (the copy is wanted at
// once); demand that peaks later lets the transfer wait for off-peak
// bandwidth. The origin's agent plans the transfer against it
// (agent.ChooseStart).

// readyBucket returns the index (0: the bucket after the forecast's
// origin) of the first bucket within horizon whose median benefit at a
// candidate with the given per-region route costs (seconds) reaches the
// mean over the horizon; -1 when there is no forecast to weigh. current
// is each region's cost today; a region without one, or that the
// candidate does not bring closer, gains nothing (as in forecast.Score).
func readyBucket(demand []forecast.RegionDemand, current, latency map[string]float64, horizon int) int {
	H := forecast.ScoreHorizon(demand, horizon)
	if H <= 0 {
		return -1
	}
	ben := make([]float64, H)
	var sum float64
	for _, d := range demand {
		cur, ok := current[d.Region]
		lat, ok2 := latency[d.Region]
		if !ok || !ok2 || !(cur > lat) {
			continue
		}
		for h := range ben {
			b := (cur - lat) * math.Max(d.Q[h].Q50, 0)
			ben[h] += b
			sum += b
		}
	}
	// A tolerance of rounding: a flat series must qualify at its first
	// bucket although sum/H may round above each of its equal terms.
	mean := sum / float64(H)
	for h, b := range ben {
		if b >= mean*(1-1e-9) {
			return h
		}
	}
	return H - 1 // not reached: the maximum is at least the mean
}

// deadlineOf is the start of bucket k of a forecast whose last observed
// bucket starts at origin (bucket 0 starts one step after it); zero when
// k < 0 or the step is unknown.
func deadlineOf(origin time.Time, step time.Duration, k int) time.Time {
	if k < 0 || step <= 0 {
		return time.Time{}
	}
	return origin.Add(time.Duration(k+1) * step)
}

// candidateDeadline is the deadline of a copy at cand, evaluated at now:
// never before now (a bucket that already began — the forecast's origin
// lags the evaluation by up to a bucket — means the copy is wanted at
// once, not that it is late).
func candidateDeadline(fc *pb.ResourceForecast, demand []forecast.RegionDemand, req forecast.ScoreRequest, cand forecast.Candidate, now time.Time) time.Time {
	k := readyBucket(demand, req.Current, cand.Latency, req.Horizon)
	d := deadlineOf(time.Unix(fc.GetOriginUnix(), 0), time.Duration(fc.GetStepSeconds())*time.Second, k)
	if !d.IsZero() && d.Before(now) {
		return now
	}
	return d
}

// deadlineText is how operators read a deadline.
func deadlineText(ns int64) string {
	if ns == 0 {
		return "none"
	}
	return time.Unix(0, ns).UTC().Format(time.RFC3339)
}

// mib renders a byte count for explain and logs.
func mib(n uint64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
