package forecast

import (
	"errors"
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/gonum/lapack/lapack64"
)

// ErrNotPositiveDefinite is returned when a posterior precision cannot be
// factorised (only possible with a degenerate prior).
var ErrNotPositiveDefinite = errors.New("posterior precision not positive definite")

// BLR is Bayesian linear regression with the conjugate normal-inverse-gamma
// prior
//
//	β | σ² ~ N(0, σ² Λ0⁻¹),  σ² ~ InvGamma(A0, B0),  y | β, σ² ~ N(xᵀβ, σ²)
//
// kept as sufficient statistics (Σxxᵀ, Σxy, Σy², n), so observations can be
// added and removed exactly (a sliding window) in O(P²). After Solve the
// posterior is NIG(β̂, Λn, An, Bn) and the predictive distribution of a new
// y at x is Student-t with 2An degrees of freedom, location xᵀβ̂ and
// scale² = Bn/An (1 + xᵀΛn⁻¹x).
type BLR struct {
	P     int
	S     []float64 // Σ x xᵀ, lower triangle packed by rows: (i, j≤i) at i(i+1)/2 + j
	U     []float64 // Σ x y
	YY    float64   // Σ y²
	N     float64   // number of observations
	Prec0 []float64 // diagonal of Λ0
	A0    float64
	B0    float64

	// Posterior, valid after Solve.
	Beta   []float64
	L      []float64 // lower Cholesky factor of Λn = S + Λ0 (valid until its buffer is reused)
	An, Bn float64
	tmp    []float64
}

// NewBLR returns an empty regression on p features with a unit prior.
func NewBLR(p int) *BLR {
	b := &BLR{
		P: p, S: make([]float64, p*(p+1)/2), U: make([]float64, p), Prec0: make([]float64, p),
		Beta: make([]float64, p), tmp: make([]float64, p),
		A0: 1, B0: 1e-6,
	}
	for i := range b.Prec0 {
		b.Prec0[i] = 1
	}
	return b
}

// Reset forgets every observation (the prior stays).
func (b *BLR) Reset() {
	clear(b.S)
	clear(b.U)
	b.YY, b.N = 0, 0
}

// Add adds (w = 1) or removes (w = -1) the observation (x, y). Other
// weights scale its influence.
func (b *BLR) Add(x []float64, y, w float64) {
	p := b.P
	for i := 0; i < p; i++ {
		xi := w * x[i]
		if xi == 0 {
			continue
		}
		off := i * (i + 1) / 2
		row := b.S[off : off+i+1]
		for j := range row {
			row[j] += xi * x[j]
		}
		b.U[i] += xi * y
	}
	b.YY += w * y * y
	b.N += w
}

// Solve computes the posterior.
func (b *BLR) Solve() error {
	if len(b.L) != b.P*b.P {
		b.L = make([]float64, b.P*b.P)
	}
	return b.SolveWith(b.L)
}

// SolveWith is Solve with the Cholesky factor written into buf (len P²),
// so many regressions can share one scratch buffer; L then aliases buf.
func (b *BLR) SolveWith(buf []float64) error {
	b.L = buf[:b.P*b.P]
	p := b.P
	for i := 0; i < p; i++ {
		copy(b.L[i*p:i*p+i+1], b.S[i*(i+1)/2:])
		b.L[i*p+i] += b.Prec0[i]
	}
	sym := blas64.Symmetric{N: p, Stride: p, Data: b.L, Uplo: blas.Lower}
	if _, ok := lapack64.Potrf(sym); !ok {
		return ErrNotPositiveDefinite
	}
	// Λn β = U by two triangular solves (cheaper than Potrs for one
	// right-hand side).
	copy(b.Beta, b.U)
	tri := blas64.Triangular{N: p, Stride: p, Data: b.L, Uplo: blas.Lower, Diag: blas.NonUnit}
	v := blas64.Vector{N: p, Inc: 1, Data: b.Beta}
	blas64.Trsv(blas.NoTrans, tri, v)
	blas64.Trsv(blas.Trans, tri, v)
	// βᵀΛnβ = βᵀU since Λnβ = U.
	fit := 0.0
	for i, v := range b.Beta {
		fit += v * b.U[i]
	}
	b.An = b.A0 + b.N/2
	b.Bn = b.B0 + 0.5*max(b.YY-fit, 0)
	return nil
}

// Mean is xᵀβ̂.
func (b *BLR) Mean(x []float64) float64 {
	s := 0.0
	for i, v := range b.Beta {
		s += v * x[i]
	}
	return s
}

// Sigma2 is the posterior mean-ish noise variance Bn/An.
func (b *BLR) Sigma2() float64 { return b.Bn / b.An }

// Leverage is xᵀΛn⁻¹x.
func (b *BLR) Leverage(x []float64) float64 {
	copy(b.tmp, x)
	tri := blas64.Triangular{N: b.P, Stride: b.P, Data: b.L, Uplo: blas.Lower, Diag: blas.NonUnit}
	blas64.Trsv(blas.NoTrans, tri, blas64.Vector{N: b.P, Inc: 1, Data: b.tmp})
	s := 0.0
	for _, v := range b.tmp {
		s += v * v
	}
	return s
}

// Predict returns the Student-t predictive distribution of y at x:
// location, scale and degrees of freedom.
func (b *BLR) Predict(x []float64) (loc, scale, dof float64) {
	return b.Mean(x), math.Sqrt(b.Bn / b.An * (1 + b.Leverage(x))), 2 * b.An
}

// LogEvidence is the log marginal likelihood log p(y | prior) of the
// observations, valid after Solve.
func (b *BLR) LogEvidence() float64 {
	p := b.P
	ld0, ldn := 0.0, 0.0
	for i := 0; i < p; i++ {
		ld0 += math.Log(b.Prec0[i])
		ldn += 2 * math.Log(b.L[i*p+i])
	}
	lgA0, _ := math.Lgamma(b.A0)
	lgAn, _ := math.Lgamma(b.An)
	return -b.N/2*math.Log(2*math.Pi) + 0.5*ld0 - 0.5*ldn +
		b.A0*math.Log(b.B0) - b.An*math.Log(b.Bn) + lgAn - lgA0
}
