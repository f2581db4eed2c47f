package kern

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestExpShiftSwiGLU: on every ISA path, ExpShift's and SwiGLU's values equal Expf's and
// Silu's bit for bit (the AVX2 exponential runs Expf's steps), edge inputs included (under- and
// overflow, ±0, NaN), with the sum of ExpShift checked against float64; lengths 0..40 cover the
// vector body and the scalar tail, and nothing past the end is written.
func TestExpShiftSwiGLU(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	edges := []float32{0, float32(math.Copysign(0, -1)), -87.3, -87.4, -100, 88.7, 88.8, 100, 1, -1,
		float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))}
	for _, isa := range ISAs() {
		restore := SetISA(isa)
		for n := 0; n <= 40; n++ {
			x := make([]float32, n+1)
			for i := range x {
				x[i] = float32(r.NormFloat64() * 30)
				if i < len(edges) && n > 20 {
					x[i] = edges[i]
				}
			}
			const m, s = 1.5, 0.125
			want := make([]float32, n)
			var wantSum float64
			for i := range want {
				want[i] = Expf((x[i] - m) * s)
				wantSum += float64(want[i])
			}
			last := x[n]
			got := append([]float32(nil), x...)
			sum := ExpShift(got[:n], m, s)
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("%s ExpShift n=%d [%d]: e^((%v-m)s) = %v, Expf %v", isa, n, i, x[i], got[i], want[i])
				}
			}
			if got[n] != last {
				t.Fatalf("%s ExpShift n=%d wrote past the end", isa, n)
			}
			if !math.IsNaN(wantSum) && math.Abs(float64(sum)-wantSum) > 1e-6*math.Abs(wantSum) {
				t.Fatalf("%s ExpShift n=%d: sum %v, want %v", isa, n, sum, wantSum)
			}

			g, u := x, randF32(r, n+1)
			out := randF32(r, n+1)
			end := out[n]
			SwiGLU(out[:n], g, u)
			for i := 0; i < n; i++ {
				w := Silu(g[i]) * u[i]
				if math.Float32bits(out[i]) != math.Float32bits(w) && !(math.IsNaN(float64(w)) && math.IsNaN(float64(out[i]))) {
					t.Fatalf("%s SwiGLU n=%d [%d]: silu(%v)·%v = %v, want %v", isa, n, i, g[i], u[i], out[i], w)
				}
			}
			if out[n] != end {
				t.Fatalf("%s SwiGLU n=%d wrote past the end", isa, n)
			}
		}
		restore()
	}
}

// TestDotsAxpyRows: Dots and AxpyRows against float64 sums for head sizes with and without a
// vector path (8..136 and 5) and row counts 0..9 (the 4-row body and its tail).
func TestDotsAxpyRows(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, isa := range ISAs() {
		restore := SetISA(isa)
		for _, dh := range []int{5, 8, 16, 24, 64, 72, 128, 136} {
			for n := 0; n <= 9; n++ {
				q, k := randF32(r, dh), randF32(r, n*dh)
				out := randF32(r, n+1)
				end := out[n]
				Dots(q, k, out[:n])
				for p := 0; p < n; p++ {
					var want, mag float64
					for d := range q {
						want += float64(q[d]) * float64(k[p*dh+d])
						mag += math.Abs(float64(q[d]) * float64(k[p*dh+d]))
					}
					if math.Abs(float64(out[p])-want) > 1e-6*(mag+1) {
						t.Fatalf("%s Dots dh=%d n=%d [%d] = %v, want %v", isa, dh, n, p, out[p], want)
					}
				}
				if out[n] != end {
					t.Fatalf("%s Dots dh=%d n=%d wrote past the end", isa, dh, n)
				}

				w := randF32(r, n)
				o := randF32(r, dh+1)
				o0 := append([]float32(nil), o...)
				AxpyRows(w, k, o[:dh])
				for d := 0; d < dh; d++ {
					want, mag := float64(o0[d]), math.Abs(float64(o0[d]))
					for p := range w {
						want += float64(w[p]) * float64(k[p*dh+d])
						mag += math.Abs(float64(w[p]) * float64(k[p*dh+d]))
					}
					if math.Abs(float64(o[d])-want) > 1e-6*(mag+1) {
						t.Fatalf("%s AxpyRows dh=%d n=%d [%d] = %v, want %v", isa, dh, n, d, o[d], want)
					}
				}
				if o[dh] != o0[dh] {
					t.Fatalf("%s AxpyRows dh=%d n=%d wrote past the end", isa, dh, n)
				}
			}
		}
		restore()
	}
}

