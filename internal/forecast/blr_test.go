package forecast

import (
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"
)

// blrProblem is a random regression with a known design.
func blrProblem(seed uint64, n, p int) (X *mat.Dense, y []float64) {
	rng := rand.New(rand.NewPCG(seed, 99))
	X = mat.NewDense(n, p, nil)
	y = make([]float64, n)
	beta := make([]float64, p)
	for j := range beta {
		beta[j] = rng.NormFloat64()
	}
	for i := 0; i < n; i++ {
		X.Set(i, 0, 1)
		for j := 1; j < p; j++ {
			X.Set(i, j, rng.NormFloat64())
		}
		y[i] = mat.Dot(X.RowView(i), mat.NewVecDense(p, beta)) + 0.3*rng.NormFloat64()
	}
	return X, y
}

// closedForm computes the NIG posterior directly with dense linear algebra:
// Λn = XᵀX + Λ0, βn = Λn⁻¹Xᵀy, an = a0 + n/2, bn = b0 + ½(yᵀy − βnᵀΛnβn).
func closedForm(X *mat.Dense, y []float64, prec0 []float64, a0, b0 float64) (beta []float64, an, bn float64, lamN *mat.SymDense) {
	n, p := X.Dims()
	lamN = mat.NewSymDense(p, nil)
	lamN.SymOuterK(1, X.T())
	for j := 0; j < p; j++ {
		lamN.SetSym(j, j, lamN.At(j, j)+prec0[j])
	}
	var xty mat.VecDense
	xty.MulVec(X.T(), mat.NewVecDense(n, y))
	var b mat.VecDense
	if err := b.SolveVec(lamN, &xty); err != nil {
		panic(err)
	}
	yy := mat.Dot(mat.NewVecDense(n, y), mat.NewVecDense(n, y))
	an = a0 + float64(n)/2
	bn = b0 + 0.5*(yy-mat.Dot(&b, &xty))
	return b.RawVector().Data, an, bn, lamN
}

func TestBLRMatchesClosedForm(t *testing.T) {
	for _, tc := range []struct {
		name string
		n, p int
		prec float64
	}{
		{"well-determined", 200, 5, 1},
		{"more features than points", 4, 8, 0.5},
		{"strong prior", 50, 6, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			X, y := blrProblem(uint64(tc.n*tc.p), tc.n, tc.p)
			b := NewBLR(tc.p)
			for j := range b.Prec0 {
				b.Prec0[j] = tc.prec * float64(j+1)
			}
			b.A0, b.B0 = 2, 0.5
			for i := 0; i < tc.n; i++ {
				b.Add(X.RawRowView(i), y[i], 1)
			}
			if err := b.Solve(); err != nil {
				t.Fatal(err)
			}
			beta, an, bn, lamN := closedForm(X, y, b.Prec0, b.A0, b.B0)
			for j := range beta {
				if math.Abs(beta[j]-b.Beta[j]) > 1e-9*(1+math.Abs(beta[j])) {
					t.Errorf("beta[%d] = %v, closed form %v", j, b.Beta[j], beta[j])
				}
			}
			if math.Abs(an-b.An) > 1e-12 || math.Abs(bn-b.Bn) > 1e-9*bn {
				t.Errorf("an, bn = %v, %v; closed form %v, %v", b.An, b.Bn, an, bn)
			}
			// Predictive: Student-t with scale² = bn/an (1 + xᵀΛn⁻¹x).
			x := make([]float64, tc.p)
			for j := range x {
				x[j] = float64(j%3) - 0.5
			}
			var inv mat.Dense
			if err := inv.Inverse(lamN); err != nil {
				t.Fatal(err)
			}
			xv := mat.NewVecDense(tc.p, x)
			lev := mat.Inner(xv, &inv, xv)
			loc, scale, dof := b.Predict(x)
			if want := math.Sqrt(bn / an * (1 + lev)); math.Abs(scale-want) > 1e-9*want {
				t.Errorf("predictive scale %v, want %v", scale, want)
			}
			if math.Abs(loc-mat.Dot(xv, mat.NewVecDense(tc.p, beta))) > 1e-9 || dof != 2*an {
				t.Errorf("predictive location %v dof %v", loc, dof)
			}
		})
	}
}

// TestBLREvidenceMatchesMarginal checks LogEvidence against the marginal
// likelihood written as a multivariate Student-t: y ~ t_{2a0}(0, (b0/a0)(I + X Λ0⁻¹ Xᵀ)).
func TestBLREvidenceMatchesMarginal(t *testing.T) {
	const n, p = 12, 3
	X, y := blrProblem(5, n, p)
	b := NewBLR(p)
	b.Prec0 = []float64{0.5, 2, 3}
	b.A0, b.B0 = 3, 0.7
	for i := 0; i < n; i++ {
		b.Add(X.RawRowView(i), y[i], 1)
	}
	if err := b.Solve(); err != nil {
		t.Fatal(err)
	}
	// Σ = (b0/a0)(I + X Λ0⁻¹ Xᵀ)
	sig := mat.NewSymDense(n, nil)
	for i := 0; i < n; i++ {
		for j := 0; j <= i; j++ {
			v := 0.0
			for k := 0; k < p; k++ {
				v += X.At(i, k) * X.At(j, k) / b.Prec0[k]
			}
			if i == j {
				v++
			}
			sig.SetSym(i, j, v*b.B0/b.A0)
		}
	}
	var chol mat.Cholesky
	if !chol.Factorize(sig) {
		t.Fatal("Σ not positive definite")
	}
	yv := mat.NewVecDense(n, y)
	var sy mat.VecDense
	if err := chol.SolveVecTo(&sy, yv); err != nil {
		t.Fatal(err)
	}
	maha := mat.Dot(yv, &sy)
	nu := 2 * b.A0
	lg1, _ := math.Lgamma((nu + n) / 2)
	lg2, _ := math.Lgamma(nu / 2)
	want := lg1 - lg2 - n/2.0*math.Log(nu*math.Pi) - 0.5*chol.LogDet() - (nu+n)/2*math.Log1p(maha/nu)
	if got := b.LogEvidence(); math.Abs(got-want) > 1e-9*math.Abs(want) {
		t.Fatalf("log evidence %v, multivariate Student-t %v", got, want)
	}
}

