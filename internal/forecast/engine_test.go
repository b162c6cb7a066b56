package forecast

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2024, 3, 4, 0, 0, 0, 0, time.UTC) // a Monday

// demandAt is a synthetic per-region demand with a daily cycle.
func demandAt(region string, b int, rng *rand.Rand) uint64 {
	base := map[string]float64{"eu": 200, "us": 120, "ap": 40}[region]
	hod := float64(b % 24)
	v := base * (1 + 0.6*math.Sin(2*math.Pi*(hod-8)/24))
	return uint64(math.Max(0, v+math.Sqrt(v)*rng.NormFloat64()))
}

// feed runs buckets [from, to) through e with two summaries per region
// and bucket (the agents report every half hour).
func feed(t testing.TB, e *Engine, from, to int, rng *rand.Rand) {
	t.Helper()
	for b := from; b < to; b++ {
		start := t0.Add(time.Duration(b) * time.Hour)
		var batch []AccessSummary
		for _, r := range []string{"eu", "us", "ap"} {
			n := demandAt(r, b, rng)
			batch = append(batch, AccessSummary{Resource: "vol-1", Region: r, Start: start, NewFlows: n / 2},
				AccessSummary{Resource: "vol-1", Region: r, Start: start.Add(30 * time.Minute), NewFlows: n - n/2})
		}
		if _, err := e.Ingest(batch); err != nil {
			t.Fatal(err)
		}
		if err := e.Advance(start.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
}

func newTestEngine(t testing.TB, reg prometheus.Registerer) *Engine {
	t.Helper()
	e, err := NewEngine(EngineConfig{Window: 24 * 14, Horizon: 24, Workers: 2, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestEngineForecastAndScore(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newTestEngine(t, reg)
	if _, err := e.Forecast("vol-1"); !errors.Is(err, ErrUnknownResource) {
		t.Fatalf("unknown resource: %v", err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	feed(t, e, 0, 24*21, rng)
	f, err := e.Forecast("vol-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Regions) != 3 || len(f.Regions[0].Q) != 24 || len(f.Shares) != 24 || !f.Origin.Equal(t0.Add(time.Duration(24*21-1)*time.Hour)) {
		t.Fatalf("forecast shape: %d regions, %d steps, %d share rows, origin %v", len(f.Regions), len(f.Regions[0].Q), len(f.Shares), f.Origin)
	}
	// The next bucket is 00:00; compare the forecast with the known mean.
	for _, rf := range f.Regions {
		base := map[string]float64{"eu": 200, "us": 120, "ap": 40}[rf.Region]
		for h := 1; h <= 24; h += 11 {
			want := base * (1 + 0.6*math.Sin(2*math.Pi*(float64((24*21-1+h)%24)-8)/24))
			q := rf.Q[h-1]
			if !(q.Q10 <= q.Q50 && q.Q50 <= q.Q90) || math.Abs(q.Q50-want) > 3*math.Sqrt(want)+2 {
				t.Errorf("%s h=%d: %+v, true mean %.1f", rf.Region, h, q, want)
			}
		}
	}
	if s := f.Shares[0]; math.Abs(s[0]+s[1]+s[2]-1) > 1e-9 || s[0] < s[2] {
		t.Errorf("shares %v (regions %v)", s, []string{f.Regions[0].Region, f.Regions[1].Region, f.Regions[2].Region})
	}
	req := ScoreRequest{Bytes: 1 << 30, Current: map[string]float64{"eu": 0.08, "us": 0.01, "ap": 0.15},
		Candidates: []Candidate{{Location: "fra", Latency: map[string]float64{"eu": 0.01, "ap": 0.12}},
			{Location: "sin", Latency: map[string]float64{"ap": 0.01}}},
		Prices: Prices{CopyPerByte: 1e-10, StorePerByteHour: 1e-13, ValuePerRequestSecond: 0.001}}
	sc, err := e.Score("vol-1", req)
	if err != nil {
		t.Fatal(err)
	}
	if sc[0].Location != "fra" || sc[0].Score <= sc[1].Score {
		t.Fatalf("scores %+v", sc)
	}
	text, err := e.Explain("vol-1", req)
	if err != nil || !strings.Contains(text, "candidate fra") || !strings.Contains(text, "eu") {
		t.Fatalf("explain: %v\n%s", err, text)
	}
	if got := testutil.ToFloat64(e.met.series); got != 3 {
		t.Fatalf("series gauge %v", got)
	}
	if got := testutil.ToFloat64(e.met.closed); got != 24*21 {
		t.Fatalf("closed buckets %v", got)
	}
	// Online one-step accuracy over the same buckets: a daily pattern
	// with Poisson noise, which the models learn and the last bucket's
	// count does not.
	scored, hits := testutil.ToFloat64(e.met.scored), testutil.ToFloat64(e.met.hits)
	absErr, naiveErr := testutil.ToFloat64(e.met.absErr), testutil.ToFloat64(e.met.naiveErr)
	if scored < 3*(24*21-1)-3 || scored > 3*(24*21-1) {
		t.Errorf("scored %v, want about one per series and bucket after the first", scored)
	}
	if cov := hits / scored; cov < 0.6 || cov > 0.95 {
		t.Errorf("80%% interval held %.3f of the counts", cov)
	}
	if r := absErr / naiveErr; r <= 0 || r >= 0.9 {
		t.Errorf("error relative to naive %.3f, want well below 1 on a learnt daily pattern", r)
	}
	t.Logf("one step ahead over 21 days: coverage %.3f, error relative to naive %.3f", hits/scored, absErr/naiveErr)
}

func TestEngineIngestRules(t *testing.T) {
	e := newTestEngine(t, nil)
	good := AccessSummary{Resource: "r", Region: "eu", Start: t0, NewFlows: 5}
	if n, err := e.Ingest([]AccessSummary{good}); err != nil || n != 1 {
		t.Fatal(n, err)
	}
	// A malformed summary rejects the whole batch.
	for _, bad := range []AccessSummary{
		{Resource: "", Region: "eu", Start: t0},
		{Resource: "r", Region: "e\x00u", Start: t0},
		{Resource: "r", Region: "eu"},
		{Resource: strings.Repeat("x", 300), Region: "eu", Start: t0},
	} {
		n, err := e.Ingest([]AccessSummary{good, bad})
		if !errors.Is(err, ErrBadInput) || n != 0 {
			t.Errorf("%+v: accepted %d, %v", bad, n, err)
		}
	}
	// Bucket 1: only us reports, so eu had no accesses (a zero); bucket
	// 2: nobody reports, so it is unknown (skipped, weight zero).
	if _, err := e.Ingest([]AccessSummary{{Resource: "r", Region: "us", Start: t0.Add(time.Hour), NewFlows: 3}}); err != nil {
		t.Fatal(err)
	}
	if err := e.Advance(t0.Add(3 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Late: the bucket at t0 is closed. The on-time one is applied.
	n, err := e.Ingest([]AccessSummary{good, {Resource: "r", Region: "eu", Start: t0.Add(3 * time.Hour), NewFlows: 1}})
	if !errors.Is(err, ErrLate) || n != 1 {
		t.Fatalf("late: %d %v", n, err)
	}
	// Far future: rejected.
	if _, err := e.Ingest([]AccessSummary{{Resource: "r", Region: "eu", Start: t0.Add(1000 * time.Hour)}}); !errors.Is(err, ErrFuture) {
		t.Fatalf("future: %v", err)
	}
	s := e.series[SeriesKey{"r", "eu"}]
	if s.m.Observed() != 3 || s.m.ys[0] != 5 || s.m.ys[1] != 0 || s.m.wts[1] != 1 || s.m.wts[2] != 0 {
		t.Fatalf("observed %d: values %v weights %v", s.m.Observed(), s.m.ys[:3], s.m.wts[:3])
	}
	if us := e.series[SeriesKey{"r", "us"}]; us.first != e.bucket(t0)+1 || us.m.Observed() != 2 {
		t.Fatalf("us series first %d observed %d", us.first, us.m.Observed())
	}
	// A controller away for longer than a window jumps over it at once.
	if err := e.Advance(t0.Add(time.Duration(24*14+100) * time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := e.Stats().OpenBucket; !got.Equal(t0.Add(time.Duration(24*14+100) * time.Hour)) {
		t.Fatalf("open bucket %v", got)
	}
	if !s.m.Last().Equal(t0.Add(time.Duration(24*14+99) * time.Hour)) {
		t.Fatalf("model at %v", s.m.Last())
	}
}

// TestSnapshotRoundTrip: an engine restored from a snapshot continues
// exactly as the original (bit-identical forecasts), through bytes and
// through a file.
func TestSnapshotRoundTrip(t *testing.T) {
	a := newTestEngine(t, nil)
	if err := a.SetEvents([]Event{{Start: t0.Add(24 * 9 * time.Hour), End: t0.Add(24 * 10 * time.Hour), Name: "h", Kind: KindHoliday}}); err != nil {
		t.Fatal(err)
	}
	if err := a.SetCovariate("temp", "", t0, 3); err != nil {
		t.Fatal(err)
	}
	feed(t, a, 0, 24*15, rand.New(rand.NewPCG(3, 3)))
	// A pending (open) bucket must survive too.
	if _, err := a.Ingest([]AccessSummary{{Resource: "vol-1", Region: "eu", Start: t0.Add(24 * 15 * time.Hour), NewFlows: 7}}); err != nil {
		t.Fatal(err)
	}
	blob, err := a.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	b := newTestEngine(t, nil)
	if err := b.UnmarshalBinary(blob); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "forecast.snap")
	if err := a.SaveFile(path); err != nil {
		t.Fatal(err)
	}
	c := newTestEngine(t, nil)
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	blob2, _ := b.MarshalBinary()
	if !bytes.Equal(blob, blob2) {
		t.Fatal("re-encoding a restored engine gives different bytes")
	}
	for _, e := range []*Engine{a, b, c} {
		feed(t, e, 24*15, 24*16, rand.New(rand.NewPCG(4, 4)))
	}
	fa, _ := a.Forecast("vol-1")
	for _, e := range []*Engine{b, c} {
		fe, err := e.Forecast("vol-1")
		if err != nil {
			t.Fatal(err)
		}
		for i := range fa.Regions {
			for h := range fa.Regions[i].Q {
				if fa.Regions[i].Q[h] != fe.Regions[i].Q[h] {
					t.Fatalf("region %s h=%d: %+v vs %+v", fa.Regions[i].Region, h+1, fa.Regions[i].Q[h], fe.Regions[i].Q[h])
				}
			}
		}
		for h := range fa.Shares {
			for r := range fa.Shares[h] {
				if fa.Shares[h][r] != fe.Shares[h][r] {
					t.Fatalf("shares differ at h=%d", h+1)
				}
			}
		}
	}
}

func TestSnapshotRejectsCorruption(t *testing.T) {
	a := newTestEngine(t, nil)
	feed(t, a, 0, 48, rand.New(rand.NewPCG(5, 5)))
	blob, _ := a.MarshalBinary()
	b := newTestEngine(t, nil)
	feed(t, b, 0, 30, rand.New(rand.NewPCG(6, 6)))
	before, _ := b.MarshalBinary()
	for name, mutate := range map[string]func([]byte) []byte{
		"flipped payload byte": func(x []byte) []byte { x[100] ^= 1; return x },
		"truncated":            func(x []byte) []byte { return x[:len(x)-9] },
		"bad magic":            func(x []byte) []byte { x[0] = 'X'; return x },
		"future version":       func(x []byte) []byte { x[8] = snapVersion + 1; return x },
		"empty":                func([]byte) []byte { return nil },
	} {
		err := b.UnmarshalBinary(mutate(append([]byte(nil), blob...)))
		if !errors.Is(err, ErrCorruptSnapshot) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Snapshots of the previous formats (version 1, before the demand
	// model gained its forecast combination; 2, before its yearly memory)
	// are refused by name, with a message that says so, and not misread.
	for v := uint32(1); v < snapMinVersion; v++ {
		old := append([]byte(nil), blob...)
		binary.LittleEndian.PutUint32(old[len(snapMagic):], v)
		err := b.UnmarshalBinary(old)
		if !errors.Is(err, ErrSnapshotVersion) || !errors.Is(err, ErrCorruptSnapshot) || !strings.Contains(err.Error(), fmt.Sprintf("format version %d", v)) {
			t.Errorf("version %d snapshot: %v", v, err)
		}
	}
	after, _ := b.MarshalBinary()
	if !bytes.Equal(before, after) {
		t.Fatal("a rejected snapshot changed the engine")
	}
	// A snapshot of a differently shaped engine is refused by name.
	other, _ := NewEngine(EngineConfig{Window: 24 * 14, Horizon: 12})
	if err := other.UnmarshalBinary(blob); !errors.Is(err, ErrSnapshotMismatch) {
		t.Fatalf("mismatch: %v", err)
	}
	if err := b.LoadFile(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// FuzzSnapshot feeds mutated snapshots (with their checksum fixed, so the
// decoder itself is exercised) to UnmarshalBinary: never a panic, and
// either a clean restore or an error.
func FuzzSnapshot(f *testing.F) {
	a, _ := NewEngine(EngineConfig{Window: 24 * 14, Horizon: 4, Hidden: 2, Workers: 1})
	rng := rand.New(rand.NewPCG(7, 7))
	for b := 0; b < 40; b++ {
		start := t0.Add(time.Duration(b) * time.Hour)
		a.Ingest([]AccessSummary{{Resource: "v", Region: "eu", Start: start, NewFlows: demandAt("eu", b, rng)},
			{Resource: "v", Region: "ap", Start: start, NewFlows: demandAt("ap", b, rng)}})
		a.Advance(start.Add(time.Hour))
	}
	blob, _ := a.MarshalBinary()
	f.Add(blob[20 : len(blob)-4])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, payload []byte) {
		if len(payload) > 1<<22 {
			return
		}
		// Every version this build reads (the older ones take another
		// path through the location model).
		for v := uint32(snapMinVersion); v <= snapVersion; v++ {
			b := make([]byte, 0, len(payload)+24)
			b = append(b, snapMagic...)
			b = binary.LittleEndian.AppendUint32(b, v)
			b = binary.LittleEndian.AppendUint64(b, uint64(len(payload)))
			b = append(b, payload...)
			b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(payload, castagnoli))
			e, _ := NewEngine(EngineConfig{Window: 24 * 14, Horizon: 4, Hidden: 2, Workers: 1})
			if err := e.UnmarshalBinary(b); err != nil {
				continue
			}
			// A snapshot that decodes must leave a working engine.
			for _, r := range e.Resources() {
				e.Forecast(r)
			}
			e.Advance(time.Unix(0, 0))
		}
	})
}

func TestEngineMetricsLint(t *testing.T) {
	e := newTestEngine(t, nil)
	for _, c := range e.met.collectors() {
		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("metric %s: %s", p.Metric, p.Text)
		}
	}
}

func TestEngineConfigErrors(t *testing.T) {
	for _, c := range []EngineConfig{
		{Step: 500 * time.Millisecond},
		{Window: 3},
		{Horizon: -1, Window: 100},
		{Hidden: 1000},
	} {
		if _, err := NewEngine(c); !errors.Is(err, ErrBadInput) {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

// TestEngineRestartsFailedModel: a model whose state went bad does not
// stop the bucket or the other series; it starts afresh.
func TestEngineRestartsFailedModel(t *testing.T) {
	e := newTestEngine(t, nil)
	feed(t, e, 0, 30, rand.New(rand.NewPCG(8, 8)))
	bad := e.series[SeriesKey{"vol-1", "eu"}].m
	for i := range bad.blr.S {
		bad.blr.S[i] = math.NaN()
	}
	bad.sinceRebase = -1 << 30 // no rebuild from the window this time
	feed(t, e, 30, 31, rand.New(rand.NewPCG(9, 9)))
	if got := testutil.ToFloat64(e.met.restarts); got != 1 {
		t.Fatalf("restarts %v", got)
	}
	if e.series[SeriesKey{"vol-1", "eu"}].m == bad {
		t.Fatal("the failed model is still in place")
	}
	feed(t, e, 31, 40, rand.New(rand.NewPCG(10, 10)))
	if f, err := e.Forecast("vol-1"); err != nil || len(f.Regions) != 3 {
		t.Fatalf("after restart: %v, %d regions", err, len(f.Regions))
	}
}

// TestSnapshotUpgrade: snapshots written by earlier releases are read by
// this build — format 8 (before the location model's pooled persistence
// experts; testdata/engine-v8.snap.gz, made by main at 92b6f54) and
// format 9 (before the demand combination's fitted Holt-Winters expert;
// testdata/engine-v9.snap.gz, made by main at 6ef0de2) and format 10
// (before the issued interval bounds; engine-v10, main at 2b423c9) and 11
// (before the event error scale; engine-v11, main at 070246a) and 12
// (before the carry of shift bets; engine-v12, main at 4e7309d) and 13
// (before the location model's precomputed forecasts; engine-v13, main at
// b561f32), all from
// feed(0, 24*9) with PCG(8, 8) on a one-week window. The demand forecasts
// are exactly the ones the old build gave (engine-v*.forecast.json), the
// location model goes on with what it learnt, the new expert wakes at its
// first weekly fit, and the next snapshot is of the current version.
func TestSnapshotUpgrade(t *testing.T) {
	for _, c := range []struct {
		ver      uint32
		shareTol float64 // the old build's location shares, to within
	}{
		{8, 0.01}, // the two new location experts carry a fixed share's weight only
		{9, 0},    // the location model is unchanged since
		{10, 0},   // format 10 lacks the issued interval bounds and the event trackers
		{11, 0},   // format 11 lacks the event error scale and the carry
		{12, 0},   // format 12 lacks the carry
		{13, 0},   // format 13 lacks only the location model's precomputed forecasts
	} {
		t.Run(fmt.Sprintf("v%d", c.ver), func(t *testing.T) {
			raw, err := os.ReadFile(fmt.Sprintf("testdata/engine-v%d.snap.gz", c.ver))
			if err != nil {
				t.Fatal(err)
			}
			zr, err := gzip.NewReader(bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			blob, err := io.ReadAll(zr)
			if err != nil {
				t.Fatal(err)
			}
			if v := binary.LittleEndian.Uint32(blob[len(snapMagic):]); v != c.ver {
				t.Fatalf("testdata snapshot is version %d, want %d", v, c.ver)
			}
			var want ResourceForecast
			j, err := os.ReadFile(fmt.Sprintf("testdata/engine-v%d.forecast.json", c.ver))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(j, &want); err != nil {
				t.Fatal(err)
			}
			e, err := NewEngine(EngineConfig{Window: 24 * 7, Horizon: 12, Workers: 1})
			if err != nil {
				t.Fatal(err)
			}
			if err := e.UnmarshalBinary(blob); err != nil {
				t.Fatalf("version %d snapshot: %v", c.ver, err)
			}
			got, err := e.Forecast("vol-1")
			if err != nil {
				t.Fatal(err)
			}
			if !got.Origin.Equal(want.Origin) || !reflect.DeepEqual(got.Regions, want.Regions) {
				t.Fatalf("demand forecasts changed across the upgrade:\n got %+v\nwant %+v", got.Regions, want.Regions)
			}
			// The location model kept its tables.
			if len(got.Shares) != len(want.Shares) {
				t.Fatalf("%d share rows, want %d", len(got.Shares), len(want.Shares))
			}
			for h := range got.Shares {
				s := 0.0
				for r, p := range got.Shares[h] {
					s += p
					if math.Abs(p-want.Shares[h][r]) > c.shareTol {
						t.Fatalf("h=%d region %d: share %.4f, the old build's %.4f", h+1, r, p, want.Shares[h][r])
					}
				}
				if math.Abs(s-1) > 1e-9 {
					t.Fatalf("h=%d: shares sum to %v", h+1, s)
				}
			}
			// The fitted Holt-Winters expert starts asleep (formats 8
			// and 9 have no fit) and wakes within a week, at its
			// series' own bucket of the week. The pending origins'
			// issued bounds are today's and the event trackers the
			// ordinary ones (format 10 kept neither).
			for k, st := range e.series {
				if st.m.hwf == nil || (c.ver < 10) != (st.m.hwf.par == nil) {
					t.Fatalf("%v: fitted expert %v after the upgrade from format %d", k, st.m.hwf, c.ver)
				}
				H := st.m.cfg.Horizon
				for i := 0; i < len(st.m.ivF) && c.ver < 11; i += 2 {
					h := i/2%H + 1
					iv := st.m.ivScale(h)
					if st.m.ivF[i] != iv*st.m.qF[2*h-2] || st.m.ivF[i+1] != iv*st.m.qF[2*h-1] {
						t.Fatalf("%v: issued bounds at slot %d h=%d: %v, want %v×%v", k, i/2/H, h, st.m.ivF[i:i+2], iv, st.m.qF[2*h-2:2*h])
					}
				}
				if c.ver < 11 && !slices.Equal(st.m.qE, st.m.qF) {
					t.Fatalf("%v: event trackers %v after the upgrade, want the ordinary ones %v", k, st.m.qE, st.m.qF)
				}
				if cr := st.m.carry; c.ver < 13 && (cr.at != 0 || slices.ContainsFunc(cr.n, func(v float64) bool { return v != 0 }) || slices.ContainsFunc(cr.bet, func(b int8) bool { return b != -1 })) {
					t.Fatalf("%v: carry %+v after the upgrade, want it afresh", k, st.m.carry)
				}
				if c.ver < 12 && (slices.ContainsFunc(st.m.shE, func(v float64) bool { return v != 0 }) || slices.ContainsFunc(st.m.nE, func(v float64) bool { return v != 0 })) {
					t.Fatalf("%v: event error scale %v (%v errors) after the upgrade, want it afresh", k, st.m.shE, st.m.nE)
				}
			}
			feed(t, e, 24*9, 24*17, rand.New(rand.NewPCG(9, 9)))
			for k, st := range e.series {
				if st.m.hwf.par == nil {
					t.Fatalf("%v: fitted expert still asleep a week after the upgrade", k)
				}
			}
			if _, err := e.Forecast("vol-1"); err != nil {
				t.Fatal(err)
			}
			b, err := e.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if v := binary.LittleEndian.Uint32(b[len(snapMagic):]); v != snapVersion {
				t.Fatalf("saved as version %d, want %d", v, snapVersion)
			}
			e2, _ := NewEngine(EngineConfig{Window: 24 * 7, Horizon: 12, Workers: 1})
			if err := e2.UnmarshalBinary(b); err != nil {
				t.Fatal(err)
			}
			for k, st := range e2.series {
				if !slices.Equal(st.m.hwf.par, e.series[k].m.hwf.par) {
					t.Fatalf("%v: fitted parameters %v after a restore, want %v", k, st.m.hwf.par, e.series[k].m.hwf.par)
				}
			}
		})
	}
}

// TestSnapshotIssuedBounds: an issued interval bound that overflowed to
// ±Inf (values near 10³⁰⁸) round-trips; a NaN one is corruption.
func TestSnapshotIssuedBounds(t *testing.T) {
	for _, c := range []struct {
		v       float64
		corrupt bool
	}{{math.Inf(1), false}, {math.Inf(-1), false}, {math.NaN(), true}} {
		e, err := NewEngine(EngineConfig{Window: 24 * 7, Horizon: 12, Workers: 1})
		if err != nil {
			t.Fatal(err)
		}
		feed(t, e, 0, 24*9, rand.New(rand.NewPCG(8, 8)))
		for _, st := range e.series {
			st.m.ivF[1] = c.v
		}
		b, err := e.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		e2, _ := NewEngine(EngineConfig{Window: 24 * 7, Horizon: 12, Workers: 1})
		err = e2.UnmarshalBinary(b)
		if c.corrupt != errors.Is(err, ErrCorruptSnapshot) || (!c.corrupt && err != nil) {
			t.Fatalf("bound %v: restore error %v", c.v, err)
		}
		if !c.corrupt {
			for k, st := range e2.series {
				if st.m.ivF[1] != c.v {
					t.Fatalf("%v: bound %v after the restore, want %v", k, st.m.ivF[1], c.v)
				}
			}
		}
	}
}

// A series first seen in a future bucket (an agent whose clock runs ahead,
// which maxAhead explicitly allows) must still learn the counts that
// arrive for earlier, still-open buckets: Ingest accepts them, so
// Advance must not drop them.
func TestIngestEarlierBucketOfNewSeries(t *testing.T) {
	e := newTestEngine(t, nil)
	// Start the engine at t0 with another series.
	if _, err := e.Ingest([]AccessSummary{{Resource: "r", Region: "us", Start: t0, NewFlows: 1}}); err != nil {
		t.Fatal(err)
	}
	// eu first reports for bucket t0+2h (clock ahead), then for t0.
	if _, err := e.Ingest([]AccessSummary{{Resource: "r", Region: "eu", Start: t0.Add(2 * time.Hour), NewFlows: 7}}); err != nil {
		t.Fatal(err)
	}
	n, err := e.Ingest([]AccessSummary{{Resource: "r", Region: "eu", Start: t0, NewFlows: 5}})
	if err != nil || n != 1 {
		t.Fatalf("accepted %d, %v", n, err)
	}
	if err := e.Advance(t0.Add(3 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	s := e.series[SeriesKey{"r", "eu"}]
	if s.m.Observed() != 3 || s.m.ys[0] != 5 {
		t.Fatalf("eu observed %d buckets, values %v: the accepted count 5 at t0 was dropped", s.m.Observed(), s.m.ys[:3])
	}
}

// ScoreHorizon is documented as capped by the shortest region forecast;
// a region with an empty forecast ahead of a longer one resets the cap,
// and Score then slices past the short region (panic).
func TestScoreHorizonEmptyRegion(t *testing.T) {
	q := []Quantiles{{1, 2, 3}, {1, 2, 3}}
	demand := []RegionDemand{{Region: "a", Q: q}, {Region: "b"}, {Region: "c", Q: q}}
	if h := ScoreHorizon(demand, 0); h != 0 {
		t.Errorf("ScoreHorizon = %d, want 0 (region b has no forecast)", h)
	}
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("Score panicked: %v", r)
		}
	}()
	_, err := Score(demand, ScoreRequest{Bytes: 1, Current: map[string]float64{"a": 0.1},
		Candidates: []Candidate{{Location: "x", Latency: map[string]float64{"a": 0.01}}},
		Prices:     Prices{ValuePerRequestSecond: 1}}, time.Hour, 1)
	t.Logf("err %v", err)
}

// The Engine is documented safe for concurrent use; SetCovariate reads
// e.feeds without the lock while UnmarshalBinary swaps it under the lock.
func TestSetCovariateRacesRestore(t *testing.T) {
	e, err := NewEngine(EngineConfig{Window: 48, Horizon: 4, Workers: 1, Covariates: []string{"temp"}})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := e.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 100; i++ {
			_ = e.SetCovariate("temp", "", t0.Add(time.Duration(i)*time.Hour), 1)
		}
	}()
	for i := 0; i < 100; i++ {
		if err := e.UnmarshalBinary(snap); err != nil {
			t.Fatal(err)
		}
	}
	<-done
}

// A batch rejected with ErrFuture applies nothing; on a fresh engine it
// nevertheless starts the engine at the batch's oldest bucket, so the
// next (good) batch is refused too.
func TestRejectedFirstBatchStartsEngine(t *testing.T) {
	e := newTestEngine(t, nil)
	late := t0.Add(-200 * time.Hour) // one agent's clock far behind
	_, err := e.Ingest([]AccessSummary{{Resource: "r", Region: "eu", Start: late, NewFlows: 1},
		{Resource: "r", Region: "eu", Start: t0, NewFlows: 1}})
	if !errors.Is(err, ErrFuture) {
		t.Fatalf("mixed batch: %v", err)
	}
	if n, err := e.Ingest([]AccessSummary{{Resource: "r", Region: "eu", Start: t0, NewFlows: 5}}); err != nil || n != 1 {
		t.Fatalf("a good batch after a rejected one: accepted %d, %v", n, err)
	}
}

// Two summaries of one new series (two intervals of one bucket, as the
// agents send) count as one new series against MaxSeries.
func TestMaxSeriesCountsNewSeriesOnce(t *testing.T) {
	e, err := NewEngine(EngineConfig{Window: 48, Horizon: 4, Workers: 1, MaxSeries: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Ingest([]AccessSummary{{Resource: "r", Region: "us", Start: t0, NewFlows: 1}}); err != nil {
		t.Fatal(err)
	}
	n, err := e.Ingest([]AccessSummary{{Resource: "r", Region: "eu", Start: t0, NewFlows: 1},
		{Resource: "r", Region: "eu", Start: t0.Add(30 * time.Minute), NewFlows: 1}})
	if err != nil || n != 2 {
		t.Fatalf("accepted %d, %v (the batch adds one series, within MaxSeries 2)", n, err)
	}
}

// At MaxSeries, a batch holding one new series must not cost the existing
// series their bucket: the controller ingests a whole bucket (every
// series) as one batch, so rejecting it all froze every forecast once
// the limit was reached and any new (resource, region) kept reporting.
func TestMaxSeriesKeepsExistingSeries(t *testing.T) {
	e, err := NewEngine(EngineConfig{Window: 48, Horizon: 4, Workers: 1, MaxSeries: 2})
	if err != nil {
		t.Fatal(err)
	}
	for b := 0; b < 3; b++ {
		start := t0.Add(time.Duration(b) * time.Hour)
		batch := []AccessSummary{{Resource: "r", Region: "eu", Start: start, NewFlows: 10}, {Resource: "r", Region: "us", Start: start, NewFlows: 20}}
		if b > 0 {
			batch = append(batch, AccessSummary{Resource: "r2", Region: "eu", Start: start, NewFlows: 1})
		}
		n, err := e.Ingest(batch)
		t.Logf("bucket %d: accepted %d, %v", b, n, err)
		if err := e.Advance(start.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	s := e.series[SeriesKey{"r", "eu"}]
	if s.m.wts[1] != 1 || s.m.wts[2] != 1 || s.m.ys[1] != 10 {
		t.Fatalf("r/eu: values %v weights %v: buckets 1 and 2 were lost to r2/eu beyond the limit", s.m.ys[:3], s.m.wts[:3])
	}
	if _, ok := e.series[SeriesKey{"r2", "eu"}]; ok || len(e.series) != 2 {
		t.Fatalf("%d series", len(e.series))
	}
}
