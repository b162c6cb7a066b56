package forecast

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

// cloneEngineSeries fills e with nRes resources of the template's regions,
// each a copy of the template resource's models (so the benchmark starts
// from models with a full window of history without training 10,000 of
// them). Returns the heap bytes the copies took.
func cloneEngineSeries(tb testing.TB, e, tmpl *Engine, resource string, nRes int) uint64 {
	tb.Helper()
	rs := tmpl.res[resource]
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	blobs := map[string][]byte{}
	for _, r := range rs.regions {
		en := &enc{}
		tmpl.series[SeriesKey{resource, r}].m.encode(en)
		blobs[r] = en.b
	}
	locBlob := &enc{}
	rs.loc.encode(locBlob)
	for i := 0; i < nRes; i++ {
		name := fmt.Sprintf("res-%05d", i)
		nrs := &resourceState{regions: append([]string(nil), rs.regions...)}
		e.res[name] = nrs
		for _, r := range rs.regions {
			src := tmpl.series[SeriesKey{resource, r}]
			m, err := NewHybrid(src.m.cfg, e.feeds)
			if err != nil {
				tb.Fatal(err)
			}
			d := &dec{b: blobs[r]}
			m.decode(d)
			if d.err != nil {
				tb.Fatal(d.err)
			}
			// Copies share the template's schedule; give each its own, as
			// series with their own seeds have.
			seed := seedOf(name + "\x00" + r)
			m.cfg.Seed = seed // the weekly Holt-Winters fit and the GRU's training buckets
			m.nextTune = m.n + int64(seed%24)
			m.sinceRebase = int(seed % uint64(m.W/2))
			e.series[SeriesKey{name, r}] = &seriesState{m: m, first: src.first}
		}
		d := &dec{b: locBlob.b}
		nrs.loc = decodeLocation(d, rs.loc.cfg, e.feeds)
		if d.err != nil {
			tb.Fatal(d.err)
		}
	}
	e.started, e.open = true, tmpl.open
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc - before
}

// BenchmarkEngineBucket10k measures one bucket for 10,000 series (2,000
// resources × 5 regions, hourly, window four weeks, horizon 24): ingest a
// summary per series, close the bucket (every model updates and
// re-forecasts, every resource's location model too) and read every
// resource's forecast. Reported: ns per bucket for all series, heap bytes
// per series (demand model plus a fifth of a location model).
func BenchmarkEngineBucket10k(b *testing.B) {
	benchEngine(b, 2000, 5, 24*35)
}

// BenchmarkEngineBucket10kMature is BenchmarkEngineBucket10k once the
// models are past their first two windows (eight weeks): a fleet's steady
// state, every ring full. BenchmarkEngineBucket10k is its first weeks
// (until round 20 the GRU trained every bucket there, every other one
// here; now every other one in both).
func BenchmarkEngineBucket10kMature(b *testing.B) {
	benchEngine(b, 2000, 5, 24*(56+7))
}

// BenchmarkEngineBucket1k is the same with 1,000 series.
func BenchmarkEngineBucket1k(b *testing.B) {
	benchEngine(b, 200, 5, 24*35)
}

func benchEngine(b *testing.B, nRes, nReg, warm int) {
	regions := []string{"eu", "us", "ap", "sa", "af"}[:nReg]
	tmpl, err := NewEngine(EngineConfig{Workers: 2})
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	for k := 0; k < warm; k++ {
		start := t0.Add(time.Duration(k) * time.Hour)
		batch := make([]AccessSummary, 0, nReg)
		for _, r := range regions {
			batch = append(batch, AccessSummary{Resource: "tmpl", Region: r, Start: start, NewFlows: demandAt("eu", k, rng)})
		}
		if _, err := tmpl.Ingest(batch); err != nil {
			b.Fatal(err)
		}
		if err := tmpl.Advance(start.Add(time.Hour)); err != nil {
			b.Fatal(err)
		}
	}
	e, err := NewEngine(EngineConfig{Workers: runtime.GOMAXPROCS(0)})
	if err != nil {
		b.Fatal(err)
	}
	heap := cloneEngineSeries(b, e, tmpl, "tmpl", nRes)
	names := e.Resources()
	batch := make([]AccessSummary, 0, nRes*nReg)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := warm + i
		start := t0.Add(time.Duration(k) * time.Hour)
		batch = batch[:0]
		for _, n := range names {
			for _, r := range regions {
				batch = append(batch, AccessSummary{Resource: n, Region: r, Start: start, NewFlows: demandAt("eu", k, rng)})
			}
		}
		if _, err := e.Ingest(batch); err != nil {
			b.Fatal(err)
		}
		if err := e.Advance(start.Add(time.Hour)); err != nil {
			b.Fatal(err)
		}
		for _, n := range names {
			if _, err := e.Forecast(n); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(heap)/float64(nRes*nReg), "heapB/series")
}

// BenchmarkHybridObserve is one series' update and re-forecast.
func BenchmarkHybridObserve(b *testing.B) {
	for _, tc := range []struct {
		name string
		cfg  HybridConfig
	}{
		{"h12", HybridConfig{Step: time.Hour, Horizon: 12}},
		{"h24", HybridConfig{Step: time.Hour, Horizon: 24}},
		{"h24-nogru", HybridConfig{Step: time.Hour, Horizon: 24, NoGRU: true}},
		{"h24-nopool", HybridConfig{Step: time.Hour, Horizon: 24, NoPool: true}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			m, err := NewHybrid(tc.cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(2, 2))
			for i := 0; i < 24*35; i++ {
				m.Observe(t0.Add(time.Duration(i)*time.Hour), float64(demandAt("eu", i, rng)))
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				k := 24*35 + i
				if err := m.Observe(t0.Add(time.Duration(k)*time.Hour), float64(demandAt("eu", k, rng))); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkScore: the Mirroring Score of one resource (what the
// controller's mirroring manager computes per resource at every bucket
// close): 8 client regions, a 24-bucket horizon, 4,096 draws, for 1 and
// for 8 candidate sites.
func BenchmarkScore(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	const regions, H = 8, 24
	var demand []RegionDemand
	current := map[string]float64{}
	for r := range regions {
		d := RegionDemand{Region: fmt.Sprintf("r%d", r), Q: make([]Quantiles, H)}
		for h := range d.Q {
			m := 100 + 50*rng.Float64()
			d.Q[h] = Quantiles{Q10: 0.7 * m, Q50: m, Q90: 1.4 * m}
		}
		demand = append(demand, d)
		current[d.Region] = 0.05 + 0.05*rng.Float64()
	}
	for _, nc := range []int{1, 8} {
		req := ScoreRequest{Bytes: 10 << 30, Current: current, Prices: Prices{CopyPerByte: 0.02 / 1e9, StorePerByteHour: 0.1 / 1e9 / 730, ValuePerRequestSecond: 1e-4}}
		for c := range nc {
			cand := Candidate{Location: fmt.Sprintf("site%d", c), Latency: map[string]float64{}}
			for r := range regions {
				cand.Latency[fmt.Sprintf("r%d", r)] = 0.01 + 0.08*rng.Float64()
			}
			req.Candidates = append(req.Candidates, cand)
		}
		b.Run(fmt.Sprintf("candidates=%d", nc), func(b *testing.B) {
			for b.Loop() {
				if _, err := Score(demand, req, time.Hour, 7); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
