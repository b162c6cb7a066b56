package route

import (
	"math/rand/v2"
	"testing"
	"time"
)

// benchWorld builds the scale: resources × regions × mirrors, with
// replica sets drawn from `placements` distinct sets (0: every resource on
// every mirror; -1: every resource its own set), per-region demand and
// mirror capacities tight enough that some mirrors spill. It returns
// `variants` inputs that differ by RTT noise, as successive evaluations do.
func benchWorld(resources, regions, mirrors, placements, variants int) []*Input {
	rng := rand.New(rand.NewPCG(4, 4))
	base := make([][]float64, regions)
	for r := range base {
		base[r] = make([]float64, mirrors)
		for m := range base[r] {
			base[r][m] = 5 + rng.Float64()*200
		}
	}
	sets := func(n int) [][]Replica {
		out := make([][]Replica, n)
		for i := range out {
			k := 4 + rng.IntN(mirrors-3)
			for _, m := range rng.Perm(mirrors)[:k] {
				out[i] = append(out[i], Replica{Mirror: MirrorID(m + 1), InSync: true})
			}
		}
		return out
	}
	var pool [][]Replica
	switch {
	case placements > 0:
		pool = sets(placements)
	case placements < 0:
		pool = sets(resources)
	default:
		var all []Replica
		for m := range mirrors {
			all = append(all, Replica{Mirror: MirrorID(m + 1), InSync: true})
		}
		pool = [][]Replica{all}
	}
	in := &Input{Now: t0}
	for r := range regions {
		in.Regions = append(in.Regions, RegionID(r+1))
	}
	totalDemand := 0.0
	for i := range resources {
		res := Resource{ID: ResourceID(i + 1), Profile: Profile{RoundTrips: 2, Bytes: 64 << 10}, Replicas: pool[i%len(pool)]}
		res.Demand = make([]float64, regions)
		for r := range res.Demand {
			res.Demand[r] = rng.Float64()
			totalDemand += res.Demand[r]
		}
		in.Resources = append(in.Resources, res)
	}
	for m := range mirrors {
		// Average capacity 1.5× the even share: the popular mirrors spill.
		in.Mirrors = append(in.Mirrors, Mirror{ID: MirrorID(m + 1), Up: true, Capacity: 1.5 * totalDemand / float64(mirrors), Utilization: 0.3})
	}
	out := make([]*Input, variants)
	for v := range out {
		cp := *in
		cp.Paths = nil
		for r := range regions {
			for m := range mirrors {
				cp.Paths = append(cp.Paths, Path{Region: RegionID(r + 1), Mirror: MirrorID(m + 1),
					RTT: time.Duration(base[r][m] * (1 + 0.04*rng.Float64()) * float64(time.Millisecond)), Up: true})
			}
		}
		out[v] = &cp
	}
	return out
}

// BenchmarkStep is one evaluation at 4096 resources × 64 regions × 32
// mirrors from a warmed state (the target: ≤ 100 ms).
func BenchmarkStep(b *testing.B) {
	for _, bc := range []struct {
		name       string
		placements int
	}{
		{"all-on-32-mirrors", 0},
		{"256-replica-sets", 256},
		{"every-resource-own-set", -1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ins := benchWorld(4096, 64, 32, bc.placements, 4)
			e, _ := New(Config{})
			var st *State
			now := t0
			step := func(i int) *Result {
				in := ins[i%len(ins)]
				in.Now = now
				now = now.Add(2 * time.Second)
				res, next, err := e.Step(st, in)
				if err != nil {
					b.Fatal(err)
				}
				st = next
				return res
			}
			for i := range 5 { // install and settle
				step(i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			var res *Result
			for i := 0; b.Loop(); i++ {
				res = step(i)
			}
			b.ReportMetric(float64(len(res.Routes)), "routes")
			b.ReportMetric(float64(res.Spilled), "spilled-routes")
		})
	}
}
