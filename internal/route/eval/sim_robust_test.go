package eval

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// pairsMatrix builds a one-snapshot matrix of n sites s0…s(n-1) from
// rtt(i, j) in ms; a negative value leaves the pair unmeasured.
func pairsMatrix(n int, rtt func(i, j int) float64) *Matrix {
	m := &Matrix{Name: "gen"}
	snap := newSnap(n, 0, "")
	for i := range n {
		m.Sites = append(m.Sites, Site{Name: fmt.Sprint("s", i)})
		for j := range n {
			if v := rtt(i, j); v >= 0 {
				snap.RTT[i*n+j].Avg = v
			}
		}
	}
	m.Snaps = []Snapshot{snap}
	return m
}

// timedMatrix repeats pairsMatrix(n, lineRTT) at numeric times (seconds).
func timedMatrix(n int, at ...float64) *Matrix {
	m := pairsMatrix(n, lineRTT)
	base := m.Snaps[0]
	m.Snaps = nil
	for _, t := range at {
		s := newSnap(n, t, fmt.Sprint(t))
		copy(s.RTT, base.RTT)
		m.Snaps = append(m.Snaps, s)
	}
	return m
}

func lineRTT(i, j int) float64 { return 3 + 10*math.Abs(float64(i-j)) }

// checkReport holds for every report: finite figures, ratios finite or
// NaN only where the oracle's figure is 0, and a table and machine lines
// without NaN or Inf.
func checkReport(t *testing.T, rep *Report) {
	t.Helper()
	or := rep.Policies[len(rep.Policies)-1]
	for _, p := range rep.Policies {
		for _, v := range []float64{p.Mean, p.P50, p.P95, p.P99, p.FlipsPerHour, p.Disrupted} {
			if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
				t.Fatalf("%s: figure %v in %+v", p.Name, v, p)
			}
		}
		if math.IsNaN(p.MeanVsOracle) != (or.Mean == 0 && p.Mean != 0) || math.IsInf(p.MeanVsOracle, 0) {
			t.Fatalf("%s: mean/oracle %v with means %v / %v", p.Name, p.MeanVsOracle, p.Mean, or.Mean)
		}
		if math.IsNaN(p.P95VsOracle) != (or.P95 == 0 && p.P95 != 0) || math.IsInf(p.P95VsOracle, 0) {
			t.Fatalf("%s: p95/oracle %v with p95s %v / %v", p.Name, p.P95VsOracle, p.P95, or.P95)
		}
		if p.Requests == 0 {
			t.Fatalf("%s scored no request", p.Name)
		}
	}
	if d := byName(rep)[PolicyOrigin].Disrupted; d != 0 {
		t.Fatalf("origin-only never moves a session, yet %.3f were disrupted", d)
	}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteLines(&b); err != nil {
		t.Fatal(err)
	}
	if s := strings.ToLower(b.String()); strings.Contains(s, "nan") || strings.Contains(s, "inf") {
		t.Fatalf("output holds NaN or Inf:\n%s", b.String())
	}
}

