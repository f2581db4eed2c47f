package kern

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func randF32(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64())
	}
	return s
}

// newWeight builds a random weight; for bf16 it also returns the exact fp32 values it holds.
func newWeight(r *rand.Rand, n, k int, bf bool) *Weight {
	w := randF32(r, n*k)
	if bf {
		bits := make([]uint16, n*k)
		F32ToBF16(bits, w)
		return NewWeightBF16(bits, n, k)
	}
	return NewWeightF32(w, n, k)
}

// checkClose compares got with the float64 oracle; the tolerance scales with sqrt(k) and with
// the magnitude of the terms (Σ|x||w| per output, computed from the unpacked weight).
func checkClose(t *testing.T, name string, got, want, x []float32, m int, w *Weight) {
	t.Helper()
	n, k := w.N(), w.K()
	wr := make([]float32, n*k)
	w.Unpack(wr)
	tol := 1e-5 * math.Sqrt(float64(k)+1)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var mag float64
			for kk := 0; kk < k; kk++ {
				mag += math.Abs(float64(x[i*k+kk]) * float64(wr[j*k+kk]))
			}
			g, e := float64(got[i*n+j]), float64(want[i*n+j])
			if math.Abs(g-e) > tol*(mag+1e-30) || math.IsNaN(g) {
				t.Fatalf("%s: y[%d,%d] = %v, want %v (mag %v)", name, i, j, g, e, mag)
			}
		}
	}
}

func TestMatMul(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ms := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 31, 64, 100}
	ns := []int{1, 7, 31, 32, 33, 100}
	ks := []int{1, 3, 17, 300, 1000}
	for _, isa := range ISAs() {
		restore := SetISA(isa)
		for _, bf := range []bool{false, true} {
			for _, n := range ns {
				for _, k := range ks {
					w := newWeight(r, n, k, bf)
					for _, m := range ms {
						if k == 1000 && m > 17 && n > 33 {
							continue // keep the oracle cheap
						}
						x := randF32(r, m*k)
						got := make([]float32, m*n)
						for i := range got {
							got[i] = float32(math.NaN()) // must be overwritten
						}
						want := make([]float32, m*n)
						MatMul(got, x, m, w)
						MatMulRef(want, x, m, w)
						checkClose(t, fmt.Sprintf("%s bf16=%v m=%d n=%d k=%d", isa, bf, m, n, k), got, want, x, m, w)
					}
				}
			}
		}
		restore()
	}
}

// TestMatMuls: several weights of one k in one call, mixed fp32 and bf16, with partial last
// panels and an empty weight: each output close to the float64 oracle and bit-identical to
// its own MatMul call, on every ISA and thread count.
func TestMatMuls(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, isa := range ISAs() {
		restore := SetISA(isa)
		for _, tc := range []struct {
			k   int
			ns  []int
			bfs []bool
		}{
			{64, []int{96, 32, 32}, []bool{false, false, false}},
			{100, []int{33, 0, 7, 64}, []bool{false, true, false, true}},
			{17, []int{1}, []bool{true}},
			{300, []int{200, 45}, []bool{true, false}},
		} {
			ws := make([]*Weight, len(tc.ns))
			for i, n := range tc.ns {
				ws[i] = newWeight(r, n, tc.k, tc.bfs[i])
			}
			for _, m := range []int{1, 5, 16, 33} {
				for _, thr := range []Threads{1, 2, 3} {
					x := randF32(r, m*tc.k)
					ys := make([][]float32, len(ws))
					for i, w := range ws {
						ys[i] = make([]float32, m*w.N())
						for j := range ys[i] {
							ys[i][j] = float32(math.NaN()) // must be overwritten
						}
					}
					thr.MatMuls(ys, x, m, ws)
					for i, w := range ws {
						name := fmt.Sprintf("%s k=%d weight %d [%d] m=%d threads %d", isa, tc.k, i, w.N(), m, thr)
						want := make([]float32, m*w.N())
						MatMulRef(want, x, m, w)
						checkClose(t, name, ys[i], want, x, m, w)
						alone := make([]float32, m*w.N())
						thr.MatMul(alone, x, m, w)
						for j := range alone {
							if math.Float32bits(alone[j]) != math.Float32bits(ys[i][j]) {
								t.Fatalf("%s: y[%d] = %v, MatMul alone gives %v", name, j, ys[i][j], alone[j])
							}
						}
					}
				}
			}
		}
		restore()
	}
}

