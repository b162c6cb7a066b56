package forecast

import (
	"math"
	"testing"
	"time"
)

func BenchmarkScratchObserve(b *testing.B) {
	for _, nogru := range []bool{false, true} {
		name := "gru"
		if nogru {
			name = "nogru"
		}
		b.Run(name, func(b *testing.B) {
			m, _ := NewHybrid(HybridConfig{Step: time.Hour, NoGRU: nogru}, nil)
			t0 := time.Unix(0, 0).UTC()
			for i := 0; i < 2000; i++ {
				m.Observe(t0.Add(time.Duration(i)*time.Hour), 100+50*math.Sin(float64(i)/24*2*math.Pi)+float64(i%7))
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				k := 2000 + i
				m.Observe(t0.Add(time.Duration(k)*time.Hour), 100+50*math.Sin(float64(k)/24*2*math.Pi)+float64(k%7))
			}
		})
	}
}
