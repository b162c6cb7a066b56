// Command coverage-noise measures how far the 80% coverage of a perfectly
// calibrated forecaster strays from 80% over one backtest's origins: the
// sampling noise under the 75–85% target. The h-step errors of
// consecutive origins share h−1 shocks (a random walk's errors, the
// extreme case for a gauge), so at h = 12 the 168 origins hold about 14
// independent errors' worth of evidence.
//
//	go run ./scripts/coverage-noise [-origins 168] [-reps 20000]
package main

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
)

func main() {
	origins := flag.Int("origins", 168, "rolling origins per backtest")
	reps := flag.Int("reps", 20000, "simulated backtests per horizon")
	flag.Parse()
	r := rand.New(rand.NewPCG(1, 2))
	fmt.Printf("%-8s %-10s %-10s %s\n", "horizon", "mean", "sd", "outside 75-85%")
	for _, h := range []int{1, 12} {
		// The exact 80% interval of a sum of h unit Gaussian shocks.
		q := 1.2815515655446004 * math.Sqrt(float64(h))
		shocks := make([]float64, *origins+h)
		sum, sq, out := 0.0, 0.0, 0
		for range *reps {
			for i := range shocks {
				shocks[i] = r.NormFloat64()
			}
			hit := 0
			for o := range *origins {
				e := 0.0
				for _, s := range shocks[o : o+h] {
					e += s
				}
				if math.Abs(e) <= q {
					hit++
				}
			}
			c := float64(hit) / float64(*origins)
			sum += c
			sq += c * c
			if c < 0.75 || c > 0.85 {
				out++
			}
		}
		n := float64(*reps)
		mean := sum / n
		fmt.Printf("%-8d %-10.3f %-10.3f %.1f%%\n", h, mean, math.Sqrt(sq/n-mean*mean), 100*float64(out)/n)
	}
}