// TestMatMulShapes covers the model shapes at a few m on the active ISA.
func TestMatMulShapes(t *testing.T) {
	if testing.Short() {
		t.Skip()
	}
	r := rand.New(rand.NewPCG(3, 4))
	for _, s := range [][2]int{{128, 768}, {768, 2048}, {100, 768}} {
		for _, bf := range []bool{false, true} {
			w := newWeight(r, s[0], s[1], bf)
			for _, m := range []int{1, 16, 64} {
				x := randF32(r, m*s[1])
				got, want := make([]float32, m*s[0]), make([]float32, m*s[0])
				MatMul(got, x, m, w)
				MatMulRef(want, x, m, w)
				checkClose(t, fmt.Sprintf("bf16=%v m=%d n=%d k=%d", bf, m, s[0], s[1]), got, want, x, m, w)
			}
		}
	}
}

// TestBatchIndependence: row i computed alone or inside a batch gives bit-identical results.
func TestBatchIndependence(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, isa := range ISAs() {
		restore := SetISA(isa)
		for _, bf := range []bool{false, true} {
			for _, s := range [][2]int{{100, 300}, {768, 768}, {33, 17}} {
				n, k := s[0], s[1]
				w := newWeight(r, n, k, bf)
				for _, m := range []int{16, 31, 64} {
					x := randF32(r, m*k)
					yb := make([]float32, m*n)
					MatMul(yb, x, m, w)
					for _, i := range []int{0, 1, m / 2, m - 1} {
						y1 := make([]float32, n)
						MatMul(y1, x[i*k:(i+1)*k], 1, w)
						for j := range y1 {
							if math.Float32bits(y1[j]) != math.Float32bits(yb[i*n+j]) {
								t.Fatalf("%s bf16=%v n=%d k=%d m=%d: row %d col %d alone %v, in batch %v", isa, bf, n, k, m, i, j, y1[j], yb[i*n+j])
							}
						}
					}
				}
			}
		}
		restore()
	}
}

// TestRowBlockEdges runs every row count 1..2·mr+1 of each ISA (so every register-block body
// and the split into near-equal blocks) with k around the k-loop unrolling (every remainder,
// k=1 included) and a partial last panel: each row is close to the oracle and bit-identical to
// the same row computed alone.
func TestRowBlockEdges(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, isa := range ISAs() {
		restore := SetISA(isa)
		for _, bf := range []bool{false, true} {
			for _, k := range []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 37} {
				const n = 45 // one full panel, one of 13 columns
				w := newWeight(r, n, k, bf)
				for m := 1; m <= 2*cur.mr+1; m++ {
					name := fmt.Sprintf("%s bf16=%v m=%d k=%d", isa, bf, m, k)
					x := randF32(r, m*k)
					got, want := make([]float32, m*n), make([]float32, m*n)
					MatMul(got, x, m, w)
					MatMulRef(want, x, m, w)
					checkClose(t, name, got, want, x, m, w)
					y1 := make([]float32, n)
					for i := 0; i < m; i++ {
						MatMul(y1, x[i*k:(i+1)*k], 1, w)
						for j, v := range y1 {
							if math.Float32bits(v) != math.Float32bits(got[i*n+j]) {
								t.Fatalf("%s: y[%d,%d] = %v in the batch, %v alone", name, i, j, got[i*n+j], v)
							}
						}
					}
				}
			}
		}
		restore()
	}
}

