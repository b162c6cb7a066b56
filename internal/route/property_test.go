package route

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"
)

// TestPropertiesRandomWorlds drives random worlds — drifting RTTs, paths and
// mirrors failing and recovering, replicas leaving and re-entering sync,
// demand against capacity — and checks every evaluation of every route:
// weights sum to the table size; no unhealthy mirror is routed outside
// panic; Moved equals chash.IdealMoves; at most MaxMove of the slots move by
// choice (checkInvariants); a switch follows Confirm−1 qualifying
// evaluations with the required gain and respects the dwell; the same
// (state, input) always gives the same result; a restored snapshot steps
// identically.
func TestPropertiesRandomWorlds(t *testing.T) {
	seeds := 12
	if testing.Short() {
		seeds = 4
	}
	// The worlds together must exercise every mode; one world need not (a
	// world whose routes spend its 400 ticks in panic and capacity
	// spill-over may never switch by choice).
	seen := map[Mode]int{}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			for m, n := range randomWorld(t, seed) {
				seen[m] += n
			}
		})
	}
	for _, m := range []Mode{ModeInstall, ModeHold, ModeConfirming, ModeSwitch, ModeMoving, ModeFailover, ModePanic, ModeDwell} {
		if seen[m] == 0 {
			t.Errorf("mode %v never happened (%v)", m, seen)
		}
	}
}

// randomWorld runs one world and returns how often each mode happened.
func randomWorld(t *testing.T, seed uint64) map[Mode]int {
	rng := rand.New(rand.NewPCG(seed, 99))
	regions := []RegionID{1, 2, 3, 4}
	mirrors := []MirrorID{1, 2, 3, 4, 5, 6}
	// Mirror 1 is close to everybody and small: it must spill.
	w := newWorld(regions, mirrors, func(_ RegionID, m MirrorID) float64 {
		if m == 1 {
			return 10 + rng.Float64()*20
		}
		return 20 + rng.Float64()*150
	})
	w.resources = nil
	for id := range ResourceID(5) {
		res := Resource{ID: id + 1, Profile: Profile{RoundTrips: float64(1 + rng.IntN(3)), Bytes: float64(rng.IntN(1e6))}}
		for _, m := range mirrors {
			if rng.IntN(3) > 0 {
				res.Replicas = append(res.Replicas, Replica{Mirror: m, InSync: rng.IntN(5) > 0})
			}
		}
		if id != 0 { // resource 1 has no demand figures
			for range regions {
				res.Demand = append(res.Demand, rng.Float64()*40)
			}
		}
		w.resources = append(w.resources, res)
	}
	for i := range w.mirrors {
		if i == 0 || rng.IntN(2) == 0 {
			w.mirrors[i].Capacity = 20 + rng.Float64()*100
		}
	}
	cfg := Config{}
	if seed%3 == 1 {
		cfg.Slots = 256
	}
	r := newRunner(t, cfg, w)
	c := r.e.Config()

	type hist struct {
		modes      []Mode
		streaks    []int
		lastSwitch time.Time
	}
	h := map[[2]uint32]*hist{}
	spilled := 0
	for tick := range 400 {
		// Perturb the world (in a fixed order: the draws must not depend
		// on map iteration).
		keys := make([]pathKey, 0, len(w.rtt))
		for k := range w.rtt {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b pathKey) int {
			if a.r != b.r {
				return int(a.r) - int(b.r)
			}
			return int(a.m) - int(b.m)
		})
		for _, k := range keys {
			v := w.rtt[k]
			v *= 1 + 0.08*(rng.Float64()-0.5)
			if rng.IntN(200) == 0 {
				v = 20 + rng.Float64()*150 // route change
			}
			w.rtt[k] = max(1, v)
		}
		if rng.IntN(10) == 0 {
			k := pathKey{regions[rng.IntN(len(regions))], mirrors[rng.IntN(len(mirrors))]}
			w.down[k] = !w.down[k]
		}
		if rng.IntN(40) == 0 {
			m := &w.mirrors[rng.IntN(len(w.mirrors))]
			m.Up = !m.Up
		}
		if rng.IntN(30) == 0 {
			res := &w.resources[rng.IntN(len(w.resources))]
			if len(res.Replicas) > 0 {
				rp := &res.Replicas[rng.IntN(len(res.Replicas))]
				rp.InSync = !rp.InSync
			}
		}
		for i := range w.mirrors {
			w.mirrors[i].Utilization = rng.Float64()
		}

		now := r.now
		in := w.input(now)
		prev := r.st
		res := r.step() // checks the per-step invariants
		spilled += res.Spilled

		again, _, err := r.e.Step(prev, in)
		if err != nil || !reflect.DeepEqual(again.Routes, res.Routes) {
			t.Fatalf("tick %d: Step is not deterministic", tick)
		}
		if tick%50 == 25 {
			rs, err := Restore(prev.Snapshot())
			if err != nil {
				t.Fatal(err)
			}
			fromSnap, _, _ := r.e.Step(rs, in)
			if !reflect.DeepEqual(fromSnap.Routes, res.Routes) {
				t.Fatalf("tick %d: restored state steps differently", tick)
			}
		}

		for _, rt := range res.Routes {
			key := [2]uint32{rt.Resource, rt.Region}
			hh := h[key]
			if hh == nil {
				hh = &hist{}
				h[key] = hh
			}
			x := rt.Why
			if x.Mode == ModeSwitch {
				// The previous Confirm−1 evaluations each qualified, in a row.
				n := len(hh.streaks)
				for k := 1; k < c.Confirm; k++ {
					if n-k < 0 || hh.streaks[n-k] < c.Confirm-k {
						t.Fatalf("tick %d route %v: switch without %d qualifying evaluations: modes %v streaks %v",
							tick, key, c.Confirm, hh.modes[max(0, n-5):], hh.streaks[max(0, n-5):])
					}
				}
				need := max(c.MinGain*x.CurrentCost, float64(c.MinGainAbs)/1e6)
				if x.Gain < need {
					t.Fatalf("tick %d route %v: switch with gain %.2f < %.2f", tick, key, x.Gain, need)
				}
				if !hh.lastSwitch.IsZero() && now.Sub(hh.lastSwitch) < c.Dwell {
					t.Fatalf("tick %d route %v: switch %v after the previous, dwell %v", tick, key, now.Sub(hh.lastSwitch), c.Dwell)
				}
			}
			if x.Mode == ModeSwitch || x.Mode == ModeFailover {
				hh.lastSwitch = now
			}
			hh.modes = append(hh.modes, x.Mode)
			hh.streaks = append(hh.streaks, x.Streak)
		}
	}
	// The scenario must have exercised the interesting paths.
	if spilled == 0 {
		t.Error("capacity spill-over never happened")
	}
	seen := map[Mode]int{}
	for _, hh := range h {
		for _, m := range hh.modes {
			seen[m]++
		}
	}
	return seen
}
