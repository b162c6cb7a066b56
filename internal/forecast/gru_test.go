package forecast

import (
	"math"
	"math/rand/v2"
	"testing"
)

// gruLoss is ½ Σ (out − target)² over every step and output.
func gruLoss(g *GRU, tape *GRUTape, targets []float64) float64 {
	g.Forward(tape)
	l := 0.0
	for i, t := range targets {
		d := tape.out[i] - t
		l += 0.5 * d * d
	}
	return l
}

// TestGRUGradientCheck compares Backward with central finite differences
// for every parameter, on random weights, inputs and targets.
func TestGRUGradientCheck(t *testing.T) {
	for _, tc := range []struct {
		name               string
		in, hid, out, step int
	}{
		{"tiny", 1, 2, 1, 3},
		{"hybrid-shaped", gruIn, 6, 4, 8},
		{"long", 3, 5, 2, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, 11))
			g := NewGRU(tc.in, tc.hid, tc.out, 3)
			for i := range g.P {
				g.P[i] = rng.NormFloat64() * 0.5 // larger than the init so every gate is exercised
			}
			var tape GRUTape
			g.Prepare(&tape, tc.step)
			for k := 0; k < tc.step; k++ {
				for i := range tape.Input(k, tc.in) {
					tape.Input(k, tc.in)[i] = rng.NormFloat64()
				}
			}
			targets := make([]float64, tc.step*tc.out)
			for i := range targets {
				targets[i] = rng.NormFloat64()
			}
			g.Forward(&tape)
			dout := make([]float64, len(targets))
			for i := range dout {
				dout[i] = tape.out[i] - targets[i]
			}
			grad := make([]float64, g.NumParams())
			g.Backward(&tape, dout, grad)
			const eps = 1e-6
			worst := 0.0
			for i := range g.P {
				orig := g.P[i]
				g.P[i] = orig + eps
				lp := gruLoss(g, &tape, targets)
				g.P[i] = orig - eps
				lm := gruLoss(g, &tape, targets)
				g.P[i] = orig
				num := (lp - lm) / (2 * eps)
				rel := math.Abs(num-grad[i]) / math.Max(1e-6, math.Abs(num)+math.Abs(grad[i]))
				worst = math.Max(worst, rel)
				if rel > 1e-4 {
					t.Errorf("param %d: analytic %.8g numeric %.8g (rel %.2g)", i, grad[i], num, rel)
				}
			}
			t.Logf("%d parameters, worst relative error %.2g", g.NumParams(), worst)
		})
	}
}

// TestGRUBackwardAccumulates checks that Backward adds to grad (the
// hybrid sums gradients) rather than overwriting it.
func TestGRUBackwardAccumulates(t *testing.T) {
	g := NewGRU(2, 3, 2, 1)
	var tape GRUTape
	g.Prepare(&tape, 4)
	for i := range tape.x {
		tape.x[i] = float64(i%3) - 1
	}
	g.Forward(&tape)
	dout := make([]float64, 8)
	for i := range dout {
		dout[i] = 0.1 * float64(i+1)
	}
	once := make([]float64, g.NumParams())
	g.Backward(&tape, dout, once)
	twice := make([]float64, g.NumParams())
	g.Backward(&tape, dout, twice)
	g.Backward(&tape, dout, twice)
	for i := range once {
		if math.Abs(twice[i]-2*once[i]) > 1e-12 {
			t.Fatalf("param %d: %v after two passes, %v after one", i, twice[i], once[i])
		}
	}
}

// TestGRULearnsAR1 trains the network online, as the hybrid does, on an
// AR(1) process and checks its one-step predictions approach the optimal
// ones (error variance close to the innovation variance).
func TestGRULearnsAR1(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const phi, steps, L = 0.8, 3000, 12
	x := make([]float64, steps)
	for i := 1; i < steps; i++ {
		x[i] = phi*x[i-1] + 0.5*rng.NormFloat64()
	}
	g := NewGRU(1, 8, 1, 5)
	opt := NewAdam(g.NumParams(), 0.01)
	var tape GRUTape
	grad := make([]float64, g.NumParams())
	dout := make([]float64, L)
	se, n := 0.0, 0
	for end := L; end < steps; end++ {
		g.Prepare(&tape, L)
		for k := 0; k < L; k++ {
			tape.Input(k, 1)[0] = x[end-L+k]
		}
		g.Forward(&tape)
		// The last output predicts x[end] (not yet used for training).
		if end > steps-1000 {
			d := tape.Output(L-1, 1)[0] - x[end]
			se += d * d
			n++
		}
		clear(grad)
		for k := 0; k < L-1; k++ {
			dout[k] = tape.Output(k, 1)[0] - x[end-L+k+1]
		}
		dout[L-1] = 0
		g.Backward(&tape, dout, grad)
		opt.Step(g.P, grad)
	}
	mse := se / float64(n)
	// Innovation variance is 0.25; predicting 0 would cost 0.25/(1-0.64) ≈ 0.69.
	if mse > 0.36 {
		t.Fatalf("one-step MSE %.3f, want close to the innovation variance 0.25", mse)
	}
	t.Logf("one-step MSE %.3f (optimum 0.25, zero forecast 0.69)", mse)
}

func TestAdamMinimisesQuadratic(t *testing.T) {
	p := []float64{3, -2}
	a := NewAdam(2, 0.1)
	g := make([]float64, 2)
	for i := 0; i < 500; i++ {
		g[0], g[1] = 2*(p[0]-1), 4*(p[1]+0.5)
		a.Step(p, g)
	}
	if math.Abs(p[0]-1) > 1e-2 || math.Abs(p[1]+0.5) > 1e-2 {
		t.Fatalf("Adam ended at %v, want [1 -0.5]", p)
	}
}

// ForwardLast skips the read-outs before the last step (a forecast with
// no gradient step needs only that one); the states and the last read-out
// must be Forward's to the bit, or the forecasts would change with the
// training schedule.
func TestGRUForwardLast(t *testing.T) {
	for _, tc := range []struct {
		name               string
		in, hid, out, step int
	}{
		{"one step", gruIn, 12, 24, 1},
		{"hybrid-shaped", gruIn, 12, 24, 24},
		{"odd", 3, 5, 2, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGRU(tc.in, tc.hid, tc.out, 7)
			rng := rand.New(rand.NewPCG(3, 4))
			for i := range g.P {
				g.P[i] += 0.3 * rng.NormFloat64()
			}
			var full, last GRUTape
			g.Prepare(&full, tc.step)
			g.Prepare(&last, tc.step)
			for s := 0; s < tc.step; s++ {
				for i := range full.Input(s, tc.in) {
					v := rng.NormFloat64()
					full.Input(s, tc.in)[i], last.Input(s, tc.in)[i] = v, v
				}
			}
			g.Forward(&full)
			g.ForwardLast(&last)
			for i, v := range full.h {
				if math.Float64bits(v) != math.Float64bits(last.h[i]) {
					t.Fatalf("state %d: %v with every read-out, %v with the last only", i, v, last.h[i])
				}
			}
			a, b := full.Output(tc.step-1, tc.out), last.Output(tc.step-1, tc.out)
			for i := range a {
				if math.Float64bits(a[i]) != math.Float64bits(b[i]) {
					t.Fatalf("last read-out %d: %v vs %v", i, a[i], b[i])
				}
			}
		})
	}
}
