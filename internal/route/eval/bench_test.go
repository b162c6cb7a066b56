package eval

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// geoMatrix places n sites at random on the globe with RTT = 2 ms + 1 ms
// per 100 km × a random 1–1.5 path stretch, as a large unseen matrix.
func geoMatrix(n int, seed uint64) *Matrix {
	r := rand.New(rand.NewPCG(seed, 0))
	m := &Matrix{Name: fmt.Sprint("geo", n)}
	for i := range n {
		m.Sites = append(m.Sites, Site{Name: fmt.Sprint("c", i), Lat: -60 + 130*r.Float64(), Lon: -180 + 360*r.Float64(), HasGeo: true})
	}
	snap := newSnap(n, 0, "")
	for i := range n {
		for j := range n {
			snap.RTT[i*n+j].Avg = 2 + haversineKm(m.Sites[i], m.Sites[j])/100*(1+0.5*r.Float64())
		}
	}
	m.Snaps = []Snapshot{snap}
	return m
}

// BenchmarkRunSites replays 5 minutes of a synthetic matrix of 100 and
// 1000 sites, placement of 10 mirrors included.
func BenchmarkRunSites(b *testing.B) {
	for _, n := range []int{100, 1000} {
		m := geoMatrix(n, 1)
		b.Run(fmt.Sprint("sites=", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := Run(context.Background(), m, Options{Duration: 5 * time.Minute}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkKMedoids places 10 mirrors among 500 sites with the cached
// swap search and with the plain PAM it replaced (the baseline).
func BenchmarkKMedoids(b *testing.B) {
	for _, n := range []int{500} {
		m := geoMatrix(n, 2)
		d := make([][]float64, n)
		for i := range d {
			d[i] = make([]float64, n)
			for j := range d[i] {
				d[i][j] = m.Snaps[0].RTT[i*n+j].Avg
			}
		}
		for _, alg := range []struct {
			name  string
			place func([][]float64, int) []int
		}{{"cached", KMedoids}, {"plain", kMedoidsRef}} {
			b.Run(fmt.Sprintf("sites=%d/%s", n, alg.name), func(b *testing.B) {
				for b.Loop() {
					if got := alg.place(d, 10); len(got) != 10 || math.IsNaN(d[got[0]][got[0]]) {
						b.Fatalf("medoids %v", got)
					}
				}
			})
		}
	}
}
