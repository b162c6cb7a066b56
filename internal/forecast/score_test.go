package forecast

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

// TestScoreSingleRegionExact: with one region and one bucket the benefit
// is v·saved·N with N split-normal, so P(benefit > cost) is known.
func TestScoreSingleRegionExact(t *testing.T) {
	q := Quantiles{Q10: 800, Q50: 1000, Q90: 1300}
	demand := []RegionDemand{{Region: "r", Q: []Quantiles{q}}}
	for _, tc := range []struct {
		threshold float64 // requests needed to pay off
		want      float64
	}{
		{1000, 0.5},
		{1300, 0.1},
		{800, 0.9},
		{1000 + 300*0.5244005127080407/1.2815515655446004, 0.3}, // z_0.7 = 0.5244
	} {
		// cost = copy bytes × price; benefit = N × 0.01 s × value 1.
		req := ScoreRequest{Bytes: 1e9, Horizon: 1, Current: map[string]float64{"r": 0.02},
			Candidates: []Candidate{{Location: "x", Latency: map[string]float64{"r": 0.01}}},
			Prices:     Prices{CopyPerByte: tc.threshold * 0.01 / 1e9, ValuePerRequestSecond: 1}, Samples: 20000}
		s, err := Score(demand, req, time.Hour, 1)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(s[0].Score-tc.want) > 0.01 {
			t.Errorf("threshold %.0f: score %.4f, want %.2f", tc.threshold, s[0].Score, tc.want)
		}
	}
}

