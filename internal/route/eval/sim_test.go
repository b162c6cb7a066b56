package eval

import (
	"context"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// lineMatrix puts n sites on a line 10 ms apart (plus 2 ms), with matching
// geography so geography-nearest is latency-nearest.
func lineMatrix(n int) *Matrix {
	m := &Matrix{Name: "line"}
	snap := newSnap(n, 0, "")
	for i := range n {
		m.Sites = append(m.Sites, Site{Name: fmt.Sprint("s", i), Lat: 0, Lon: float64(i) / 10, HasGeo: true})
		for j := range n {
			st := missing()
			st.Avg = math.Abs(float64(i-j))*10 + 2
			snap.RTT[i*n+j] = st
		}
	}
	m.Snaps = []Snapshot{snap}
	return m
}

func byName(r *Report) map[string]PolicyResult {
	out := map[string]PolicyResult{}
	for _, p := range r.Policies {
		out[p.Name] = p
	}
	return out
}

func TestKMedoids(t *testing.T) {
	// Two clusters far apart: one medoid in each.
	pos := []float64{0, 1, 2, 100, 101, 102}
	d := make([][]float64, len(pos))
	for i := range d {
		d[i] = make([]float64, len(pos))
		for j := range d[i] {
			d[i][j] = math.Abs(pos[i] - pos[j])
		}
	}
	got := KMedoids(d, 2)
	if len(got) != 2 || (got[0] != 1 && got[1] != 1) || (got[0] != 4 && got[1] != 4) {
		t.Fatalf("medoids %v, want the cluster centres 1 and 4", got)
	}
	if got := KMedoids(d, 1); len(got) != 1 {
		t.Fatalf("1-medoid %v", got)
	}
}

func TestRunStaticMatrix(t *testing.T) {
	o := Options{Duration: 20 * time.Minute, Mirrors: 3}
	rep, err := Run(context.Background(), lineMatrix(12), o)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Clients != 12 || len(rep.Mirrors) != 3 || rep.Sessions == 0 {
		t.Fatalf("setup %+v", rep)
	}
	p := byName(rep)
	pm := p[PolicyPremirror]
	if pm.MeanVsOracle > 1.05 || pm.P95VsOracle > 1.10 {
		t.Fatalf("premirror %.3f / %.3f of the oracle", pm.MeanVsOracle, pm.P95VsOracle)
	}
	if pm.Disrupted > 0.02 || pm.FlipsPerHour > 0.5 {
		t.Fatalf("premirror unstable on a static matrix: %+v", pm)
	}
	if p[PolicyGeo].MeanVsOracle > 1.05 {
		t.Fatalf("geography matches latency here, got %.3f", p[PolicyGeo].MeanVsOracle)
	}
	for _, worse := range []string{PolicyOrigin, PolicyRoundRobin} {
		if p[worse].Mean <= pm.Mean*1.5 {
			t.Fatalf("%s %.1f ms not clearly worse than premirror %.1f", worse, p[worse].Mean, pm.Mean)
		}
	}
	if rr := p[PolicyRoundRobin]; rr.Disrupted != 0 || rr.FlipsPerHour < 50 {
		t.Fatalf("round robin %+v", rr)
	}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteLines(&b); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	last := lines[len(lines)-len(policyOrder):]
	for i, l := range last {
		if !strings.HasPrefix(l, "route-eval policy="+policyOrder[i]+" mean_ms=") || !strings.Contains(l, " disrupted_share=") {
			t.Fatalf("machine line %q", l)
		}
	}
}

func TestRunFollowsDrift(t *testing.T) {
	// Client X; mirrors A and B swap roles between two snapshots.
	m := &Matrix{Name: "drift", Dated: true}
	for _, n := range []string{"X", "A", "B"} {
		m.Sites = append(m.Sites, Site{Name: n})
	}
	set := func(s *Snapshot, i, j int, v float64) {
		st := missing()
		st.Avg = v
		s.RTT[i*3+j], s.RTT[j*3+i] = st, st
	}
	s0, s1 := newSnap(3, 0, "w0"), newSnap(3, 1, "w1")
	set(&s0, 0, 1, 20)
	set(&s0, 0, 2, 80)
	set(&s0, 1, 2, 60)
	set(&s1, 0, 1, 80)
	set(&s1, 0, 2, 20)
	set(&s1, 1, 2, 60)
	m.Snaps = []Snapshot{s0, s1, s1}
	rep, err := Run(context.Background(), m, Options{Segment: 20 * time.Minute, MirrorSites: []string{"A", "B"}, Origin: "A"})
	if err != nil {
		t.Fatal(err)
	}
	p := byName(rep)
	pm, gr := p[PolicyPremirror], p[PolicyGreedy]
	if pm.MeanVsOracle > 1.05 {
		t.Fatalf("premirror did not follow the drift: %.3f of the oracle", pm.MeanVsOracle)
	}
	// X switches once; A and B stay home: about one flip per 3 regions.
	hours := rep.Scored.Hours()
	flips := pm.FlipsPerHour * float64(rep.Clients) * hours
	if math.Round(flips) != 1 {
		t.Fatalf("premirror flipped %.1f times, want 1", flips)
	}
	if gr.FlipsPerHour*float64(rep.Clients)*hours < flips {
		t.Fatalf("greedy flipped less than the damped policy")
	}
}

func TestRunDeterministicAndShortlist(t *testing.T) {
	m := lineMatrix(30)
	o := Options{Duration: 10 * time.Minute, Mirrors: 8, Seed: 7}
	a, err := Run(context.Background(), m, o)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Run(context.Background(), m, o)
	if !reflect.DeepEqual(a.Policies, b.Policies) {
		t.Fatal("same seed, different results")
	}
	o.Seed = 8
	c, _ := Run(context.Background(), m, o)
	if reflect.DeepEqual(a.Policies, c.Policies) {
		t.Fatal("seed ignored")
	}
	o.Shortlist = 3
	s, err := Run(context.Background(), m, o)
	if err != nil {
		t.Fatal(err)
	}
	if s.ShortlistRecall < 0.9 {
		t.Fatalf("Vivaldi shortlist of 3 held the best mirror in %.2f of evaluations", s.ShortlistRecall)
	}
	if pm := byName(s)[PolicyPremirror]; pm.MeanVsOracle > 1.10 {
		t.Fatalf("premirror with a shortlist %.3f of the oracle", pm.MeanVsOracle)
	}
}

func TestRunRejects(t *testing.T) {
	m := lineMatrix(5)
	for name, o := range map[string]Options{
		"mirror site": {MirrorSites: []string{"nowhere"}},
		"origin":      {Origin: "nowhere"},
		"tick":        {Tick: 1500 * time.Millisecond},
		"warmup":      {Duration: time.Minute, Warmup: 2 * time.Minute},
		"probe-loss":  {ProbeLoss: 1},
	} {
		if _, err := Run(context.Background(), m, o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Run(ctx, m, Options{}); err == nil {
		t.Error("cancelled replay returned no error")
	}
}

func TestRunNumericTimeIsLiteral(t *testing.T) {
	var b strings.Builder
	b.WriteString("src,dst,rtt_ms,time\n")
	for _, tm := range []int{0, 300, 600} {
		for i := range 4 {
			for j := range 4 {
				fmt.Fprintf(&b, "s%d,s%d,%d,%d\n", i, j, 3+10*abs(i-j), tm)
			}
		}
	}
	m, err := ReadPairs(strings.NewReader(b.String()), "t.csv")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), m, Options{Mirrors: 2})
	if err != nil {
		t.Fatal(err)
	}
	// 600 s of data plus one 300 s gap for the last snapshot.
	if rep.Simulated != 900*time.Second {
		t.Fatalf("replayed %v, want 15m", rep.Simulated)
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
