package forecast

import (
	"fmt"
	"math"
	"os"
	"testing"
	"time"
)

func loadS(t *testing.T, path string, loc string) *Series {
	f, _ := os.Open(path)
	ss, err := LoadSeries(f, SeriesOptions{Step: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		if s.Name == loc {
			return s
		}
	}
	return ss[0]
}

func TestScratchSimple(t *testing.T) {
	for _, c := range [][2]string{{"/work/shared/data/dev/nab_nyc_taxi.csv", ""}, {"/work/shared/data/dev/uber_nyc_boroughs_hourly_2015-01_04.csv", "Manhattan"}, {"/work/shared/data/dev/uber_nyc_boroughs_hourly_2015-01_04.csv", "Brooklyn"}} {
		s := loadS(t, c[0], c[1])
		y := s.Values
		W, H := 672, 12
		type meth func(o, h int) float64
		wk := 168
		lg := func(v float64) float64 { return math.Log(v + 1) }
		ex := func(v float64) float64 { return math.Exp(v) - 1 }
		ms := map[string]meth{
			"wsn": func(o, h int) float64 { return y[o+h-wk] },
			"mean4": func(o, h int) float64 {
				s := 0.0
				for k := 1; k <= 4; k++ {
					s += y[o+h-k*wk]
				}
				return s / 4
			},
			"med4": func(o, h int) float64 {
				v := []float64{y[o+h-wk], y[o+h-2*wk], y[o+h-3*wk], y[o+h-4*wk]}
				return median(v)
			},
			"logmean4": func(o, h int) float64 {
				s := 0.0
				for k := 1; k <= 4; k++ {
					s += lg(y[o+h-k*wk])
				}
				return ex(s / 4)
			},
			"mean4_lvl": func(o, h int) float64 {
				// multiplicative level: last 24h vs same 24h in past weeks
				s, cur, past := 0.0, 0.0, 0.0
				for k := 1; k <= 4; k++ {
					s += y[o+h-k*wk]
				}
				for i := o - 23; i <= o; i++ {
					cur += y[i]
					for k := 1; k <= 4; k++ {
						past += y[i-k*wk] / 4
					}
				}
				return s / 4 * cur / past
			},
			"wsn_lvl": func(o, h int) float64 {
				cur, past := 0.0, 0.0
				for i := o - 23; i <= o; i++ {
					cur += y[i]
					past += y[i-wk]
				}
				return y[o+h-wk] * cur / past
			},
			"mean4_lvl6": func(o, h int) float64 {
				s, cur, past := 0.0, 0.0, 0.0
				for k := 1; k <= 4; k++ {
					s += y[o+h-k*wk]
				}
				for i := o - 5; i <= o; i++ {
					cur += y[i]
					for k := 1; k <= 4; k++ {
						past += y[i-k*wk] / 4
					}
				}
				return s / 4 * cur / past
			},
		}
		for name, f := range ms {
			var mase [13]float64
			n := 0
			for o := W + 4*wk; o < len(y)-H; o++ {
				sc := 0.0
				for i := o - W + 1 + 24; i <= o; i++ {
					sc += math.Abs(y[i] - y[i-24])
				}
				sc /= float64(W - 24)
				for _, h := range []int{1, 12} {
					mase[h] += math.Abs(y[o+h]-f(o, h)) / sc
				}
				n++
			}
			fmt.Printf("%-12s %-12s h1=%.3f h12=%.3f n=%d\n", c[1], name, mase[1]/float64(n), mase[12]/float64(n), n)
		}
	}
}