// TestRunUnseenMatrices replays matrices unlike the shared ones and checks
// the clear error or the defined output each must give.
func TestRunUnseenMatrices(t *testing.T) {
	short := Options{Duration: 12 * time.Minute, SessionEvery: 10 * time.Second}
	with := func(o Options, f func(*Options)) Options { f(&o); return o }
	tests := []struct {
		name    string
		m       *Matrix
		o       Options
		wantErr error  // errors.Is
		errHas  string // substring of the error
		note    string // substring of the report's notes
		check   func(*Report) string
	}{
		{name: "one site", m: pairsMatrix(1, lineRTT), o: short, wantErr: ErrTooFewSites},
		{name: "one site, no self-pair", m: pairsMatrix(1, func(int, int) float64 { return -1 }), o: short, wantErr: ErrTooFewSites},
		{name: "two sites", m: pairsMatrix(2, lineRTT), o: short},
		{name: "three sites", m: pairsMatrix(3, lineRTT), o: short},
		{name: "mirrors beyond the sites", m: pairsMatrix(3, lineRTT), o: with(short, func(o *Options) { o.Mirrors = 4 }), errHas: "mirrors 4: more than the 3 usable sites"},
		{name: "mirrors equal to the sites", m: pairsMatrix(3, lineRTT), o: with(short, func(o *Options) { o.Mirrors = 3 })},
		{name: "unknown mirror sites all named", m: pairsMatrix(4, lineRTT), o: with(short, func(o *Options) { o.MirrorSites = []string{"x", "s1", "y"} }),
			wantErr: ErrUnknownSite, errHas: `"x" (not in gen), "y" (not in gen)`},
		{name: "repeated mirror names", m: pairsMatrix(4, lineRTT), o: with(short, func(o *Options) { o.MirrorSites = []string{"s1", "s3", "s1"} }),
			note: "1 mirror site name(s) repeated", check: func(r *Report) string {
				if len(r.Mirrors) != 2 {
					return fmt.Sprintf("mirrors %v", r.Mirrors)
				}
				return ""
			}},
		{name: "origin at the only mirror: one path, one truth", m: pairsMatrix(3, lineRTT),
			o: with(short, func(o *Options) { o.MirrorSites, o.Origin = []string{"s1"}, "s1" }),
			check: func(r *Report) string {
				if o, or := byName(r)[PolicyOrigin], byName(r)[PolicyOracle]; o.Mean != or.Mean || o.P99 != or.P99 {
					return fmt.Sprintf("origin-only %.3f/%.3f and the oracle %.3f/%.3f differ on the same path", o.Mean, o.P99, or.Mean, or.P99)
				}
				return ""
			}},
		{name: "unknown origin", m: pairsMatrix(4, lineRTT), o: with(short, func(o *Options) { o.Origin = "Tokyo" }), wantErr: ErrUnknownSite, errHas: `origin "Tokyo"`},
		{name: "self-pairs absent", m: pairsMatrix(4, func(i, j int) float64 {
			if i == j {
				return -1
			}
			return lineRTT(i, j)
		}), o: short, note: "no self-pair: 1ms assumed"},
		{name: "asymmetric: the client's own row", m: pairsMatrix(2, func(i, j int) float64 {
			if i == 1 && j == 0 {
				return 50
			}
			return map[bool]float64{true: 1, false: 10}[i == j]
		}), o: with(short, func(o *Options) { o.MirrorSites, o.Origin = []string{"s1"}, "s0" }),
			check: func(r *Report) string {
				// s0 → s0 is 1 ms, s1 → s0 is 50 (its reverse, 10, is not used).
				if m := byName(r)[PolicyOrigin].Mean; m < 20 || m > 30 {
					return fmt.Sprintf("origin-only mean %.1f, want about (1+50)/2", m)
				}
				return ""
			}},
		{name: "one direction measured", m: pairsMatrix(5, func(i, j int) float64 {
			if i > j {
				return -1
			}
			return lineRTT(i, j)
		}), o: short, note: "use the reverse direction's RTT"},
		{name: "sparse: unknown pairs are unavailable, not far", m: pairsMatrix(8, func(i, j int) float64 {
			if i != j && (i+j)%3 == 0 {
				return -1
			}
			return lineRTT(i, j)
		}), o: with(short, func(o *Options) { o.MirrorSites, o.Origin = []string{"s1", "s2", "s5"}, "s4" }), note: "never measured in either direction"},
		{name: "islands: a mirror nobody reaches", m: pairsMatrix(8, func(i, j int) float64 {
			if (i < 4) != (j < 4) {
				return -1
			}
			return lineRTT(i, j)
		}), o: with(short, func(o *Options) { o.MirrorSites, o.Origin = []string{"s1", "s6"}, "s1" }), note: "mirror s6 has no measured RTT to any client region"},
		{name: "all RTTs zero", m: pairsMatrix(4, func(int, int) float64 { return 0 }), o: short, note: "oracle's mean is 0 ms"},
		{name: "zero at mirrors only: ratios undefined", m: pairsMatrix(4, func(i, j int) float64 {
			if i == j {
				return 0
			}
			return lineRTT(i, j)
		}), o: with(short, func(o *Options) { o.Mirrors = 4 }), note: "p95/oracle is n/a",
			check: func(r *Report) string {
				if p := byName(r)[PolicyOrigin]; !math.IsNaN(p.MeanVsOracle) {
					return fmt.Sprintf("origin-only mean/oracle %v with an oracle of 0 ms", p.MeanVsOracle)
				}
				return ""
			}},
		{name: "10 s RTTs", m: pairsMatrix(4, func(i, j int) float64 { return 10000 + lineRTT(i, j) }), o: short},
		{name: "one 10 s pair", m: pairsMatrix(5, func(i, j int) float64 {
			if i+j == 4 && i != j {
				return 10000
			}
			return lineRTT(i, j)
		}), o: short},
		{name: "more than 127 mirrors", m: pairsMatrix(140, func(i, j int) float64 { return 2 + 0.5*math.Abs(float64(i-j)) }),
			o: Options{Duration: 4 * time.Minute, Mirrors: 135}},
		{name: "time column in ms refused, not replayed for years", m: timedMatrix(3, 0, 3.6e6, 7.2e6), o: short, wantErr: ErrTooLong, errHas: "use -steps"},
		{name: "time column in ms with -steps", m: timedMatrix(3, 0, 3.6e6, 7.2e6), o: with(short, func(o *Options) { o.Steps, o.Segment = true, 5*time.Minute }),
			check: func(r *Report) string {
				if r.Simulated != 15*time.Minute {
					return fmt.Sprintf("replayed %v, want 3 × 5m", r.Simulated)
				}
				return ""
			}},
		{name: "duration beyond -max-replay", m: pairsMatrix(3, lineRTT), o: with(short, func(o *Options) { o.Duration = 100 * time.Hour }), wantErr: ErrTooLong},
		{name: "exact zeros: no warm-up, 0 ms self RTT", m: pairsMatrix(3, func(i, j int) float64 {
			if i == j {
				return -1
			}
			return lineRTT(i, j)
		}), o: func() Options {
			o := DefaultOptions()
			o.Duration, o.Warmup, o.SelfRTT, o.ProbeLoss, o.Exact = 5*time.Minute, 0, 0, 0, true
			return o
		}(), note: "no self-pair: 0s assumed", check: func(r *Report) string {
			if r.Scored != 5*time.Minute || r.Options.ProbeLoss != 0 {
				return fmt.Sprintf("scored %v with probe loss %v; want all 5m and 0", r.Scored, r.Options.ProbeLoss)
			}
			return ""
		}},
		{name: "exact zero session gap refused, not looped on", m: pairsMatrix(3, lineRTT), o: func() Options {
			o := DefaultOptions()
			o.SessionEvery, o.Exact = 0, true
			return o
		}(), errHas: "session timing"},
		{name: "numeric times seconds apart", m: timedMatrix(3, 0, 1, 2), o: short, errHas: "lengthen -segment with -steps"},
		{name: "nothing scored", m: pairsMatrix(3, lineRTT), o: Options{Duration: 121 * time.Second, SessionEvery: time.Hour}, wantErr: ErrNothingScored},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := Run(context.Background(), tt.m, tt.o)
			if tt.wantErr != nil || tt.errHas != "" {
				if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("err = %v, want %v mentioning %q", err, tt.wantErr, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkReport(t, rep)
			if notes := strings.Join(rep.Notes, "\n"); !strings.Contains(notes, tt.note) {
				t.Fatalf("notes %q, want %q", notes, tt.note)
			}
			if tt.check != nil {
				if msg := tt.check(rep); msg != "" {
					t.Fatal(msg)
				}
			}
		})
	}
}

