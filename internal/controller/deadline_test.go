package controller

import (
	"strings"
	"testing"
	"time"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/forecast"
)

// series is a region's forecast with q10 = q50/2 and q90 = 2·q50.
func series(region string, q50 ...float64) forecast.RegionDemand {
	d := forecast.RegionDemand{Region: region}
	for _, v := range q50 {
		d.Q = append(d.Q, forecast.Quantiles{Q10: v / 2, Q50: v, Q90: 2 * v})
	}
	return d
}

// TestReadyBucket: the deadline bucket is the first whose median benefit
// (demand × latency saved, summed over regions) reaches the horizon's mean.
func TestReadyBucket(t *testing.T) {
	cur := map[string]float64{"us": 0.080, "eu": 0.010, "asia": 0.150, "near": 0.011}
	lat := map[string]float64{"us": 0.004, "eu": 0.080, "asia": 0.100, "near": 0.010}
	for _, tc := range []struct {
		name    string
		demand  []forecast.RegionDemand
		current map[string]float64
		horizon int
		want    int
	}{
		{name: "flat demand: the next bucket", demand: []forecast.RegionDemand{series("us", 10, 10, 10, 10)}, want: 0},
		{name: "falling demand: the next bucket", demand: []forecast.RegionDemand{series("us", 40, 30, 20, 10)}, want: 0},
		{name: "rising demand: the first bucket at or above the mean (25)",
			demand: []forecast.RegionDemand{series("us", 10, 20, 30, 40)}, want: 2},
		{name: "a peak later in the horizon", demand: []forecast.RegionDemand{series("us", 0, 0, 0, 0, 50, 0)}, want: 4},
		// eu gains nothing from the candidate (it is farther than eu's
		// copy): its peak at bucket 0 does not count; us's at 3 does.
		{name: "regions the candidate does not serve are ignored",
			demand: []forecast.RegionDemand{series("eu", 1000, 0, 0, 0), series("us", 0, 0, 0, 8)}, want: 3},
		// near saves 1 ms a request, us 76: near's 100 at bucket 0 weigh
		// 0.1, us's 10 at bucket 2 weigh 0.76; the mean is 0.215. Counted
		// in requests alone, bucket 0 would qualify.
		{name: "weighted by the latency each region saves",
			demand: []forecast.RegionDemand{series("near", 100, 0, 0, 0), series("us", 0, 0, 10, 0)}, want: 2},
		{name: "a region without a current cost gains nothing",
			demand:  []forecast.RegionDemand{series("us", 0, 0, 9, 0), series("asia", 9, 0, 0, 0)},
			current: map[string]float64{"us": 0.080}, want: 2},
		{name: "only the score's horizon counts", demand: []forecast.RegionDemand{series("us", 1, 2, 3, 100)}, horizon: 3, want: 1},
		{name: "the shortest region forecast bounds the horizon",
			demand: []forecast.RegionDemand{series("us", 1, 2, 3, 100), series("asia", 0, 0, 0)}, want: 1},
		{name: "no benefit anywhere: the next bucket", demand: []forecast.RegionDemand{series("eu", 5, 50, 500)}, want: 0},
		{name: "negative medians count as none", demand: []forecast.RegionDemand{series("us", -5, 1, 1)}, want: 1},
		{name: "no forecast", demand: nil, want: -1},
		{name: "empty forecast", demand: []forecast.RegionDemand{series("us")}, want: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.current
			if c == nil {
				c = cur
			}
			if got := readyBucket(tc.demand, c, lat, tc.horizon); got != tc.want {
				t.Fatalf("ready bucket %d, want %d", got, tc.want)
			}
		})
	}
}

// TestCandidateDeadline: bucket k starts (k+1) steps after the forecast's
// origin (the start of its last observed bucket).
func TestCandidateDeadline(t *testing.T) {
	origin := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	fc := &pb.ResourceForecast{OriginUnix: origin.Unix(), StepSeconds: 3600}
	req := forecast.ScoreRequest{Current: map[string]float64{"us": 0.08}}
	cand := forecast.Candidate{Location: "us", Latency: map[string]float64{"us": 0.004}}
	for _, tc := range []struct {
		q50  []float64
		want time.Time
	}{
		{[]float64{5, 5, 5}, origin.Add(time.Hour)},
		{[]float64{0, 0, 9, 9}, origin.Add(3 * time.Hour)},
	} {
		if got := candidateDeadline(fc, []forecast.RegionDemand{series("us", tc.q50...)}, req, cand, origin); !got.Equal(tc.want) {
			t.Errorf("%v: deadline %v, want %v", tc.q50, got, tc.want)
		}
	}
	late := origin.Add(90 * time.Minute) // evaluated after the first bucket began
	if got := candidateDeadline(fc, []forecast.RegionDemand{series("us", 5, 5, 5)}, req, cand, late); !got.Equal(late) {
		t.Errorf("evaluated at %v: deadline %v, want the evaluation time (wanted at once)", late, got)
	}
	if got := candidateDeadline(&pb.ResourceForecast{OriginUnix: origin.Unix()}, []forecast.RegionDemand{series("us", 1)}, req, cand, origin); !got.IsZero() {
		t.Errorf("no step: deadline %v, want none", got)
	}
}

