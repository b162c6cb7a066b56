package forecast

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// newHourlyModel is a hybrid on hourly buckets with a window of W and a
// horizon of H.
func newHourlyModel(t *testing.T, W, H int) *Hybrid {
	t.Helper()
	m, err := NewHybrid(HybridConfig{Step: time.Hour, Window: W, Horizon: H}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestShiftCarry: after the one-step gate bets on a level shift, the
// longer horizons of a random-walk-like series carry it (carryShift); a
// seasonal series' spike is carried no longer than the gate bets on it,
// and bursts that the longer horizons lose on are refused by the carry's
// evidence.
func TestShiftCarry(t *testing.T) {
	const W, H = 24 * 14, 12
	newModel := func() *Hybrid { return newHourlyModel(t, W, H) }
	t.Run("random walk drops", func(t *testing.T) {
		// A gauge that wanders (NAB grok_asg, ec2_cpu ac20cd) and drops
		// by 60 steps' noise at once.
		const at = W + 200
		rng := rand.New(rand.NewPCG(31, 31))
		lvl := 100.0
		s := synth(at+3*H, func(i int) float64 {
			lvl += rng.NormFloat64()
			if i == at {
				lvl -= 60
			}
			return lvl
		})
		m := newModel()
		for i := 0; i <= at; i++ {
			if err := m.Observe(s.Time(i), s.Values[i]); err != nil {
				t.Fatal(err)
			}
		}
		k := &m.carry
		if k.at != at+1 {
			t.Fatalf("the gate did not bet on the drop (carry from origin %d, want %d; gate %v)", k.at-1, at, m.gate)
		}
		bin := k.bin
		// Every horizon's forecast is the new level, or the
		// combination's where that was within its error scale of it;
		// the combination alone still gave the old level at the longest.
		po := at % m.P
		last := s.Values[at]
		far := 0
		for h := 2; h <= H; h++ {
			f, c := m.Forecast()[h-1].Q50, float64(k.c[po*H+h-1])
			if h > H-4 && math.Abs(c-last) > 10 {
				far++
			}
			if f != last && !(float32(f) == float32(c) && math.Abs(c-last) <= m.carryScale(h)) {
				t.Fatalf("h=%d after the drop to %.1f: forecast %.1f, the combination's %.1f (losses %v, evidence %+v)",
					h, last, f, c, k.loss[2*h-2:2*h], k.ev[(h-1)*gateBins:h*gateBins])
			}
		}
		if far < 4 {
			t.Fatalf("the combination alone was within 10 of the new level at %d of the 4 longest horizons: the test shows nothing", 4-far)
		}
		// A restart while carries are pending: the restored model goes
		// on exactly as the original.
		e := &enc{}
		m.encode(e)
		r := newModel()
		d := &dec{b: e.b}
		r.decode(d)
		if d.err != nil {
			t.Fatal(d.err)
		}
		for i := at + 1; i < s.Len(); i++ {
			m.Observe(s.Time(i), s.Values[i])
			r.Observe(s.Time(i), s.Values[i])
			if !slices.Equal(r.Forecast(), m.Forecast()) || r.carry.at != m.carry.at || !slices.Equal(r.carry.ev, m.carry.ev) {
				t.Fatalf("bucket %d after restore: %+v, carry %+v; original %+v, carry %+v", i, r.Forecast(), r.carry, m.Forecast(), m.carry)
			}
		}
		// Over the twelve origins after the drop, the twelve-step error
		// is far below the same model's without the carry.
		var err [2]float64
		for v, off := range []bool{false, true} {
			a := newModel()
			a.noCarry = off
			for i := 0; i < at+H; i++ {
				a.Observe(s.Time(i), s.Values[i])
				if i >= at {
					err[v] += math.Abs(a.Forecast()[H-1].Q50 - s.Values[i+H])
				}
			}
		}
		if !(err[0] < 0.7*err[1]) {
			t.Fatalf("twelve-step absolute error over the %d origins after the drop: %.1f with the carry, %.1f without", H, err[0], err[1])
		}
		t.Logf("twelve-step absolute error over the %d origins after the drop: %.1f with the carry, %.1f without", H, err[0], err[1])
		// The carries paid where the combination lagged: the evidence of
		// the longest horizons for the drop's size says so.
		for h := H - 3; h <= H; h++ {
			if g := k.ev[(h-1)*gateBins+bin]; !(g.adv > 0 && g.n > 0) {
				t.Fatalf("h=%d: evidence %+v for size bin %d after the carried drop", h, g, bin)
			}
		}
		// Corrupt evidence or losses are refused.
		for _, bad := range []func(k *carry){
			func(k *carry) { k.ev[3].lost = k.ev[3].n + 1 },
			func(k *carry) { k.loss[5] = -1 },
			func(k *carry) { k.n[1] = math.NaN() },
			func(k *carry) { k.at = -2 },
			func(k *carry) { k.bin = gateBins },
			func(k *carry) { k.bet[7] = gateBins },
		} {
			c := newModel()
			c.decode(&dec{b: e.b})
			bad(&c.carry)
			e2 := &enc{}
			c.encode(e2)
			d := &dec{b: e2.b}
			newModel().decode(d)
			if d.err == nil || !strings.Contains(d.err.Error(), "carry") {
				t.Fatalf("corrupt carry accepted: %v", d.err)
			}
		}
	})
	t.Run("seasonal spike", func(t *testing.T) {
		// A clean daily profile with one wild bucket: once the spike is
		// gone (the next origin) no horizon forecasts its level.
		const at = W + 150
		rng := rand.New(rand.NewPCG(32, 32))
		s := synth(at+H+2, func(i int) float64 {
			v := 100 + 50*math.Sin(2*math.Pi*float64(i)/24) + 2*rng.NormFloat64()
			if i == at {
				v += 300
			}
			return v
		})
		m := newModel()
		for i := 0; i <= at+1; i++ {
			if err := m.Observe(s.Time(i), s.Values[i]); err != nil {
				t.Fatal(err)
			}
		}
		for h := 1; h <= H; h++ {
			if f, y := m.Forecast()[h-1].Q50, s.Values[at+1+h]; math.Abs(f-y) > 20 {
				t.Fatalf("h=%d after the spike: forecast %.1f, value %.1f (carry %+v)", h, f, y, m.carry)
			}
		}
	})
	t.Run("intermittent", func(t *testing.T) {
		// Zero most hours, bursts of a few hours at random (NAB
		// disk_write): at rest every bucket surprises a near-zero robust
		// scale and the gate bets on the zero; those carries move
		// nothing and are no evidence, so a burst's start is not carried
		// five steps ahead.
		rng := rand.New(rand.NewPCG(34, 34))
		left := 0
		starts := map[int]bool{}
		s := synth(W+24*25, func(i int) float64 {
			if left > 0 {
				left--
				return 4e8 * (0.5 + rng.Float64())
			}
			if i > 48 && rng.Float64() < 0.04 {
				starts[i] = true
				left = 1 + rng.IntN(4)
				return 4e8 * (0.5 + rng.Float64())
			}
			return 0
		})
		m := newModel()
		var carried, late int
		for i := 0; i < s.Len(); i++ {
			if err := m.Observe(s.Time(i), s.Values[i]); err != nil {
				t.Fatal(err)
			}
			if i > W+24*5 && starts[i] {
				late++
				for h := 2; h <= H; h++ {
					if f := m.Forecast()[h-1].Q50; f == s.Values[i] {
						carried++
						t.Logf("bucket %d: %d-step forecast %.3g, the burst's first value", i, h, f)
					}
				}
			}
		}
		if late < 10 || carried > 0 {
			t.Fatalf("%d (horizon, burst start) pairs of %d late bursts carried", carried, late)
		}
	})
	t.Run("bursts not carried", func(t *testing.T) {
		// A wandering gauge with three-bucket bursts: the one-step bets
		// on them win, twelve steps ahead they are gone. Bursts past
		// the first days are not carried twelve steps ahead (the
		// carried forecast loses to the combination there, and the
		// carries considered lose).
		rng := rand.New(rand.NewPCG(33, 33))
		burst := func(i int) bool { return i > W/2 && i%53 < 3 }
		lvl := 100.0
		s := synth(W+24*20, func(i int) float64 {
			lvl += 0.5 * rng.NormFloat64()
			if burst(i) {
				return lvl + 60
			}
			return lvl
		})
		m := newModel()
		var carried, late int
		for i := 0; i < s.Len(); i++ {
			if err := m.Observe(s.Time(i), s.Values[i]); err != nil {
				t.Fatal(err)
			}
			if i > W+24*10 && burst(i) && !burst(i-1) {
				late++
				if f := m.Forecast()[H-1].Q50; math.Abs(f-s.Values[i]) < 30 {
					carried++
					t.Logf("bucket %d: 12-step forecast %.1f after the burst's first value %.1f", i, f, s.Values[i])
				}
			}
		}
		t.Logf("evidence h=%d: %+v, losses %v, gate %v", H, m.carry.ev[(H-1)*gateBins:], m.carry.loss[2*H-2:], m.gate)
		if carried > 0 {
			t.Fatalf("%d of %d late bursts carried twelve steps ahead", carried, late)
		}
	})
}