// TestAdamW: the AdamW update on every ISA path equals, bit for bit, the formula evaluated in
// float64 and rounded op by op (tiny, huge and zero gradients and moments included), for
// lengths covering the vector body and its tail.
func TestAdamW(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	c := AdamWConsts{Decay: 1 - 1e-3*0.01, B1: 0.9, B2: 0.999, C1: 0.1, C2: 0.001, Step: 1e-3 / 0.1, InvSqrtBC2: 1 / 0.0447, Eps: 1e-8}
	f := func(x float64) float64 { return float64(float32(x)) } // round to float32
	for _, isa := range ISAs() {
		restore := SetISA(isa)
		for n := 0; n <= 27; n++ {
			p, g, m, v := randF32(r, n), randF32(r, n), randF32(r, n), randF32(r, n)
			for i := range v {
				v[i] = v[i] * v[i]
				if i == 3 {
					g[i], m[i], v[i] = 0, 0, 0
				}
				if i == 5 {
					g[i] = 1e-30
				}
				if i == 6 {
					g[i] = 3e18
				}
			}
			wp, wm, wv := make([]float32, n), make([]float32, n), make([]float32, n)
			for i := range p {
				gi := float64(g[i])
				mi := f(f(float64(c.B1)*float64(m[i])) + f(float64(c.C1)*gi))
				vi := f(f(float64(c.B2)*float64(v[i])) + f(f(float64(c.C2)*gi)*gi))
				d := f(f(f(math.Sqrt(vi))*float64(c.InvSqrtBC2)) + float64(c.Eps))
				wm[i], wv[i] = float32(mi), float32(vi)
				wp[i] = float32(f(float64(p[i])*float64(c.Decay)) - f(f(float64(c.Step)*mi)/d))
			}
			AdamW(p, g, m, v, c)
			for i := range p {
				if math.Float32bits(p[i]) != math.Float32bits(wp[i]) || m[i] != wm[i] || v[i] != wv[i] {
					t.Fatalf("%s n=%d [%d]: p %v m %v v %v, want %v %v %v", isa, n, i, p[i], m[i], v[i], wp[i], wm[i], wv[i])
				}
			}
		}
		restore()
	}
}

// TestSwiGLUBackward: on every ISA path, SwiGLUBackward's outputs are the pure-Go path's bits
// (edge inputs included), close to the float64 formula, whose gate derivative
// s·(1 + g·(1-s)) of silu is checked against central finite differences of silu itself;
// lengths 0..40 cover the vector body and the tail, and nothing past the end is written.
func TestSwiGLUBackward(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	silu := func(x float64) float64 { return x / (1 + math.Exp(-x)) }
	for _, x := range []float64{-6, -1.3, -0.2, 0, 0.7, 2.5, 9} {
		s := 1 / (1 + math.Exp(-x))
		const h = 1e-5
		if fd, an := (silu(x+h)-silu(x-h))/(2*h), s*(1+x*(1-s)); math.Abs(fd-an) > 1e-8 {
			t.Fatalf("silu'(%v): finite differences %v, formula %v", x, fd, an)
		}
	}
	edges := []float32{0, float32(math.Copysign(0, -1)), -87.4, -100, 88.8, 100, float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))}
	for n := 0; n <= 40; n++ {
		g, u, do := randF32(r, n), randF32(r, n), randF32(r, n)
		for i := range g {
			g[i] *= 4
			if i < len(edges) && n > 20 {
				g[i] = edges[i]
			}
		}
		var ref [2][]float32
		for _, isa := range append([]string{"generic"}, ISAs()...) {
			restore := SetISA(isa)
			dg, du := make([]float32, n+1), make([]float32, n+1)
			dg[n], du[n] = 7, 7
			SwiGLUBackward(dg[:n], du[:n], do, g, u)
			restore()
			if dg[n] != 7 || du[n] != 7 {
				t.Fatalf("%s n=%d wrote past the end", isa, n)
			}
			if ref[0] == nil {
				ref = [2][]float32{dg, du}
				for i := 0; i < n; i++ {
					x := float64(g[i])
					if math.IsNaN(x) || math.IsInf(x, 0) || math.Abs(x) > 80 {
						continue
					}
					s := 1 / (1 + math.Exp(-x))
					wg, wu := float64(do[i])*float64(u[i])*s*(1+x*(1-s)), float64(do[i])*x*s
					if math.Abs(float64(dg[i])-wg) > 1e-5*(1+math.Abs(wg)) || math.Abs(float64(du[i])-wu) > 1e-5*(1+math.Abs(wu)) {
						t.Fatalf("n=%d [%d]: g %v: dg %v du %v, float64 %v %v", n, i, x, dg[i], du[i], wg, wu)
					}
				}
				continue
			}
			for i := 0; i < n; i++ {
				for k, got := range [][]float32{dg, du} {
					want := ref[k][i]
					if math.Float32bits(got[i]) != math.Float32bits(want) && !(math.IsNaN(float64(want)) && math.IsNaN(float64(got[i]))) {
						t.Fatalf("%s n=%d [%d] output %d: %v, pure Go %v (g %v)", isa, n, i, k, got[i], want, g[i])
					}
				}
			}
		}
	}
}

// TestMaxOf: the largest of m and x, by hand, wherever it sits among the four running maxima
// and the tail; a NaN is skipped.
func TestMaxOf(t *testing.T) {
	inf := float32(math.Inf(1))
	for _, tc := range []struct {
		x    []float32
		m    float32
		want float32
	}{
		{nil, -inf, -inf},
		{[]float32{3}, 1, 3},
		{[]float32{3}, 5, 5},
		{[]float32{1, 9, 2, 3}, -inf, 9},
		{[]float32{1, 2, 3, 8, 0}, -inf, 8},
		{[]float32{1, 2, 3, 4, 5, 6, 7, 8, 9}, -inf, 9},
		{[]float32{-5, -4, -3, -2, -7, -6, -8, -9, -1.5}, -inf, -1.5},
		{[]float32{-5, -4, -3, -2}, -1, -1},
		{[]float32{1, float32(math.NaN()), 2, 0.5, 7}, 0, 7},
		{[]float32{1, 2, inf, 3}, 0, inf},
	} {
		if got := MaxOf(tc.x, tc.m); got != tc.want {
			t.Errorf("MaxOf(%v, %g) = %g, want %g", tc.x, tc.m, got, tc.want)
		}
	}
}