func TestUnpackBytes(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	w := randF32(r, 33*5)
	wt := NewWeightF32(w, 33, 5)
	got := make([]float32, len(w))
	wt.Unpack(got)
	for i := range w {
		if got[i] != w[i] {
			t.Fatalf("Unpack[%d] = %v, want %v", i, got[i], w[i])
		}
	}
	if wt.N() != 33 || wt.K() != 5 || wt.BF16() || wt.Bytes() != 64*5*4 {
		t.Fatalf("N,K,BF16,Bytes = %d,%d,%v,%d", wt.N(), wt.K(), wt.BF16(), wt.Bytes())
	}
	bits := make([]uint16, len(w))
	F32ToBF16(bits, w)
	wb := NewWeightBF16(bits, 33, 5)
	wb.Unpack(got)
	for i := range w {
		if math.Float32bits(got[i]) != uint32(bits[i])<<16 {
			t.Fatalf("bf16 Unpack[%d] = %v", i, got[i])
		}
	}
	if !wb.BF16() || wb.Bytes() != 64*5*2 {
		t.Fatalf("bf16 BF16,Bytes = %v,%d", wb.BF16(), wb.Bytes())
	}
}

func TestDotAxpy(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, isa := range ISAs() {
		restore := SetISA(isa)
		for n := 0; n <= 70; n++ {
			a, b := randF32(r, n), randF32(r, n)
			var want, mag float64
			for i := range a {
				want += float64(a[i]) * float64(b[i])
				mag += math.Abs(float64(a[i]) * float64(b[i]))
			}
			if got := Dot(a, b); math.Abs(float64(got)-want) > 1e-6*(mag+1) {
				t.Fatalf("%s Dot n=%d = %v, want %v", isa, n, got, want)
			}
			y := randF32(r, n+1) // one extra element that must stay untouched
			y0 := append([]float32(nil), y...)
			const alpha = 0.75
			Axpy(alpha, a, y[:n])
			for i := 0; i < n; i++ {
				if e := y0[i] + alpha*a[i]; math.Abs(float64(y[i]-e)) > 1e-6*(math.Abs(float64(e))+1) {
					t.Fatalf("%s Axpy n=%d [%d] = %v, want %v", isa, n, i, y[i], e)
				}
			}
			if y[n] != y0[n] {
				t.Fatalf("%s Axpy n=%d wrote past the end", isa, n)
			}
		}
		restore()
	}
}

func TestBF16(t *testing.T) {
	f := math.Float32frombits
	cases := []struct {
		in   float32
		want uint16
	}{
		{1.0, 0x3F80},
		{-2.0, 0xC000},
		{0, 0x0000},
		{float32(math.Copysign(0, -1)), 0x8000},
		{f(0x3F808000), 0x3F80}, // tie, even below: round down
		{f(0x3F818000), 0x3F82}, // tie, odd below: round up
		{f(0x3F808001), 0x3F81}, // above the tie
		{f(0x3F807FFF), 0x3F80}, // below the tie
		{f(0x7F7FFFFF), 0x7F80}, // max float rounds to +Inf
		{float32(math.Inf(1)), 0x7F80},
		{float32(math.Inf(-1)), 0xFF80},
		{f(0x00000001), 0x0000}, // tiny denormal
		{f(0x00018000), 0x0002}, // denormal tie, odd: up
	}
	for _, c := range cases {
		dst := []uint16{0xdead}
		F32ToBF16(dst, []float32{c.in})
		if dst[0] != c.want {
			t.Errorf("F32ToBF16(%#08x) = %#04x, want %#04x", math.Float32bits(c.in), dst[0], c.want)
		}
	}
	for _, nan := range []uint32{0x7FC00000, 0x7F800001, 0xFF800001, 0x7F810000, 0x7FFFFFFF} {
		dst := []uint16{0}
		F32ToBF16(dst, []float32{f(nan)})
		back := []float32{0}
		BF16ToF32(back, dst)
		if !math.IsNaN(float64(back[0])) || (dst[0]&0x8000 != 0) != (nan&0x80000000 != 0) {
			t.Errorf("F32ToBF16(NaN %#08x) = %#04x, not a NaN of the same sign", nan, dst[0])
		}
	}
	back := make([]float32, 3)
	BF16ToF32(back, []uint16{0x3F80, 0xC000, 0x7F80})
	if back[0] != 1 || back[1] != -2 || !math.IsInf(float64(back[2]), 1) {
		t.Errorf("BF16ToF32 = %v", back)
	}
	// Round trip of every bf16 value that is not a NaN.
	src := make([]uint16, 1<<16)
	for i := range src {
		src[i] = uint16(i)
	}
	wide := make([]float32, len(src))
	BF16ToF32(wide, src)
	narrow := make([]uint16, len(src))
	F32ToBF16(narrow, wide)
	for i := range src {
		if !math.IsNaN(float64(wide[i])) && narrow[i] != src[i] {
			t.Fatalf("round trip %#04x -> %#04x", src[i], narrow[i])
		}
	}
}