// TestBLRSlidingWindow checks that removing observations gives exactly the
// statistics of never having added them (the hybrid's sliding window).
func TestBLRSlidingWindow(t *testing.T) {
	X, y := blrProblem(3, 100, 4)
	slide, fresh := NewBLR(4), NewBLR(4)
	for i := 0; i < 100; i++ {
		slide.Add(X.RawRowView(i), y[i], 1)
		if i >= 30 {
			slide.Add(X.RawRowView(i-30), y[i-30], -1)
		}
	}
	for i := 70; i < 100; i++ {
		fresh.Add(X.RawRowView(i), y[i], 1)
	}
	if err := slide.Solve(); err != nil {
		t.Fatal(err)
	}
	if err := fresh.Solve(); err != nil {
		t.Fatal(err)
	}
	for j := range fresh.Beta {
		if math.Abs(fresh.Beta[j]-slide.Beta[j]) > 1e-9 {
			t.Fatalf("beta differs after sliding: %v vs %v", slide.Beta, fresh.Beta)
		}
	}
	if math.Abs(fresh.Bn-slide.Bn) > 1e-8 || fresh.N != slide.N {
		t.Fatalf("bn/n differ: %v/%v vs %v/%v", slide.Bn, slide.N, fresh.Bn, fresh.N)
	}
}

// TestBLREvidencePicksTrueComplexity: with data from a smooth profile the
// evidence prefers a moderate prior over an extreme one.
func TestBLREvidencePrefersTruth(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	const n, p = 300, 6
	X := mat.NewDense(n, p, nil)
	y := make([]float64, n)
	for i := 0; i < n; i++ {
		X.Set(i, 0, 1)
		for j := 1; j < p; j++ {
			X.Set(i, j, rng.NormFloat64())
		}
		y[i] = 2 + X.At(i, 1) + 0.1*rng.NormFloat64() // only one feature matters
	}
	ev := func(prec float64) float64 {
		b := NewBLR(p)
		b.Prec0[0] = 1e-6
		for j := 1; j < p; j++ {
			b.Prec0[j] = prec
		}
		for i := 0; i < n; i++ {
			b.Add(X.RawRowView(i), y[i], 1)
		}
		if err := b.Solve(); err != nil {
			t.Fatal(err)
		}
		return b.LogEvidence()
	}
	if mid, tiny := ev(1), ev(1e6); mid <= tiny {
		t.Fatalf("evidence with a usable prior %v not above a prior that forbids the signal %v", mid, tiny)
	}
}

// cholSolve (the stacker's solver: a K×K system, its lower triangle
// factorised in place) against gonum's Cholesky, on random positive
// definite systems of every size the stacker has and a few more, and its
// refusal of a matrix that is not positive definite.
func TestCholSolveMatchesGonum(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	for K := 1; K <= 20; K++ {
		A := mat.NewSymDense(K, nil)
		G := mat.NewDense(K+3, K, nil)
		for i := range K + 3 {
			for j := range K {
				G.Set(i, j, rng.NormFloat64())
			}
		}
		A.SymOuterK(1, G.T())
		L := make([]float64, K*K)
		b := make([]float64, K)
		for i := range K {
			A.SetSym(i, i, A.At(i, i)+0.1)
			b[i] = rng.NormFloat64()
			for j := 0; j <= i; j++ {
				L[i*K+j] = A.At(i, j)
			}
			for j := i + 1; j < K; j++ {
				L[i*K+j] = math.NaN() // the upper triangle is not read
			}
		}
		var ch mat.Cholesky
		if !ch.Factorize(A) {
			t.Fatalf("K=%d: gonum refused the matrix", K)
		}
		var want mat.VecDense
		if err := ch.SolveVecTo(&want, mat.NewVecDense(K, b)); err != nil {
			t.Fatal(err)
		}
		w := make([]float64, K)
		if !cholSolve(L, K, b, w) {
			t.Fatalf("K=%d: refused a positive definite matrix", K)
		}
		for i := range K {
			if d := math.Abs(w[i] - want.AtVec(i)); d > 1e-9*(1+math.Abs(want.AtVec(i))) {
				t.Errorf("K=%d: w[%d] = %v, want %v", K, i, w[i], want.AtVec(i))
			}
		}
	}
	// [[1, 2], [2, 1]] has eigenvalues 3 and −1.
	if cholSolve([]float64{1, 0, 2, 1}, 2, []float64{1, 1}, make([]float64, 2)) {
		t.Error("solved a system that is not positive definite")
	}
}
