package forecast

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"
)

// Prices turn bytes and latency into one unit (any currency) so benefit
// and cost compare.
type Prices struct {
	// CopyPerByte is the one-time cost of moving one byte to a location.
	CopyPerByte float64
	// StorePerByteHour is the cost of keeping one byte there for an hour.
	StorePerByteHour float64
	// ValuePerRequestSecond is what one second of latency saved on one
	// request is worth.
	ValuePerRequestSecond float64
}

func (p Prices) validate() error {
	switch {
	case !(p.CopyPerByte >= 0) || math.IsInf(p.CopyPerByte, 0):
		return fmt.Errorf("%w: prices: copy_per_byte %v", ErrBadInput, p.CopyPerByte)
	case !(p.StorePerByteHour >= 0) || math.IsInf(p.StorePerByteHour, 0):
		return fmt.Errorf("%w: prices: store_per_byte_hour %v", ErrBadInput, p.StorePerByteHour)
	case !(p.ValuePerRequestSecond > 0) || math.IsInf(p.ValuePerRequestSecond, 0):
		return fmt.Errorf("%w: prices: value_per_request_second %v (must be > 0)", ErrBadInput, p.ValuePerRequestSecond)
	}
	return nil
}

// Candidate is a location where a mirror could be placed.
type Candidate struct {
	Location string
	// Latency is the route cost (seconds) from each client region to a
	// mirror at this location. Regions missing here gain nothing.
	Latency map[string]float64
	// CopyBytes is what must be copied (0 means the whole resource; a
	// stale mirror needs only the delta).
	CopyBytes int64
}

// ScoreRequest asks for the Mirroring Score of candidate locations.
type ScoreRequest struct {
	Bytes int64 // size of the resource
	// Horizon is the number of buckets the decision covers (0: the
	// forecast's whole horizon).
	Horizon int
	// Current is the current route cost (seconds) of each client region,
	// from the route tables the controller runs.
	Current    map[string]float64
	Candidates []Candidate
	Prices     Prices
	Samples    int // Monte Carlo draws (default 4096)
}

// RegionBenefit is one region's share of a candidate's benefit.
type RegionBenefit struct {
	Region                   string
	RequestsQ10, RequestsQ50 float64 // predicted requests over the horizon
	RequestsQ90              float64
	SavedSeconds             float64 // latency saved per request
	BenefitMean              float64
}

// MirrorScore is the score of one candidate: Score = P(benefit > cost)
// under the predictive distribution of demand.
type MirrorScore struct {
	Location                           string
	Score                              float64
	Cost, CopyCost, StoreCost          float64
	BenefitMean                        float64
	BenefitQ10, BenefitQ50, BenefitQ90 float64
	Regions                            []RegionBenefit
}

// RegionDemand is the predictive distribution of one region's demand per
// future bucket.
type RegionDemand struct {
	Region string
	Q      []Quantiles
}

// quantileZ evaluates a split-normal quantile function through q10, q50,
// q90 at the probability whose standard normal quantile is z, floored at
// zero (requests are never negative). Callers compute z once per draw:
// one inverse error function per draw, not per bucket.
func quantileZ(q Quantiles, z float64) float64 {
	var v float64
	if z < 0 {
		v = q.Q50 + z*(q.Q50-q.Q10)/1.2815515655446004
	} else {
		v = q.Q50 + z*(q.Q90-q.Q50)/1.2815515655446004
	}
	return max(v, 0)
}

// normQuantile is the standard normal quantile (Acklam's rational
// approximation refined by one Newton step; |error| < 1e-12).
func normQuantile(p float64) float64 {
	if p <= 0 {
		return math.Inf(-1)
	}
	if p >= 1 {
		return math.Inf(1)
	}
	return -math.Sqrt2 * math.Erfcinv(2*p)
}