func TestParallel(t *testing.T) {
	defer SetSpinWait(SpinWait())
	for _, wait := range []time.Duration{0, DefaultSpinWait, time.Second} {
		SetSpinWait(wait)
		for _, n := range []int{0, 1, 2, 3, 7, 100, 1000, 12345} {
			for _, grain := range []int{0, 1, 3, 64, 5000} {
				checkParallel(t, n, grain)
			}
		}
	}
}

// checkParallel runs Parallel(n, grain) and checks every index is run exactly once, in chunks
// of at least grain.
func checkParallel(t *testing.T, n, grain int) {
	t.Helper()
	hits := make([]int32, n)
	Parallel(n, grain, func(lo, hi int) {
		if lo >= hi && n > 0 {
			t.Errorf("empty chunk [%d,%d)", lo, hi)
		}
		if grain > 1 && hi-lo < grain && hi != n {
			t.Errorf("chunk [%d,%d) below grain %d", lo, hi, grain)
		}
		for i := lo; i < hi; i++ {
			atomic.AddInt32(&hits[i], 1)
		}
	})
	for i, h := range hits {
		if h != 1 {
			t.Fatalf("n=%d grain=%d: index %d hit %d times", n, grain, i, h)
		}
	}
}

// TestSpin: spin returns true as soon as ready does, polls once and gives up at a spin wait of
// 0, and gives up after about the spin wait otherwise.
func TestSpin(t *testing.T) {
	defer SetSpinWait(SpinWait())
	for _, tc := range []struct {
		wait    time.Duration
		readyAt int // poll that first returns true; 0: never
		want    bool
		polls   int // exact poll count expected, 0: not checked
	}{
		{0, 1, true, 1},
		{0, 0, false, 1},
		{0, 2, false, 1},
		{time.Second, 1, true, 1},
		{time.Second, 1000, true, 1000},
		{20 * time.Millisecond, 0, false, 0},
	} {
		SetSpinWait(tc.wait)
		polls := 0
		t0 := time.Now()
		got := spin(func() bool { polls++; return polls == tc.readyAt })
		took := time.Since(t0)
		if got != tc.want || (tc.polls > 0 && polls != tc.polls) {
			t.Errorf("wait %v ready at poll %d: spin = %v after %d polls, want %v after %d", tc.wait, tc.readyAt, got, polls, tc.want, tc.polls)
		}
		if !tc.want && tc.wait > 0 && (took < tc.wait || took > tc.wait+time.Second) {
			t.Errorf("wait %v: gave up after %v", tc.wait, took)
		}
	}
	if SetSpinWait(-time.Second); SpinWait() != 0 {
		t.Errorf("SetSpinWait(-1s): SpinWait() = %v, want 0", SpinWait())
	}
}