// TestRunSameInstantSnapshots: snapshots at one instant (a Matrix built in
// code; the readers merge them) must not divide by a zero gap.
func TestRunSameInstantSnapshots(t *testing.T) {
	m := pairsMatrix(4, lineRTT)
	s2 := newSnap(4, 0, "again")
	copy(s2.RTT, m.Snaps[0].RTT)
	s3 := newSnap(4, 300, "later")
	copy(s3.RTT, m.Snaps[0].RTT)
	m.Snaps = append(m.Snaps, s2, s3)
	rep, err := Run(context.Background(), m, Options{SessionEvery: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, rep)
}

// TestRunDeterministicUnseen: one seed, one report, also on a sparse,
// asymmetric matrix with notes.
func TestRunDeterministicUnseen(t *testing.T) {
	m := pairsMatrix(9, func(i, j int) float64 {
		switch {
		case i != j && (i*j)%5 == 1:
			return -1
		case i < j:
			return 1.3 * lineRTT(i, j)
		}
		return lineRTT(i, j)
	})
	o := Options{Duration: 10 * time.Minute, Seed: 7}
	a, err := Run(context.Background(), m, o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Run(context.Background(), m, o)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("same seed, different reports:\n%+v\n%+v", a, b)
	}
}

// TestRatioDefined: a ratio to the oracle is a number wherever it means
// something and NaN (printed n/a) only where the oracle's figure is 0.
func TestRatioDefined(t *testing.T) {
	for _, tt := range []struct{ a, b, want float64 }{
		{2, 1, 2}, {1, 1, 1}, {0, 0, 1}, {0, 2, 0}, {3, 0, math.NaN()},
	} {
		got := ratio(tt.a, tt.b)
		if got != tt.want && !(math.IsNaN(got) && math.IsNaN(tt.want)) {
			t.Errorf("ratio(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

// kMedoidsRef is the plain PAM swap phase (every candidate's cost summed
// over all chosen sites), the reference the cached KMedoids must match.
func kMedoidsRef(dist [][]float64, k int) []int {
	nS := len(dist[0])
	k = min(k, nS)
	var chosen []int
	in := make([]bool, nS)
	best := make([]float64, len(dist))
	for c := range best {
		best[c] = math.Inf(1)
	}
	for len(chosen) < k {
		pick, pickCost := -1, math.Inf(1)
		for s := range nS {
			if in[s] {
				continue
			}
			t := 0.0
			for c := range dist {
				t += capInf(min(best[c], dist[c][s]))
			}
			if t < pickCost {
				pick, pickCost = s, t
			}
		}
		chosen = append(chosen, pick)
		in[pick] = true
		for c := range dist {
			best[c] = min(best[c], dist[c][pick])
		}
	}
	cost := func() float64 {
		t := 0.0
		for c := range dist {
			b := math.Inf(1)
			for _, s := range chosen {
				b = min(b, dist[c][s])
			}
			t += capInf(b)
		}
		return t
	}
	cur := cost()
	for range 100 {
		improved := false
		for i := range chosen {
			for s := range nS {
				if in[s] {
					continue
				}
				old := chosen[i]
				chosen[i] = s
				if t := cost(); t < cur-1e-9 {
					cur, in[old], in[s], improved = t, false, true, true
					continue
				}
				chosen[i] = old
			}
		}
		if !improved {
			break
		}
	}
	return chosen
}

// TestKMedoidsMatchesReference: the O(clients)-per-swap search places the
// same medoids as the plain one, with ties, unknown pairs and k up to n.
func TestKMedoidsMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for trial := range 60 {
		n := 2 + r.IntN(40)
		d := make([][]float64, n)
		for i := range d {
			d[i] = make([]float64, n)
			for j := range d[i] {
				switch x := r.Float64(); {
				case i == j:
					d[i][j] = 0
				case x < 0.15:
					d[i][j] = math.Inf(1)
				case x < 0.3:
					d[i][j] = 10 // ties
				default:
					d[i][j] = float64(r.IntN(300))
				}
			}
		}
		k := 1 + r.IntN(n)
		if got, want := KMedoids(d, k), kMedoidsRef(d, k); !slices.Equal(got, want) {
			t.Fatalf("trial %d (n %d, k %d): %v, reference %v", trial, n, k, got, want)
		}
	}
}