// Score computes the Mirroring Score of each candidate from per-region
// demand forecasts. Demand of one region is comonotone across the
// horizon's buckets (a busy day is busy all day: the conservative choice
// for a sum) and independent across regions. Deterministic: the draws come
// from a generator seeded by seed.
func Score(demand []RegionDemand, req ScoreRequest, step time.Duration, seed uint64) ([]MirrorScore, error) {
	if err := req.Prices.validate(); err != nil {
		return nil, err
	}
	if req.Horizon < 0 {
		return nil, fmt.Errorf("%w: score: horizon %d", ErrBadInput, req.Horizon)
	}
	if req.Bytes < 0 {
		return nil, fmt.Errorf("%w: score: bytes %d", ErrBadInput, req.Bytes)
	}
	if len(req.Candidates) == 0 {
		return nil, fmt.Errorf("%w: score: no candidates", ErrBadInput)
	}
	ns := req.Samples
	if ns <= 0 {
		ns = 4096
	}
	if ns > 1<<20 {
		return nil, fmt.Errorf("%w: score: %d samples", ErrBadInput, ns)
	}
	H := ScoreHorizon(demand, req.Horizon)
	if H == 0 {
		return nil, fmt.Errorf("%w: score: no demand forecast", ErrNotReady)
	}
	// Non-finite or negative inputs are refused by name: a NaN quantile
	// made every benefit NaN (score 0, mean NaN), and a NaN or negative
	// latency silently saved nothing or more than the whole route.
	okCost := func(v float64) bool { return v >= 0 && !math.IsInf(v, 0) }
	for _, d := range demand {
		for h, q := range d.Q[:H] {
			for _, v := range [3]float64{q.Q10, q.Q50, q.Q90} {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					return nil, fmt.Errorf("%w: score: region %s bucket %d: quantile %v", ErrBadInput, d.Region, h+1, v)
				}
			}
		}
		if v, ok := req.Current[d.Region]; ok && !okCost(v) {
			return nil, fmt.Errorf("%w: score: current route cost of region %s: %v s", ErrBadInput, d.Region, v)
		}
	}
	hours := float64(H) * step.Hours()
	// Draw every region's total demand once; all candidates share the
	// draws, so their scores are comparable.
	rng := rand.New(rand.NewPCG(seed, 0x5851f42d4c957f2d))
	totals := make([][]float64, len(demand))
	for i, d := range demand {
		totals[i] = make([]float64, ns)
		for s := 0; s < ns; s++ {
			// Stratified uniforms: one draw per 1/ns slice, shuffled.
			u := (float64(s) + rng.Float64()) / float64(ns)
			z := normQuantile(u)
			tot := 0.0
			for h := 0; h < H; h++ {
				tot += quantileZ(d.Q[h], z)
			}
			totals[i][s] = tot
		}
		rng.Shuffle(ns, func(a, b int) { totals[i][a], totals[i][b] = totals[i][b], totals[i][a] })
	}
	out := make([]MirrorScore, 0, len(req.Candidates))
	ben := make([]float64, ns)
	for _, c := range req.Candidates {
		if c.Location == "" {
			return nil, fmt.Errorf("%w: score: candidate without location", ErrBadInput)
		}
		copyBytes := c.CopyBytes
		if copyBytes <= 0 {
			copyBytes = req.Bytes
		}
		ms := MirrorScore{Location: c.Location}
		ms.CopyCost = float64(copyBytes) * req.Prices.CopyPerByte
		ms.StoreCost = float64(req.Bytes) * req.Prices.StorePerByteHour * hours
		ms.Cost = ms.CopyCost + ms.StoreCost
		clear(ben)
		for i, d := range demand {
			cur, ok := req.Current[d.Region]
			lat, ok2 := c.Latency[d.Region]
			if ok2 && !okCost(lat) {
				return nil, fmt.Errorf("%w: score: latency from region %s to %s: %v s", ErrBadInput, d.Region, c.Location, lat)
			}
			saved := 0.0
			if ok2 && (!ok || lat < cur) {
				if !ok {
					// No route today: the region is served from nowhere
					// better, so only an explicit current cost counts.
					saved = 0
				} else {
					saved = cur - lat
				}
			}
			if math.IsNaN(saved) || math.IsInf(saved, 0) || saved < 0 {
				return nil, fmt.Errorf("%w: score: latency for region %s at %s", ErrBadInput, d.Region, c.Location)
			}
			rb := RegionBenefit{Region: d.Region, SavedSeconds: saved}
			for h := 0; h < H; h++ {
				rb.RequestsQ10 += max(d.Q[h].Q10, 0)
				rb.RequestsQ50 += max(d.Q[h].Q50, 0)
				rb.RequestsQ90 += max(d.Q[h].Q90, 0)
			}
			if saved > 0 {
				v := saved * req.Prices.ValuePerRequestSecond
				sum := 0.0
				for s := 0; s < ns; s++ {
					if t := totals[i][s]; t > 0 { // a huge v times no demand is 0, not NaN
						b := v * t
						ben[s] += b
						sum += b
					}
				}
				rb.BenefitMean = sum / float64(ns)
			}
			ms.Regions = append(ms.Regions, rb)
		}
		win := 0
		for _, b := range ben {
			ms.BenefitMean += b
			if b > ms.Cost {
				win++
			}
		}
		ms.BenefitMean /= float64(ns)
		ms.Score = float64(win) / float64(ns)
		sorted := slices.Clone(ben)
		slices.Sort(sorted)
		ms.BenefitQ10 = sorted[int(0.1*float64(ns-1))]
		ms.BenefitQ50 = sorted[int(0.5*float64(ns-1))]
		ms.BenefitQ90 = sorted[int(0.9*float64(ns-1))]
		sort.Slice(ms.Regions, func(a, b int) bool { return ms.Regions[a].BenefitMean > ms.Regions[b].BenefitMean })
		out = append(out, ms)
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].Score > out[b].Score })
	return out, nil
}

