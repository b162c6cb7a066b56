package forecast

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"
)

func roundTripEngine(t testing.TB) *Engine {
	t.Helper()
	e, err := NewEngine(EngineConfig{Window: 24 * 14, Horizon: 24, Workers: 3, Covariates: []string{"temp", "rain"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetEvents([]Event{
		{Start: t0.Add(24 * 9 * time.Hour), End: t0.Add(24 * 10 * time.Hour), Name: "h", Kind: KindHoliday},
		{Start: t0.Add(24*12*time.Hour + 5*time.Hour), End: t0.Add(24*12*time.Hour + 11*time.Hour), Name: "s", Kind: "storm", Region: "eu"},
		{Start: t0.Add(24*17*time.Hour + 5*time.Hour), End: t0.Add(24*17*time.Hour + 11*time.Hour), Name: "s2", Kind: "storm", Region: "us"},
	}); err != nil {
		t.Fatal(err)
	}
	return e
}

// roundTripFeed feeds buckets [from,to) of two resources; covariates are set
// for each bucket and a day ahead; some buckets are skipped (no summary).
func roundTripFeed(t testing.TB, e *Engine, from, to int, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	for b := from; b < to; b++ {
		start := t0.Add(time.Duration(b) * time.Hour)
		for _, r := range []string{"", "eu", "us"} {
			if err := e.SetCovariate("temp", r, start.Add(24*time.Hour), 10+5*rng.NormFloat64()); err != nil {
				t.Fatal(err)
			}
			if err := e.SetCovariate("rain", r, start.Add(time.Duration(rng.IntN(24))*time.Hour), rng.Float64()); err != nil {
				t.Fatal(err)
			}
		}
		if b%97 == 50 {
			continue // unknown bucket
		}
		var batch []AccessSummary
		for _, res := range []string{"vol-1", "vol-2"} {
			for _, r := range []string{"eu", "us", "ap"} {
				if res == "vol-2" && r == "ap" && b < 100 {
					continue
				}
				n := demandAt(r, b, rng)
				if res == "vol-2" {
					n = n/3 + uint64(rng.IntN(5))
				}
				batch = append(batch, AccessSummary{Resource: res, Region: r, Start: start, NewFlows: n})
			}
		}
		if _, err := e.Ingest(batch); err != nil {
			t.Fatal(err)
		}
		if err := e.Advance(start.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
}

func compareEngines(t *testing.T, a, b *Engine, when string) {
	t.Helper()
	for _, res := range []string{"vol-1", "vol-2"} {
		fa, ea := a.Forecast(res)
		fb, eb := b.Forecast(res)
		if (ea == nil) != (eb == nil) {
			t.Fatalf("%s %s: errors %v vs %v", when, res, ea, eb)
		}
		if len(fa.Regions) != len(fb.Regions) || !fa.Origin.Equal(fb.Origin) {
			t.Fatalf("%s %s: regions/origin differ", when, res)
		}
		for i := range fa.Regions {
			for h := range fa.Regions[i].Q {
				if fa.Regions[i].Q[h] != fb.Regions[i].Q[h] {
					t.Fatalf("%s %s region %s h=%d: %+v vs %+v", when, res, fa.Regions[i].Region, h+1, fa.Regions[i].Q[h], fb.Regions[i].Q[h])
				}
			}
		}
		if fa.Concentration != fb.Concentration || len(fa.Shares) != len(fb.Shares) {
			t.Fatalf("%s %s: concentration %v vs %v", when, res, fa.Concentration, fb.Concentration)
		}
		for h := range fa.Shares {
			for r := range fa.Shares[h] {
				if fa.Shares[h][r] != fb.Shares[h][r] {
					t.Fatalf("%s %s: shares differ at h=%d r=%d: %v vs %v", when, res, h+1, r, fa.Shares[h][r], fb.Shares[h][r])
				}
			}
		}
	}
}

func TestRoundTripCovariatesEvents(t *testing.T) {
	for _, cut := range []int{30, 200, 24*15 + 7, 24*20 + 13} {
		a := roundTripEngine(t)
		roundTripFeed(t, a, 0, cut, 1)
		blob, err := a.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		b := roundTripEngine(t)
		if err := b.UnmarshalBinary(blob); err != nil {
			t.Fatal(err)
		}
		compareEngines(t, a, b, "right after restore")
		for k := 0; k < 60; k++ {
			roundTripFeed(t, a, cut+k, cut+k+1, uint64(1000+cut+k))
			roundTripFeed(t, b, cut+k, cut+k+1, uint64(1000+cut+k))
			compareEngines(t, a, b, "after restore")
		}
		ba, _ := a.MarshalBinary()
		bb, _ := b.MarshalBinary()
		if !bytes.Equal(ba, bb) {
			t.Fatalf("cut %d: snapshots differ after feeding the same buckets", cut)
		}
	}
}

func TestRoundTripJumpAndDaily(t *testing.T) {
	a := roundTripEngine(t)
	roundTripFeed(t, a, 0, 24*16+3, 1)
	// a gap larger than a window, then more data
	blob, _ := a.MarshalBinary()
	b := roundTripEngine(t)
	if err := b.UnmarshalBinary(blob); err != nil {
		t.Fatal(err)
	}
	for _, e := range []*Engine{a, b} {
		if err := e.Advance(t0.Add(time.Duration(24*16+3+24*15) * time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	compareEngines(t, a, b, "after jump")
	for k := 0; k < 50; k++ {
		c := 24*16 + 3 + 24*15 + k
		roundTripFeed(t, a, c, c+1, uint64(c))
		roundTripFeed(t, b, c, c+1, uint64(c))
		compareEngines(t, a, b, "after jump+feed")
	}
	// snapshot the pair mid-way again, after new event kinds
	ev := []Event{{Start: t0.Add(24 * 40 * time.Hour), End: t0.Add(24 * 41 * time.Hour), Name: "x", Kind: "sale"}}
	a.SetEvents(ev)
	blob, _ = a.MarshalBinary()
	c := roundTripEngine(t)
	if err := c.UnmarshalBinary(blob); err != nil {
		t.Fatal(err)
	}
	for k := 0; k < 50; k++ {
		n := 24*16 + 3 + 24*15 + 50 + k
		roundTripFeed(t, a, n, n+1, uint64(n))
		roundTripFeed(t, c, n, n+1, uint64(n))
		compareEngines(t, a, c, "after events")
	}
}

// The location shares a restored engine serves before its next bucket
// closes are those the original serves (made when the bucket closed).
func TestRestoredSharesBeforeNextClose(t *testing.T) {
	a := roundTripEngine(t)
	roundTripFeed(t, a, 0, 24*15, 1)
	// A revised covariate forecast for the coming hours arrives after the close.
	for h := 0; h < 30; h++ {
		for _, r := range []string{"", "eu", "us", "ap"} {
			if err := a.SetCovariate("temp", r, t0.Add(time.Duration(24*15+h)*time.Hour), 80); err != nil {
				t.Fatal(err)
			}
		}
	}
	blob, _ := a.MarshalBinary()
	b := roundTripEngine(t)
	if err := b.UnmarshalBinary(blob); err != nil {
		t.Fatal(err)
	}
	compareEngines(t, a, b, "right after restore")
}