func TestScoreOrderingAndValidation(t *testing.T) {
	demand := []RegionDemand{
		{Region: "near", Q: []Quantiles{{90, 100, 110}, {90, 100, 110}}},
		{Region: "far", Q: []Quantiles{{5, 10, 20}, {5, 10, 20}}},
	}
	req := ScoreRequest{Bytes: 1 << 30, Current: map[string]float64{"near": 0.05, "far": 0.05},
		Candidates: []Candidate{
			{Location: "serves-far", Latency: map[string]float64{"far": 0.01}},
			{Location: "serves-near", Latency: map[string]float64{"near": 0.01}},
			{Location: "useless", Latency: map[string]float64{"near": 0.09}},
		},
		Prices: Prices{CopyPerByte: 1e-11, StorePerByteHour: 1e-12, ValuePerRequestSecond: 0.01}}
	s, err := Score(demand, req, time.Hour, 7)
	if err != nil {
		t.Fatal(err)
	}
	if s[0].Location != "serves-near" || s[2].Location != "useless" || s[2].Score != 0 {
		t.Fatalf("order %v %v %v", s[0].Location, s[1].Location, s[2].Location)
	}
	// Deterministic.
	s2, _ := Score(demand, req, time.Hour, 7)
	if s2[0].Score != s[0].Score {
		t.Fatal("same seed, different score")
	}
	// Higher prices never raise a score.
	req.Prices.CopyPerByte *= 10
	s3, _ := Score(demand, req, time.Hour, 7)
	if s3[0].Score > s[0].Score {
		t.Fatalf("score rose with the price: %v > %v", s3[0].Score, s[0].Score)
	}
	for _, bad := range []ScoreRequest{
		{Candidates: req.Candidates, Prices: Prices{ValuePerRequestSecond: 0}},
		{Candidates: req.Candidates, Prices: Prices{ValuePerRequestSecond: 1, CopyPerByte: -1}},
		{Prices: Prices{ValuePerRequestSecond: 1}},
		{Candidates: []Candidate{{}}, Prices: Prices{ValuePerRequestSecond: 1}},
		{Bytes: -1, Candidates: req.Candidates, Prices: Prices{ValuePerRequestSecond: 1}},
		{Horizon: -1, Candidates: req.Candidates, Prices: Prices{ValuePerRequestSecond: 1}},
	} {
		if _, err := Score(demand, bad, time.Hour, 1); !errors.Is(err, ErrBadInput) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
}

func TestRenderExplain(t *testing.T) {
	demand := []RegionDemand{{Region: "Brooklyn", Q: []Quantiles{{90, 100, 120}}}}
	req := ScoreRequest{Bytes: 10 << 30, Horizon: 1, Current: map[string]float64{"Brooklyn": 0.006},
		Candidates: []Candidate{{Location: "Brooklyn", Latency: map[string]float64{"Brooklyn": 0.002}}},
		Prices:     Prices{CopyPerByte: 2e-11, StorePerByteHour: 1e-13, ValuePerRequestSecond: 0.5}}
	sc, err := Score(demand, req, time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	out := RenderExplain(ExplainInput{Resource: "disk-1", Origin: time.Date(2015, 4, 1, 0, 0, 0, 0, time.UTC), Step: time.Hour,
		Request: req, Demand: demand, Scores: sc, Shares: []float64{1}, ShareConcentration: 50})
	for _, want := range []string{"resource disk-1", "candidate Brooklyn", "saves     4.0 ms", "cost ", "P(benefit > cost)", "Brooklyn"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
}

// TestRenderExplainVerdictFollowsThreshold: with the resource's
// mirror_score given, a candidate's verdict says whether the manager acts
// on it; the fixed words said "mirror: very likely to pay off" of a 0.9
// score the manager (at mirror_score 0.95) would never place.
func TestRenderExplainVerdictFollowsThreshold(t *testing.T) {
	ms := MirrorScore{Location: "Brooklyn", Score: 0.92}
	for _, tt := range []struct {
		threshold   float64
		want, avoid string
	}{
		{0, "(mirror: very likely to pay off)", "mirror_score"},
		{0.95, "(very likely to pay off; below mirror_score 0.95: no copy)", "mirror:"},
		{0.9, "(very likely to pay off; at or above mirror_score 0.9)", "no copy"},
	} {
		out := RenderExplain(ExplainInput{Resource: "disk-1", Step: time.Hour, Scores: []MirrorScore{ms}, MirrorScore: tt.threshold})
		if !strings.Contains(out, tt.want) || strings.Contains(out, tt.avoid) {
			t.Errorf("mirror_score %v: want %q and no %q in:\n%s", tt.threshold, tt.want, tt.avoid, out)
		}
	}
}

func TestScoreHorizon(t *testing.T) {
	q := func(n int) RegionDemand { return RegionDemand{Q: make([]Quantiles, n)} }
	for _, tc := range []struct {
		demand  []RegionDemand
		horizon int
		want    int
	}{
		{nil, 0, 0},
		{nil, 5, 5},
		{[]RegionDemand{q(24), q(12)}, 0, 12},
		{[]RegionDemand{q(24), q(12)}, 6, 6},
		{[]RegionDemand{q(24), q(12)}, 30, 12},
	} {
		if got := ScoreHorizon(tc.demand, tc.horizon); got != tc.want {
			t.Errorf("ScoreHorizon(%d regions, %d) = %d, want %d", len(tc.demand), tc.horizon, got, tc.want)
		}
	}
}

// TestScoreRefusesBadNumbers: a NaN quantile, or a NaN, infinite or
// negative latency, is refused with the region (and bucket or candidate)
// named. A NaN quantile made every benefit NaN (score 0, mean NaN); a NaN
// latency silently saved nothing and a negative one more than the whole
// route. A price so large that latency saved × price overflows still
// scores, with no NaN from an empty draw.
func TestScoreRefusesBadNumbers(t *testing.T) {
	base := func() ([]RegionDemand, ScoreRequest) {
		return []RegionDemand{{Region: "a", Q: []Quantiles{{0, 10, 100}, {0, 0, 0}}}},
			ScoreRequest{Bytes: 1 << 30, Current: map[string]float64{"a": 0.05},
				Candidates: []Candidate{{Location: "x", Latency: map[string]float64{"a": 0.01}}},
				Prices:     Prices{CopyPerByte: 1e-11, StorePerByteHour: 1e-13, ValuePerRequestSecond: 0.5}}
	}
	for _, tt := range []struct {
		name string
		f    func([]RegionDemand, *ScoreRequest)
		want string // error text; "" for a finite score
	}{
		{"NaN quantile", func(d []RegionDemand, _ *ScoreRequest) { d[0].Q[1].Q90 = math.NaN() }, "region a bucket 2: quantile NaN"},
		{"infinite quantile", func(d []RegionDemand, _ *ScoreRequest) { d[0].Q[0].Q90 = math.Inf(1) }, "region a bucket 1: quantile +Inf"},
		{"NaN latency", func(_ []RegionDemand, r *ScoreRequest) { r.Candidates[0].Latency["a"] = math.NaN() }, "latency from region a to x: NaN"},
		{"negative latency", func(_ []RegionDemand, r *ScoreRequest) { r.Candidates[0].Latency["a"] = -1 }, "latency from region a to x: -1"},
		{"NaN current cost", func(_ []RegionDemand, r *ScoreRequest) { r.Current["a"] = math.NaN() }, "current route cost of region a: NaN"},
		{"huge value of a second", func(_ []RegionDemand, r *ScoreRequest) {
			r.Prices.ValuePerRequestSecond = math.MaxFloat64
			r.Current["a"] = 3
		}, ""},
		{"2^60 bytes", func(_ []RegionDemand, r *ScoreRequest) { r.Bytes = 1 << 60 }, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d, req := base()
			tt.f(d, &req)
			sc, err := Score(d, req, time.Hour, 1)
			if tt.want != "" {
				if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("error %v, want ErrBadInput with %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s := sc[0]
			for _, v := range []float64{s.Score, s.Cost, s.BenefitMean, s.BenefitQ10, s.BenefitQ50, s.BenefitQ90} {
				if math.IsNaN(v) {
					t.Fatalf("NaN in %+v", s)
				}
			}
		})
	}
}
