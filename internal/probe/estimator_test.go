package probe

import (
	"errors"
	"math"
	"testing"
	"time"
)

var errProbe = errors.New("probe failed")

// step is one probe result fed to an estimator: ms < 0 means a failure.
type step struct {
	at float64 // seconds since t0
	ms float64
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func ms(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

func run(t *testing.T, cfg EstimatorConfig, steps []step) Estimate {
	t.Helper()
	e, err := NewEstimator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		at := t0.Add(time.Duration(s.at * float64(time.Second)))
		var perr error
		if s.ms < 0 {
			perr = errProbe
		}
		if err := e.Observe(at, ms(max(s.ms, 0)), perr); err != nil {
			t.Fatal(err)
		}
	}
	return e.Estimate()
}

func every2s(vals ...float64) []step {
	s := make([]step, len(vals))
	for i, v := range vals {
		s[i] = step{float64(2 * i), v}
	}
	return s
}

func near(a, b time.Duration, tol time.Duration) bool {
	d := a - b
	return d <= tol && d >= -tol
}

func TestEstimatorRTT(t *testing.T) {
	cfg := DefaultEstimatorConfig()
	decay := func(from, to float64, dt float64) float64 {
		w := math.Exp(-dt / cfg.DecayTime.Seconds())
		return from*w + to*(1-w)
	}
	tests := []struct {
		name     string
		steps    []step
		wantRTT  float64 // ms
		wantMed  float64
		wantMin  float64
		wantLast float64
	}{
		{"single sample", every2s(20), 20, 20, 20, 20},
		{"two samples average", every2s(20, 30), 25, 25, 20, 30},
		{"median drops one outlier", every2s(20, 20, 200, 20), 20, 20, 20, 20},
		{"outlier never raises peak", every2s(20, 20, 200), 20, 20, 20, 200},
		{"two high samples raise at once", every2s(20, 20, 50, 50), 50, 50, 20, 50},
		// From 50 the estimate decays towards 20 with w = exp(-2/10) per
		// 2 s sample once the median is back at 20.
		{"decays slowly", every2s(20, 20, 50, 50, 20, 20), decay(50, 20, 2), 20, 20, 20},
		{"failures are ignored by rtt", every2s(20, -1, 20, -1, 20), 20, 20, 20, 20},
		{"out-of-order sample does not decay", []step{{10, 30}, {10, 30}, {8, 10}, {8, 10}}, 30, 10, 10, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := run(t, cfg, tt.steps)
			tol := 10 * time.Microsecond
			if !near(got.RTT, ms(tt.wantRTT), tol) {
				t.Errorf("RTT = %v, want %v", got.RTT, ms(tt.wantRTT))
			}
			if !near(got.Median, ms(tt.wantMed), tol) {
				t.Errorf("Median = %v, want %v", got.Median, ms(tt.wantMed))
			}
			if !near(got.Min, ms(tt.wantMin), tol) {
				t.Errorf("Min = %v, want %v", got.Min, ms(tt.wantMin))
			}
			if !near(got.Last, ms(tt.wantLast), tol) {
				t.Errorf("Last = %v, want %v", got.Last, ms(tt.wantLast))
			}
		})
	}
}

func TestEstimatorWindowedMin(t *testing.T) {
	cfg := EstimatorConfig{MinWindow: 10 * time.Second}
	tests := []struct {
		name  string
		steps []step
		want  float64
	}{
		{"min inside window", []step{{0, 30}, {2, 10}, {4, 20}}, 10},
		{"old min expires", []step{{0, 5}, {2, 30}, {12.5, 20}}, 20},
		{"expired min replaced by younger larger one", []step{{0, 5}, {5, 30}, {11, 40}}, 30},
		{"newest sample always counts", []step{{0, 5}, {100, 50}}, 50},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := run(t, cfg, tt.steps).Min; got != ms(tt.want) {
				t.Fatalf("Min = %v, want %v", got, ms(tt.want))
			}
		})
	}
}

func TestEstimatorHealth(t *testing.T) {
	cfg := EstimatorConfig{Rise: 2, Fall: 3}
	tests := []struct {
		name  string
		steps []step
		want  Health
	}{
		{"no probes", nil, HealthUnknown},
		{"one success is not enough", every2s(10), HealthUnknown},
		{"rise successes mark up", every2s(10, 10), HealthUp},
		{"two failures keep up", every2s(10, 10, -1, -1), HealthUp},
		{"fall failures mark down", every2s(10, 10, -1, -1, -1), HealthDown},
		{"interrupted failures stay up", every2s(10, 10, -1, -1, 10, -1, -1), HealthUp},
		{"one success after down is not enough", every2s(-1, -1, -1, 10), HealthDown},
		{"rise after down marks up", every2s(-1, -1, -1, 10, 10), HealthUp},
		{"down from unknown", every2s(-1, -1, -1), HealthDown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := run(t, cfg, tt.steps)
			if got.Health != tt.want {
				t.Errorf("Health = %v, want %v", got.Health, tt.want)
			}
			if got.Probes != len(tt.steps) {
				t.Errorf("Probes = %d, want %d", got.Probes, len(tt.steps))
			}
		})
	}
}