// TestDecideCarriesDeadline: a placement records the candidate's deadline
// and bytes in the placed entry and the event.
func TestDecideCarriesDeadline(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	dl := now.Add(3 * time.Hour)
	in := placeInput{now: now, predictive: true, mirrorScore: 0.6, retireScore: 0.3, copies: 1,
		cands: []placeCandidate{{site: "us", mirror: "nyc", score: 0.9, copyBytes: 5 << 20, deadline: dl}}}
	rec := &pb.PlacementRecord{Resource: "disk", Above: map[string]uint32{"us": 1}}
	out, changed := decide(rec, in)
	if !changed || len(out.GetPlaced()) != 1 {
		t.Fatalf("not placed: %v", out)
	}
	pl, ev := out.GetPlaced()[0], out.GetEvents()[0]
	if pl.GetDeadlineUnixNano() != dl.UnixNano() || pl.GetCopyBytes() != 5<<20 || ev.GetDeadlineUnixNano() != dl.UnixNano() || ev.GetCopyBytes() != 5<<20 {
		t.Fatalf("placement %v event %v: want deadline %v and 5 MiB", pl, ev, dl)
	}
	if !strings.Contains(ev.GetReason(), "~5.0 MiB to send, in sync by "+dl.UTC().Format(time.RFC3339)) {
		t.Errorf("reason %q", ev.GetReason())
	}
	var b strings.Builder
	writeManagerState(&b, &pb.Resource{Name: "disk", MirrorPolicy: &pb.MirrorPolicy{Mode: pb.MirrorMode_MIRROR_MODE_PREDICTIVE}}, out)
	if !strings.Contains(b.String(), "in sync by "+dl.UTC().Format(time.RFC3339)) {
		t.Errorf("explain's manager state:\n%s", b.String())
	}
}

// TestDeltaCopyCost: a copy left on a host costs what the origin's change
// tracking says it must catch up on, which raises its score over an
// otherwise identical full copy; without a report it is costed in full.
func TestDeltaCopyCost(t *testing.T) {
	res := &pb.Resource{Name: "disk", SizeBytes: 1 << 30}
	origin := &pb.Mirror{Name: "paris", Node: "h-paris"}
	nyc := &pb.Mirror{Name: "nyc", Node: "h-nyc"}
	w := &world{backlogs: map[backlogKey]uint64{
		{"h-paris", "disk", "h-nyc"}:   64 << 20,
		{"h-paris", "disk", "h-tokyo"}: 4 << 30, // more than the size: never tracked, or larger blocks
		{"h-paris", "disk", "h-lima"}:  0,
		{"h-other", "disk", "h-sf"}:    1 << 20, // another node's volume
	}}
	for _, tc := range []struct {
		target   *pb.Mirror
		want     int64
		wantNote string
	}{
		{nyc, 64 << 20, "delta: ~64.0 MiB to catch up, of 1024.0 MiB"},
		{&pb.Mirror{Name: "tokyo", Node: "h-tokyo"}, 1 << 30, "delta: ~1024.0 MiB to catch up"},
		{&pb.Mirror{Name: "lima", Node: "h-lima"}, 1, "delta: ~0.0 MiB to catch up"},
		{&pb.Mirror{Name: "sf", Node: "h-sf"}, 0, "costed as a full copy: paris's host h-paris has not reported its change tracking toward h-sf"},
		{&pb.Mirror{Name: "nowhere"}, 0, "costed as a full copy: the origin or the target has no node"},
	} {
		got, note := deltaCopy(w, res, origin, tc.target)
		if got != tc.want || !strings.Contains(note, tc.wantNote) {
			t.Errorf("%s: %d bytes (%q), want %d (%q)", tc.target.GetName(), got, note, tc.want, tc.wantNote)
		}
	}

	// Two candidates that differ only in what they copy: the delta's lower
	// copy cost makes it more likely to pay off.
	delta, _ := deltaCopy(w, res, origin, nyc)
	lat := map[string]float64{"us": 0.004}
	req := forecast.ScoreRequest{Bytes: int64(res.GetSizeBytes()), Current: map[string]float64{"us": 0.08},
		Prices:     forecast.Prices{CopyPerByte: 1e-9, StorePerByteHour: 1e-12, ValuePerRequestSecond: 0.01},
		Candidates: []forecast.Candidate{{Location: "full", Latency: lat}, {Location: "delta", Latency: lat, CopyBytes: delta}}}
	scores, err := forecast.Score([]forecast.RegionDemand{series("us", 300, 300, 300, 300)}, req, time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]forecast.MirrorScore{}
	for _, s := range scores {
		by[s.Location] = s
	}
	if !(by["delta"].CopyCost < by["full"].CopyCost) || !(by["delta"].Score > by["full"].Score) {
		t.Fatalf("delta %+v\nfull %+v: want a lower copy cost and a higher score", by["delta"], by["full"])
	}
}
