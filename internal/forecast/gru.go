package forecast

import (
	"math"
	"math/rand/v2"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas64"
)

// GRU is a single-layer gated recurrent unit with a linear read-out, the
// short-term part of the hybrid. All parameters live in one flat slice P
// so optimisers, snapshots and gradient checks treat them uniformly:
//
//	Wx (3H×In) | Wh (3H×H) | bx (3H) | bh (3H) | Wo (Out×H) | bo (Out)
//
// with gate blocks ordered reset, update, candidate (the PyTorch
// convention: the reset gate multiplies Wh·h + bh inside the candidate).
type GRU struct {
	In, Hid, Out int
	P            []float64
}

// NewGRU returns a GRU with Glorot-uniform weights drawn from a
// deterministic seed (so backtests are reproducible) and zero biases,
// except the update gate bias, set to 1 so early on the state is kept.
func NewGRU(in, hid, out int, seed uint64) *GRU {
	g := &GRU{In: in, Hid: hid, Out: out}
	g.P = make([]float64, g.NumParams())
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	fill := func(s []float64, fanIn, fanOut int) {
		lim := math.Sqrt(6 / float64(fanIn+fanOut))
		for i := range s {
			s[i] = (2*rng.Float64() - 1) * lim
		}
	}
	o := g.offsets()
	fill(g.P[o.wx:o.wh], in, hid)
	fill(g.P[o.wh:o.bx], hid, hid)
	for i := hid; i < 2*hid; i++ {
		g.P[o.bx+i] = 1
	}
	fill(g.P[o.wo:o.bo], hid, out)
	// A small read-out: the network starts by predicting ~0 (no
	// correction to the seasonal model) and grows from there.
	for i := o.wo; i < o.bo; i++ {
		g.P[i] *= 0.1
	}
	return g
}

type gruOffsets struct{ wx, wh, bx, bh, wo, bo, end int }

func (g *GRU) offsets() gruOffsets {
	h3 := 3 * g.Hid
	var o gruOffsets
	o.wx = 0
	o.wh = o.wx + h3*g.In
	o.bx = o.wh + h3*g.Hid
	o.bh = o.bx + h3
	o.wo = o.bh + h3
	o.bo = o.wo + g.Out*g.Hid
	o.end = o.bo + g.Out
	return o
}

// NumParams is the number of trainable parameters.
func (g *GRU) NumParams() int { return g.offsets().end }

// GRUTape holds the activations of one forward pass for backpropagation
// through time; reuse it across calls to avoid allocation.
type GRUTape struct {
	T              int
	x              []float64 // T×In inputs
	h              []float64 // (T+1)×H states, h[0] is the initial state
	r, z, n, g     []float64 // T×H gate activations; g = Wh_n·h + bh_n
	out            []float64 // T×Out
	ax, ah         []float64 // scratch 3H
	dh, dax, dah   []float64 // scratch
	dhNext, dhFrom []float64
}

func (t *GRUTape) ensure(g *GRU, steps int) {
	t.T = steps
	need := func(s []float64, n int) []float64 {
		if cap(s) < n {
			return make([]float64, n)
		}
		return s[:n]
	}
	H := g.Hid
	t.x = need(t.x, steps*g.In)
	t.h = need(t.h, (steps+1)*H)
	t.r = need(t.r, steps*H)
	t.z = need(t.z, steps*H)
	t.n = need(t.n, steps*H)
	t.g = need(t.g, steps*H)
	t.out = need(t.out, steps*g.Out)
	t.ax = need(t.ax, 3*H)
	t.ah = need(t.ah, 3*H)
	t.dh = need(t.dh, H)
	t.dax = need(t.dax, 3*H)
	t.dah = need(t.dah, 3*H)
	t.dhNext = need(t.dhNext, H)
	t.dhFrom = need(t.dhFrom, H)
}

// Input returns the slot for the input of step i (fill before Forward).
func (t *GRUTape) Input(i, in int) []float64 { return t.x[i*in : (i+1)*in] }

