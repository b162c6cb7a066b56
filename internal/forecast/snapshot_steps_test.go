package forecast

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func stepFeed(t testing.TB, e *Engine, step time.Duration, from, to int, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	for b := from; b < to; b++ {
		start := t0.Add(time.Duration(b) * step)
		for _, r := range []string{"", "eu"} {
			if err := e.SetCovariate("temp", r, start.Add(3*step), 10+5*rng.NormFloat64()); err != nil {
				t.Fatal(err)
			}
		}
		if b%37 == 20 {
			continue
		}
		var batch []AccessSummary
		for _, r := range []string{"eu", "us", "ap"} {
			n := demandAt(r, b, rng)
			batch = append(batch, AccessSummary{Resource: "vol-1", Region: r, Start: start, NewFlows: n})
		}
		if _, err := e.Ingest(batch); err != nil {
			t.Fatal(err)
		}
		if err := e.Advance(start.Add(step)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRoundTripSteps(t *testing.T) {
	for _, c := range []struct {
		step   time.Duration
		win, h int
		n      int
	}{{24 * time.Hour, 56, 7, 420}, {15 * time.Minute, 4 * 24 * 7, 16, 900}} {
		t.Run(fmt.Sprint(c.step), func(t *testing.T) {
			mk := func() *Engine {
				e, err := NewEngine(EngineConfig{Step: c.step, Window: c.win, Horizon: c.h, Workers: 2, Covariates: []string{"temp"}})
				if err != nil {
					t.Fatal(err)
				}
				e.SetEvents([]Event{{Start: t0.Add(100 * c.step), End: t0.Add(103 * c.step), Name: "h", Kind: KindHoliday}})
				return e
			}
			a := mk()
			stepFeed(t, a, c.step, 0, c.n, 1)
			blob, _ := a.MarshalBinary()
			b := mk()
			if err := b.UnmarshalBinary(blob); err != nil {
				t.Fatal(err)
			}
			for k := 0; k < 60; k++ {
				stepFeed(t, a, c.step, c.n+k, c.n+k+1, uint64(k))
				stepFeed(t, b, c.step, c.n+k, c.n+k+1, uint64(k))
				fa, _ := a.Forecast("vol-1")
				fb, _ := b.Forecast("vol-1")
				for i := range fa.Regions {
					for h := range fa.Regions[i].Q {
						if fa.Regions[i].Q[h] != fb.Regions[i].Q[h] {
							t.Fatalf("k=%d %s h=%d %+v vs %+v", k, fa.Regions[i].Region, h, fa.Regions[i].Q[h], fb.Regions[i].Q[h])
						}
					}
				}
			}
			x, _ := a.MarshalBinary()
			y, _ := b.MarshalBinary()
			if !bytes.Equal(x, y) {
				for key, sa := range a.series {
					sb := b.series[key]
					for name, pair := range map[string][2][]float32{"feat": {sa.m.feat, sb.m.feat}, "fx": {sa.m.pl.fx, sb.m.pl.fx}, "fc": {sa.m.pl.fc, sb.m.pl.fc}, "carry": {sa.m.carry.c, sb.m.carry.c}} {
						for i := range pair[0] {
							if math.Float32bits(pair[0][i]) != math.Float32bits(pair[1][i]) {
								t.Logf("%v %s[%d] (len %d) %v vs %v", key, name, i, len(pair[0]), pair[0][i], pair[1][i])
							}
						}
					}
				}
				i := 0
				for i < len(x) && i < len(y) && x[i] == y[i] {
					i++
				}
				n := 0
				for j := range x {
					if x[j] != y[j] {
						n++
					}
				}
				t.Fatalf("snapshots differ: lengths %d %d, first at %d (%d bytes): % x vs % x", len(x), len(y), i, n, x[i-8:i+8], y[i-8:i+8])
			}
		})
	}
}