func TestParallelNestedConcurrent(t *testing.T) {
	var total atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rep := 0; rep < 20; rep++ {
				Parallel(16, 1, func(lo, hi int) {
					for i := lo; i < hi; i++ {
						Parallel(16, 1, func(lo2, hi2 int) {
							Parallel(4, 1, func(lo3, hi3 int) {
								total.Add(int64((hi2 - lo2) * (hi3 - lo3)))
							})
						})
					}
				})
			}
		}()
	}
	wg.Wait()
	if got := total.Load(); got != 8*20*16*16*4 {
		t.Fatalf("nested total %d, want %d", got, 8*20*16*16*4)
	}
}

// TestTransposedWeight checks NewWeightF32T/RepackT against packing the explicit transpose,
// and Repack against a fresh weight, on shapes around the panel width.
func TestTransposedWeight(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, k := range []int{1, 5, 64} {
		for _, n := range []int{1, 31, 32, 33, 70} {
			a := randF32(r, k*n) // [k,n]
			at := make([]float32, n*k)
			for i := 0; i < k; i++ {
				for j := 0; j < n; j++ {
					at[j*k+i] = a[i*n+j]
				}
			}
			want := NewWeightF32(at, n, k)
			got := NewWeightF32T(a, k, n)
			if fmt.Sprint(got.f32) != fmt.Sprint(want.f32) {
				t.Fatalf("NewWeightF32T k=%d n=%d differs from packing the transpose", k, n)
			}
			b := randF32(r, n*k)
			got.Repack(b)
			if fmt.Sprint(got.f32) != fmt.Sprint(NewWeightF32(b, n, k).f32) {
				t.Fatalf("Repack k=%d n=%d differs from a fresh weight", k, n)
			}
			got.RepackT(a)
			if fmt.Sprint(got.f32) != fmt.Sprint(want.f32) {
				t.Fatalf("RepackT k=%d n=%d differs from packing the transpose", k, n)
			}
		}
	}
}

// TestMatMulT checks MatMulT(xᵀ) against MatMul(x) bit for bit (same packing, same kernel)
// on every ISA and on sizes around the register block heights.
func TestMatMulT(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 9))
	for _, isa := range ISAs() {
		restore := SetISA(isa)
		for _, m := range []int{1, 2, 3, 13, 14, 15, 29, 64} {
			for _, k := range []int{1, 7, 40} {
				w := newWeight(r, 33, k, false)
				x := randF32(r, m*k)
				xt := make([]float32, k*m)
				for i := 0; i < m; i++ {
					for j := 0; j < k; j++ {
						xt[j*m+i] = x[i*k+j]
					}
				}
				want, got := make([]float32, m*33), make([]float32, m*33)
				MatMul(want, x, m, w)
				MatMulT(got, xt, m, w)
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("%s m=%d k=%d: MatMulT differs from MatMul", isa, m, k)
				}
			}
		}
		restore()
	}
}

// TestThreads: Threads(t).Parallel splits into at most t chunks (t may exceed GOMAXPROCS), and
// every Threads method gives the same bits as the package-level function: a matmul output does
// not depend on the split, and packing only moves data.
func TestThreads(t *testing.T) {
	for _, thr := range []Threads{1, 2, 3, 7} {
		var chunks atomic.Int32
		thr.Parallel(1000, 1, func(lo, hi int) { chunks.Add(1) })
		if got := chunks.Load(); got > int32(thr) || (thr > 1 && got < 2) {
			t.Errorf("Threads(%d).Parallel: %d chunks", thr, got)
		}
	}
	r := rand.New(rand.NewPCG(5, 6))
	const m, n, k = 37, 70, 45
	a, x, xt := randF32(r, n*k), randF32(r, m*k), randF32(r, k*m)
	bits := make([]uint16, n*k)
	F32ToBF16(bits, a)
	for _, thr := range []Threads{1, 2, 3, 7} {
		for _, c := range []struct {
			name     string
			ref, got *Weight
		}{
			{name: "f32", ref: NewWeightF32(a, n, k), got: thr.NewWeightF32(a, n, k)},
			{name: "bf16", ref: NewWeightBF16(bits, n, k), got: thr.NewWeightBF16(bits, n, k)},
			{name: "f32T", ref: NewWeightF32T(a, k, n), got: thr.NewWeightF32T(a, k, n)},
			{name: "repack", ref: NewWeightF32(a, n, k), got: func() *Weight {
				w := thr.NewWeightF32(make([]float32, n*k), n, k)
				thr.Repack(w, a)
				return w
			}()},
			{name: "repackT", ref: NewWeightF32T(a, k, n), got: func() *Weight {
				w := thr.NewWeightF32T(make([]float32, n*k), k, n)
				thr.RepackT(w, a)
				return w
			}()},
		} {
			want, got := make([]float32, m*n), make([]float32, m*n)
			MatMul(want, x, m, c.ref)
			thr.MatMul(got, x, m, c.got)
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("Threads(%d) %s: MatMul y[%d] = %g, want %g", thr, c.name, i, got[i], want[i])
				}
			}
			MatMulT(want, xt, m, c.ref)
			thr.MatMulT(got, xt, m, c.got)
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("Threads(%d) %s: MatMulT y[%d] = %g, want %g", thr, c.name, i, got[i], want[i])
				}
			}
		}
	}
}