// Output returns the read-out of step i after Forward.
func (t *GRUTape) Output(i, out int) []float64 { return t.out[i*out : (i+1)*out] }

// Prepare sizes the tape for steps steps and returns it.
func (g *GRU) Prepare(t *GRUTape, steps int) { t.ensure(g, steps) }

func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// Forward runs the network over the inputs already placed in the tape,
// starting from a zero state.
func (g *GRU) Forward(t *GRUTape) { g.forward(t, false) }

// ForwardLast is Forward when only the last step's read-out is wanted (a
// forecast without a gradient step): the states are the same, the other
// steps' read-outs are left unset — a third of the pass at 24 outputs.
func (g *GRU) ForwardLast(t *GRUTape) { g.forward(t, true) }

func (g *GRU) forward(t *GRUTape, lastOnly bool) {
	H, In, O := g.Hid, g.In, g.Out
	o := g.offsets()
	wx := blas64.General{Rows: 3 * H, Cols: In, Stride: In, Data: g.P[o.wx:o.wh]}
	wh := blas64.General{Rows: 3 * H, Cols: H, Stride: H, Data: g.P[o.wh:o.bx]}
	wo := blas64.General{Rows: O, Cols: H, Stride: H, Data: g.P[o.wo:o.bo]}
	clear(t.h[:H])
	for s := 0; s < t.T; s++ {
		x := t.x[s*In : (s+1)*In]
		hp := t.h[s*H : (s+1)*H]
		hn := t.h[(s+1)*H : (s+2)*H]
		copy(t.ax, g.P[o.bx:o.bh])
		blas64.Gemv(blas.NoTrans, 1, wx, blas64.Vector{N: In, Inc: 1, Data: x}, 1, blas64.Vector{N: 3 * H, Inc: 1, Data: t.ax})
		copy(t.ah, g.P[o.bh:o.wo])
		blas64.Gemv(blas.NoTrans, 1, wh, blas64.Vector{N: H, Inc: 1, Data: hp}, 1, blas64.Vector{N: 3 * H, Inc: 1, Data: t.ah})
		r := t.r[s*H : (s+1)*H]
		z := t.z[s*H : (s+1)*H]
		n := t.n[s*H : (s+1)*H]
		gg := t.g[s*H : (s+1)*H]
		for k := 0; k < H; k++ {
			r[k] = sigmoid(t.ax[k] + t.ah[k])
			z[k] = sigmoid(t.ax[H+k] + t.ah[H+k])
			gg[k] = t.ah[2*H+k]
			n[k] = math.Tanh(t.ax[2*H+k] + r[k]*gg[k])
			hn[k] = (1-z[k])*n[k] + z[k]*hp[k]
		}
		if lastOnly && s < t.T-1 {
			continue
		}
		out := t.out[s*O : (s+1)*O]
		copy(out, g.P[o.bo:o.end])
		blas64.Gemv(blas.NoTrans, 1, wo, blas64.Vector{N: H, Inc: 1, Data: hn}, 1, blas64.Vector{N: O, Inc: 1, Data: out})
	}
}