func TestEstimatorLoss(t *testing.T) {
	cfg := EstimatorConfig{LossDecay: 10 * time.Second}
	w := math.Exp(-0.2) // weight kept per 2 s probe
	tests := []struct {
		name  string
		steps []step
		want  float64
	}{
		{"no loss", every2s(10, 10, 10), 0},
		{"first probe carries no weight", every2s(-1), 0},
		{"one loss", every2s(10, -1), 1 - w},
		{"loss decays", every2s(10, -1, 10, 10), (1 - w) * w * w},
		{"two losses add", every2s(10, -1, -1), (1-w)*w + (1 - w)},
		{"gap weighs more", []step{{0, 10}, {20, -1}}, 1 - math.Exp(-2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := run(t, cfg, tt.steps).Loss; math.Abs(got-tt.want) > 1e-9 {
				t.Fatalf("Loss = %v, want %v", got, tt.want)
			}
		})
	}
	// Sustained 50% loss converges to 50%.
	var vals []float64
	for i := range 2000 {
		vals = append(vals, []float64{10, -1}[i%2])
	}
	if got := run(t, EstimatorConfig{}, every2s(vals...)).Loss; math.Abs(got-0.5) > 0.02 {
		t.Fatalf("sustained loss estimate %v, want ≈0.5", got)
	}
}

func TestEstimatorJitter(t *testing.T) {
	// Alternating 10/20 ms: |D| = 10 ms every step, J → 10 ms.
	var vals []float64
	for i := range 400 {
		vals = append(vals, 10+10*float64(i%2))
	}
	if got := run(t, EstimatorConfig{}, every2s(vals...)).Jitter; !near(got, ms(10), 10*time.Microsecond) {
		t.Fatalf("Jitter = %v, want ≈10ms", got)
	}
	if got := run(t, EstimatorConfig{}, every2s(10, 10, 10, 10)).Jitter; got != 0 {
		t.Fatalf("steady Jitter = %v, want 0", got)
	}
}

func TestEstimatorHealthSince(t *testing.T) {
	got := run(t, EstimatorConfig{Rise: 2, Fall: 2}, every2s(10, 10, 10, -1, -1, -1))
	if got.Health != HealthDown || !got.HealthSince.Equal(t0.Add(8*time.Second)) {
		t.Fatalf("Health %v since %v, want down since t0+8s", got.Health, got.HealthSince.Sub(t0))
	}
	if !got.LastSuccess.Equal(t0.Add(4*time.Second)) || !got.Stale(t0.Add(20*time.Second), 5*time.Second) {
		t.Fatalf("LastSuccess %v / staleness wrong", got.LastSuccess.Sub(t0))
	}
}

func TestEstimatorRejects(t *testing.T) {
	e, _ := NewEstimator(EstimatorConfig{})
	if err := e.Observe(t0, -time.Millisecond, nil); !errors.Is(err, ErrBadSample) {
		t.Fatalf("negative rtt: err = %v", err)
	}
	if e.Estimate().Probes != 0 {
		t.Fatal("rejected sample was counted")
	}
	for _, bad := range []EstimatorConfig{{LossDecay: -1}, {Rise: -1}, {Fall: -1}, {DecayTime: -1}, {MinWindow: -1}} {
		if _, err := NewEstimator(bad); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
}

func TestMedian3(t *testing.T) {
	for _, c := range [][4]time.Duration{{1, 2, 3, 2}, {3, 2, 1, 2}, {2, 3, 1, 2}, {1, 3, 2, 2}, {2, 1, 3, 2}, {3, 1, 2, 2}, {5, 5, 1, 5}} {
		if got := median3([3]time.Duration{c[0], c[1], c[2]}, 3); got != c[3] {
			t.Errorf("median3(%v) = %v, want %v", c[:3], got, c[3])
		}
	}
}

func BenchmarkEstimatorObserve(b *testing.B) {
	e, _ := NewEstimator(EstimatorConfig{})
	at := t0
	for i := range b.N {
		at = at.Add(2 * time.Second)
		_ = e.Observe(at, ms(20+float64(i%7)), nil)
	}
}

// TestEstimateCountsFailuresInARow: Estimate.Failures is the run of
// failed probes since the last success (what the timeout backs off on).
func TestEstimateCountsFailuresInARow(t *testing.T) {
	e, err := NewEstimator(EstimatorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(0, 0)
	for i, c := range []struct {
		fail bool
		want int
	}{{false, 0}, {true, 1}, {true, 2}, {false, 0}, {true, 1}} {
		var perr error
		if c.fail {
			perr = ErrTimeout
		}
		at = at.Add(250 * time.Millisecond)
		if err := e.Observe(at, 3*time.Millisecond, perr); err != nil {
			t.Fatal(err)
		}
		if got := e.Estimate().Failures; got != c.want {
			t.Fatalf("probe %d: %d failures in a row, want %d", i, got, c.want)
		}
	}
}