// TestParallelFine: every index is run exactly once, in at most threads·chunksPerThread
// chunks (exactly that many when n allows).
func TestParallelFine(t *testing.T) {
	for _, threads := range []Threads{1, 2, 3} {
		for _, per := range []int{0, 1, 4} {
			for _, n := range []int{0, 1, 5, 12, 1000} {
				hits := make([]int32, n)
				var chunks atomic.Int32
				threads.ParallelFine(n, per, func(lo, hi int) {
					chunks.Add(1)
					for i := lo; i < hi; i++ {
						atomic.AddInt32(&hits[i], 1)
					}
				})
				for i, h := range hits {
					if h != 1 {
						t.Fatalf("threads %d, %d per thread, n=%d: index %d run %d times", threads, per, n, i, h)
					}
				}
				if want := min(n, int(threads)*max(1, per)); int(chunks.Load()) != want {
					t.Errorf("threads %d, %d per thread, n=%d: %d chunks, want %d", threads, per, n, chunks.Load(), want)
				}
			}
		}
	}
}

// TestMatMulTAcc checks that MatMulTAcc adds to y exactly what MatMulT writes (one add of the
// same FMA chain per output), for fp32, bf16 and bf16 dot-product weights, on every ISA (and the
// AMX path, emulated) and on
// sizes with a partial last panel and several row groups.
func TestMatMulTAcc(t *testing.T) {
	r := rand.New(rand.NewPCG(10, 11))
	for _, isa := range append(ISAs(), "amx-emulated") {
		var restore func()
		if isa == "amx-emulated" {
			restore = useAMXEmulation()
		} else {
			restore = SetISA(isa)
		}
		for _, kind := range []string{"f32", "bf16", "dot"} {
			for _, n := range []int{1, 32, 33, 70, 1000} { // 1000: several row groups (accGroups)
				for _, m := range []int{1, 3, 14, 15, 40, 300} {
					k := 19
					var w *Weight
					switch kind {
					case "f32":
						w = newWeight(r, n, k, false)
					case "bf16":
						w = newWeight(r, n, k, true)
					default:
						w = Threads(0).NewWeightDot(randF32(r, n*k), n, k)
					}
					xt := randF32(r, k*m)
					y0 := randF32(r, m*n)
					prod := make([]float32, m*n)
					MatMulT(prod, xt, m, w)
					want := make([]float32, m*n)
					for i := range want {
						want[i] = y0[i] + prod[i]
					}
					got := append([]float32(nil), y0...)
					Threads(0).MatMulTAcc(got, xt, m, w)
					if fmt.Sprint(got) != fmt.Sprint(want) {
						t.Fatalf("%s %s m=%d n=%d: MatMulTAcc is not y + MatMulT", isa, kind, m, n)
					}
				}
			}
		}
		restore()
	}
}