// Backward accumulates into grad (len NumParams) the gradient of a loss
// whose derivative with respect to each output is dOut (T×Out, same
// layout as the outputs), through time back to the zero initial state.
func (g *GRU) Backward(t *GRUTape, dOut []float64, grad []float64) {
	H, In, O := g.Hid, g.In, g.Out
	o := g.offsets()
	wh := blas64.General{Rows: 3 * H, Cols: H, Stride: H, Data: g.P[o.wh:o.bx]}
	wo := blas64.General{Rows: O, Cols: H, Stride: H, Data: g.P[o.wo:o.bo]}
	gwx := blas64.General{Rows: 3 * H, Cols: In, Stride: In, Data: grad[o.wx:o.wh]}
	gwh := blas64.General{Rows: 3 * H, Cols: H, Stride: H, Data: grad[o.wh:o.bx]}
	gwo := blas64.General{Rows: O, Cols: H, Stride: H, Data: grad[o.wo:o.bo]}
	clear(t.dhNext)
	for s := t.T - 1; s >= 0; s-- {
		x := t.x[s*In : (s+1)*In]
		hp := t.h[s*H : (s+1)*H]
		hn := t.h[(s+1)*H : (s+2)*H]
		r := t.r[s*H : (s+1)*H]
		z := t.z[s*H : (s+1)*H]
		n := t.n[s*H : (s+1)*H]
		gg := t.g[s*H : (s+1)*H]
		dout := dOut[s*O : (s+1)*O]
		// Read-out gradients.
		blas64.Ger(1, blas64.Vector{N: O, Inc: 1, Data: dout}, blas64.Vector{N: H, Inc: 1, Data: hn}, gwo)
		for k := 0; k < O; k++ {
			grad[o.bo+k] += dout[k]
		}
		copy(t.dh, t.dhNext)
		blas64.Gemv(blas.Trans, 1, wo, blas64.Vector{N: O, Inc: 1, Data: dout}, 1, blas64.Vector{N: H, Inc: 1, Data: t.dh})
		for k := 0; k < H; k++ {
			dh := t.dh[k]
			dn := dh * (1 - z[k])
			dz := dh * (hp[k] - n[k])
			t.dhFrom[k] = dh * z[k]
			dan := dn * (1 - n[k]*n[k])
			dr := dan * gg[k]
			t.dax[k] = dr * r[k] * (1 - r[k])
			t.dax[H+k] = dz * z[k] * (1 - z[k])
			t.dax[2*H+k] = dan
			t.dah[k] = t.dax[k]
			t.dah[H+k] = t.dax[H+k]
			t.dah[2*H+k] = dan * r[k]
		}
		blas64.Ger(1, blas64.Vector{N: 3 * H, Inc: 1, Data: t.dax}, blas64.Vector{N: In, Inc: 1, Data: x}, gwx)
		blas64.Ger(1, blas64.Vector{N: 3 * H, Inc: 1, Data: t.dah}, blas64.Vector{N: H, Inc: 1, Data: hp}, gwh)
		for k := 0; k < 3*H; k++ {
			grad[o.bx+k] += t.dax[k]
			grad[o.bh+k] += t.dah[k]
		}
		copy(t.dhNext, t.dhFrom)
		blas64.Gemv(blas.Trans, 1, wh, blas64.Vector{N: 3 * H, Inc: 1, Data: t.dah}, 1, blas64.Vector{N: H, Inc: 1, Data: t.dhNext})
	}
}

// Adam is the Adam optimiser (Kingma & Ba) with global-norm gradient
// clipping; its moments are part of the model state.
type Adam struct {
	LR, Beta1, Beta2, Eps, Clip float64
	M, V                        []float64
	Steps                       float64
}

// NewAdam returns Adam for n parameters with the usual constants.
func NewAdam(n int, lr float64) *Adam {
	return &Adam{LR: lr, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Clip: 5, M: make([]float64, n), V: make([]float64, n)}
}

// Step applies one update of params from grad (which it may rescale).
func (a *Adam) Step(params, grad []float64) {
	norm := 0.0
	for _, g := range grad {
		norm += g * g
	}
	norm = math.Sqrt(norm)
	scale := 1.0
	if a.Clip > 0 && norm > a.Clip {
		scale = a.Clip / norm
	}
	a.Steps++
	c1 := 1 - math.Pow(a.Beta1, a.Steps)
	c2 := 1 - math.Pow(a.Beta2, a.Steps)
	b1, b2, lr, eps := a.Beta1, a.Beta2, a.LR, a.Eps
	M, V, params := a.M[:len(grad)], a.V[:len(grad)], params[:len(grad)]
	for i, g := range grad {
		g *= scale
		m := b1*M[i] + (1-b1)*g
		v := b2*V[i] + (1-b2)*g*g
		M[i], V[i] = m, v
		params[i] -= lr * (m / c1) / (math.Sqrt(v/c2) + eps)
	}
}