func seedOf(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// ExplainInput is everything RenderExplain shows for one resource.
type ExplainInput struct {
	Resource string
	Origin   time.Time // start of the last observed bucket
	Step     time.Duration
	Request  ScoreRequest
	Demand   []RegionDemand
	// Shares is the predicted access-location distribution for the next
	// bucket (same order as Demand; nil if no location model yet) and
	// ShareConcentration the Dirichlet concentration behind it.
	Shares             []float64
	ShareConcentration float64
	Scores             []MirrorScore
	// Accuracy per region: recent mean absolute error at h=1 and at the
	// last horizon, of the hybrid and of its regression alone.
	Accuracy map[string][4]float64
	// MirrorScore, when above 0, is the score at which the mirroring
	// manager places a copy: each candidate's verdict is then said
	// against it, since the fixed likelihood words alone said "mirror"
	// of scores the manager does not act on (and "borderline" of some
	// it does).
	MirrorScore float64
}

// RenderExplain writes the operator-readable breakdown of the Mirroring
// Score of a resource: the demand forecast per region, and per candidate
// the cost, the benefit by region and the probability that it pays off.
func RenderExplain(in ExplainInput) string {
	var b strings.Builder
	H := ScoreHorizon(in.Demand, in.Request.Horizon)
	p := in.Request.Prices
	fmt.Fprintf(&b, "resource %s: Mirroring Score = P(benefit > cost) over the next %d × %v (from %s)\n",
		in.Resource, H, in.Step, in.Origin.Add(in.Step).Format("2006-01-02 15:04"))
	fmt.Fprintf(&b, "size %s; prices: copy %.4g/GB, store %.4g/GB·h, latency saved %.4g per request·s\n\n",
		fmtBytes(in.Request.Bytes), p.CopyPerByte*1e9, p.StorePerByteHour*1e9, p.ValuePerRequestSecond)
	fmt.Fprintf(&b, "predicted requests over the horizon (q10 / q50 / q90) and next-bucket location shares:\n")
	fmt.Fprintf(&b, "  %-16s %10s %10s %10s %7s %10s %22s\n", "region", "q10", "q50", "q90", "share", "route_ms", "MAE h1 / h_last (reg.)")
	for i, d := range in.Demand {
		var q10, q50, q90 float64
		for h := 0; h < H && h < len(d.Q); h++ {
			q10 += max(d.Q[h].Q10, 0)
			q50 += max(d.Q[h].Q50, 0)
			q90 += max(d.Q[h].Q90, 0)
		}
		share := "-"
		if i < len(in.Shares) {
			share = fmt.Sprintf("%.3f", in.Shares[i])
		}
		route := "-"
		if v, ok := in.Request.Current[d.Region]; ok {
			route = fmt.Sprintf("%.1f", v*1000)
		}
		acc := ""
		if a, ok := in.Accuracy[d.Region]; ok {
			acc = fmt.Sprintf("%.1f / %.1f (%.1f / %.1f)", a[0], a[1], a[2], a[3])
		}
		fmt.Fprintf(&b, "  %-16s %10.0f %10.0f %10.0f %7s %10s %22s\n", d.Region, q10, q50, q90, share, route, acc)
	}
	if in.Shares != nil {
		fmt.Fprintf(&b, "  (location shares rest on %.0f requests of hour-of-week evidence)\n", in.ShareConcentration)
	}
	for _, s := range in.Scores {
		verdict, likely := "do not mirror", "unlikely to pay off"
		switch {
		case s.Score >= 0.9:
			verdict, likely = "mirror: very likely to pay off", "very likely to pay off"
		case s.Score >= 0.5:
			verdict, likely = "mirror: more likely than not to pay off", "more likely than not to pay off"
		case s.Score >= 0.2:
			verdict, likely = "borderline", "borderline"
		}
		switch {
		case in.MirrorScore > 0 && s.Score >= in.MirrorScore:
			verdict = fmt.Sprintf("%s; at or above mirror_score %.3g", likely, in.MirrorScore)
		case in.MirrorScore > 0:
			verdict = fmt.Sprintf("%s; below mirror_score %.3g: no copy", likely, in.MirrorScore)
		}
		fmt.Fprintf(&b, "\ncandidate %s: score %.3f (%s)\n", s.Location, s.Score, verdict)
		fmt.Fprintf(&b, "  cost %.4g = copy %.4g + store %.4g\n", s.Cost, s.CopyCost, s.StoreCost)
		fmt.Fprintf(&b, "  benefit mean %.4g (q10 %.4g, median %.4g, q90 %.4g)\n", s.BenefitMean, s.BenefitQ10, s.BenefitQ50, s.BenefitQ90)
		for _, r := range s.Regions {
			if r.SavedSeconds <= 0 {
				continue
			}
			fmt.Fprintf(&b, "    %-16s saves %7.1f ms × %8.0f requests (q10 %.0f, q90 %.0f) → %.4g\n",
				r.Region, r.SavedSeconds*1000, r.RequestsQ50, r.RequestsQ10, r.RequestsQ90, r.BenefitMean)
		}
		none := true
		for _, r := range s.Regions {
			if r.SavedSeconds > 0 {
				none = false
			}
		}
		if none {
			fmt.Fprintf(&b, "    no region is closer to %s than to its current mirror\n", s.Location)
		}
	}
	return b.String()
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%d B", n)
	}
}

// ScoreHorizon is the number of buckets a score weighs: horizon (0: the
// whole forecast), capped by the shortest region forecast in demand.
func ScoreHorizon(demand []RegionDemand, horizon int) int {
	h := horizon
	for i, d := range demand {
		if (i == 0 && h <= 0) || h > len(d.Q) {
			h = len(d.Q)
		}
	}
	return max(h, 0)
}
