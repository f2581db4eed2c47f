package kern

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"unsafe"
)

// useAMXEmulation makes the AMX path with its Go kernel (kernelAMXGo) the active path, on any
// CPU: the packing, the row blocks and the tile configurations run as on AMX hardware.
func useAMXEmulation() (restore func()) {
	im := *impls[ISAs()[0]]
	im.name, im.amx, im.amxHW, im.dotAuto = "amx-emulated", kernelAMXGo, false, false
	prev := cur
	cur = &im
	return func() { cur = prev }
}

// TestTileConfigLayout: LDTILECFG's 64-byte operand written out by hand for a block of 16 + 5
// rows and for one of 7 rows: palette 1 at byte 0, start_row 0 at byte 1, zeros to byte 15,
// colsb[16] as uint16 little-endian from byte 16, rows[16] from byte 48; unused tiles all zero.
func TestTileConfigLayout(t *testing.T) {
	full := [64]byte{
		0: 1, // palette_id
		// colsb: tiles 0-7 are 64 bytes a row (0x40, 0x00 little-endian)
		16: 0x40, 18: 0x40, 20: 0x40, 22: 0x40, 24: 0x40, 26: 0x40, 28: 0x40, 30: 0x40,
		// rows: C 16, 16, 5, 5; A 16, 5; B 16, 16
		48: 16, 49: 16, 50: 5, 51: 5, 52: 16, 53: 5, 54: 16, 55: 16,
	}
	one := [64]byte{
		0:  1,
		16: 0x40, 18: 0x40, 24: 0x40, 28: 0x40, 30: 0x40, // tiles 0, 1, 4, 6, 7
		48: 7, 49: 7, 52: 7, 54: 16, 55: 16,
	}
	for _, tc := range []struct {
		rows0, rows1 int
		want         [64]byte
	}{{16, 5, full}, {7, 0, one}} {
		got := newTileConfig(tc.rows0, tc.rows1)
		if got != tileConfig(tc.want) {
			t.Errorf("tile configuration for rows %d + %d:\n got % x\nwant % x", tc.rows0, tc.rows1, got, tc.want)
		}
		c := amxConfig(tc.rows0, tc.rows1)
		if *c != got {
			t.Errorf("amxConfig(%d, %d) differs from newTileConfig", tc.rows0, tc.rows1)
		}
		if a := uintptr(unsafe.Pointer(c)) % 64; a != 0 {
			t.Errorf("amxConfig(%d, %d) is %d bytes past a 64-byte boundary", tc.rows0, tc.rows1, a)
		}
		// The accessors read the same layout; TDPBF16PS's shape rules hold (C rows = A rows,
		// A colsb/4 = B rows, C colsb = B colsb).
		for _, p := range [][3]int{{0, 4, 6}, {1, 4, 7}, {2, 5, 6}, {3, 5, 7}} {
			cc, a, b := p[0], p[1], p[2]
			if c.rows(cc) == 0 {
				continue
			}
			if c.rows(cc) != c.rows(a) || c.colsb(a)/4 != c.rows(b) || c.colsb(cc) != c.colsb(b) {
				t.Errorf("rows %d + %d: TDPBF16PS TMM%d, TMM%d, TMM%d has mismatched shapes", tc.rows0, tc.rows1, cc, a, b)
			}
		}
	}
}

// TestRoundFTZ: fp32 rounding with FTZ where tininess is detected after rounding, by hand.
func TestRoundFTZ(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want float32
	}{
		{1, 1},
		{1 + 0x1p-24, 1},             // tie, to even
		{1 + 3*0x1p-24, 1 + 0x1p-22}, // tie, to even (up)
		{0x1p-126, 0x1p-126},         // the smallest normal
		{0x1p-127, 0},                // denormal: flushed
		{-0x1p-140, float32(math.Copysign(0, -1))},
		{0x1p-126 - 0x1p-151, 0x1p-126}, // tie between 2^-126 - 2^-150 (odd) and 2^-126: up, kept
		{0x1p-126 - 0x1p-150, 0},        // 24 bits exactly, below 2^-126: flushed
		{0x1p-126 - 0.75*0x1p-150, 0},   // rounds (24 bits) to 2^-126 - 2^-150: flushed
		{-(0x1p-126 - 0.25*0x1p-150), -0x1p-126},
		{0x1p128, float32(math.Inf(1))}, // overflow
	} {
		got := roundFTZ(tc.in)
		if math.Float32bits(got) != math.Float32bits(tc.want) {
			t.Errorf("roundFTZ(%g) = %g (%#x), want %g (%#x)", tc.in, got, math.Float32bits(got), tc.want, math.Float32bits(tc.want))
		}
	}
}

// pairsOf packs lo (even k) and hi (odd k) fp32 values, exact in bf16, into pairs.
func pairsOf(lo, hi []float32) [16]uint32 {
	var p [16]uint32
	for i := range lo {
		p[i] = uint32(bf16Of(lo[i])) | uint32(bf16Of(hi[i]))<<16
	}
	return p
}

// TestAMXDotElemByHand: one output of TDPBF16PS worked by hand: separate even and odd sums,
// each a chain of fused multiply-adds, added together and then to the output; DAZ and FTZ.
func TestAMXDotElemByHand(t *testing.T) {
	for _, tc := range []struct {
		name           string
		c              float32
		alo, ahi       []float32 // x pairs: even k, odd k
		blo, bhi       []float32 // W pairs
		want, wantVDPB float32   // TDPBF16PS; VDPBF16PS's order on the same pairs (dotStep)
	}{
		// even 1·5 + 3·7 = 26, odd 2·6 + 4·8 = 44: 1 + 70.
		{"small integers", 1, []float32{1, 3}, []float32{2, 4}, []float32{5, 7}, []float32{6, 8}, 71, 71},
		// even: 2^24, + 1 (a tie: 2^24), + 1 (2^24); odd: 1 + 1 = 2; then 2^24 + 2, exact. One
		// chain, odd then even per pair (VDPBF16PS): 1, 2^24 + 1 -> 2^24, + 1, + 1 -> 2^24.
		// The exact sum is 2^24 + 4.
		{"even and odd sums", 0, []float32{0x1p24, 1, 1}, []float32{1, 1, 0}, []float32{1, 1, 1}, []float32{1, 1, 0}, 0x1p24 + 2, 0x1p24},
		// The block's sum is rounded once before it meets c: 2^24 + (1 + 1).
		{"block sum, then c", 0x1p24, []float32{1}, []float32{1}, []float32{1}, []float32{1}, 0x1p24 + 2, 0x1p24},
		// A fused multiply-add: even = 2^-63·2^-63 = 2^-126, then + (-2^-64)·2^-63 = -2^-127, a
		// product below the normal range that is not flushed on its own: the sum 2^-127 is, to 0.
		// (Flushing the product first would leave 2^-126.)
		{"fused", 0, []float32{0x1p-63, -0x1p-64}, []float32{0, 0}, []float32{0x1p-63, 0x1p-63}, []float32{0, 0}, 0, 0},
		// 2^-70·2^-70 = 2^-140: below fp32's normal range, flushed to zero.
		{"FTZ", 0, []float32{0x1p-70}, []float32{0}, []float32{0x1p-70}, []float32{0}, 0, 0},
		// even = 2^-126; then + (-1.5·2^-76)·2^-75 = 2^-126 - 0.75·2^-150: rounds (24 bits) to
		// 2^-126 - 2^-150, tiny: flushed to zero.
		{"tiny after rounding", 0, []float32{0x1p-63, 1.5 * 0x1p-76}, []float32{0, 0}, []float32{0x1p-63, -0x1p-75}, []float32{0, 0}, 0, 0},
		// 2^127·2^127 overflows fp32: +Inf.
		{"overflow", 0, []float32{0x1p127}, []float32{0}, []float32{0x1p127}, []float32{0}, float32(math.Inf(1)), float32(math.Inf(1))},
	} {
		a, b := pairsOf(tc.alo, tc.ahi), pairsOf(tc.blo, tc.bhi)
		if got := amxDotElem(tc.c, &a, &b); math.Float32bits(got) != math.Float32bits(tc.want) {
			t.Errorf("%s: amxDotElem = %v, want %v", tc.name, got, tc.want)
		}
		acc := tc.c
		for kk := range a {
			acc = dotStep(acc, a[kk], b[kk])
		}
		if acc != tc.wantVDPB {
			t.Errorf("%s: dotStep chain = %v, want %v", tc.name, acc, tc.wantVDPB)
		}
	}
	// A denormal bf16 input counts as zero: 0x0001 (the smallest bf16 denormal) times 2^126.
	a := [16]uint32{0x0001}
	b := [16]uint32{uint32(bf16Of(0x1p126))}
	if got := amxDotElem(0, &a, &b); got != 0 {
		t.Errorf("denormal input: amxDotElem = %v, want 0", got)
	}
}

// TestKernelAMXGoBlocks: the emulated kernel over two k blocks, by hand: block 0 puts 2^24 in
// c, block 1 adds 1 + 1 as one rounded block sum (2^24 + 2; one by one would stay 2^24); rows
// and columns come out where the contract says, and rows past the configuration are untouched.
func TestKernelAMXGoBlocks(t *testing.T) {
	const kb, rows = 2, 3
	lda, ldc := 4*16*kb+8, 4*nr+12 // strides with slack, in bytes
	a := make([]uint32, rows*lda/4+16)
	b := make([]uint32, 16*kb*nr)
	for i := 0; i < rows; i++ {
		row := a[i*lda/4:]
		row[0] = uint32(bf16Of(float32(i + 1)))             // block 0, pair 0, even: i+1
		row[16] = uint32(bf16Of(1)) | uint32(bf16Of(1))<<16 // block 1, pair 0: 1, 1
	}
	for j := 0; j < nr; j++ {
		b[j] = uint32(bf16Of(0x1p24))                                   // row 0 of block 0
		b[16*nr+j] = uint32(bf16Of(float32(j))) | uint32(bf16Of(1))<<16 // row 0 of block 1
	}
	c := make([]float32, (rows+1)*ldc/4)
	for i := range c {
		c[i] = -1
	}
	kernelAMXGo(amxConfig(rows, 0), &a[0], &b[0], &c[0], kb, lda, ldc, 1)
	for i := 0; i < rows+1; i++ {
		for j := 0; j < nr; j++ {
			got := c[i*ldc/4+j]
			want := float32(-1) // a row past the configured ones
			if i < rows {
				// (i+1)·2^24, then + (j + 1) rounded to the (i+1)·2^24 grid
				want = float32(float64(i+1)*0x1p24 + float64(j+1))
			}
			if got != want {
				t.Fatalf("c[%d][%d] = %v, want %v", i, j, got, want)
			}
		}
	}
}

// TestDotWeightVNNI: a dot weight's panel rows are AMX's VNNI layout: TMM6/TMM7 loaded from the
// panel 128 bytes apart hold, in row kk and dword n, the pair W[n', 2kk], W[n', 2kk+1] of column
// n' = n (TMM6) or 16 + n (TMM7); past k the pairs are zero up to whole tiles of 16.
func TestDotWeightVNNI(t *testing.T) {
	n, k := 40, 37 // two panels, the second partial; k2 = 19, k2p = 32
	src := make([]float32, n*k)
	for i := range src {
		src[i] = float32(i%97 + 1)
	}
	w := Threads(1).NewWeightDot(src, n, k)
	if w.k2p() != 32 || len(w.dp) != 2*32*nr {
		t.Fatalf("k2p %d, %d pairs stored; want 32, %d", w.k2p(), len(w.dp), 2*32*nr)
	}
	for p := 0; p < 2; p++ {
		for blk := 0; blk < 2; blk++ {
			for half := 0; half < 2; half++ {
				base := unsafe.Pointer(&w.dp[(p*w.k2p()+16*blk)*nr+16*half]) // the tile's address
				for kk := 0; kk < 16; kk++ {
					row := unsafe.Slice((*uint32)(unsafe.Add(base, 128*kk)), 16)
					for dn, pair := range row {
						col, k0 := p*nr+16*half+dn, 2*(16*blk+kk)
						var want uint32
						if col < n && k0 < k {
							want = uint32(bf16Of(src[col*k+k0]))
							if k0+1 < k {
								want |= uint32(bf16Of(src[col*k+k0+1])) << 16
							}
						}
						if pair != want {
							t.Fatalf("panel %d tile %d/%d row %d dword %d: %#x, want %#x", p, blk, half, kk, dn, pair, want)
						}
					}
				}
			}
		}
	}
}

// TestMatMulAMXEmulated: the AMX path (packing, row blocks of up to 32 rows in one or two tiles,
// partial panels, k padded to whole tiles) with the emulated kernel: close to the float64
// oracle on bf16-rounded operands; each row the same bits whatever m and the thread count;
// MatMulT, MatMuls and the row-by-row emulation (amxDotElem) agree.
func TestMatMulAMXEmulated(t *testing.T) {
	defer useAMXEmulation()()
	r := rand.New(rand.NewPCG(11, 12))
	for _, n := range []int{1, 33} {
		for _, k := range []int{1, 33, 300} {
			src := randF32(r, n*k)
			w := Threads(0).NewWeightDot(src, n, k)
			x := randF32(r, 70*k)
			var prev []float32 // the rows of the largest m so far
			for _, m := range []int{1, 15, 16, 17, 32, 33, 70} {
				got := make([]float32, m*n)
				for i := range got {
					got[i] = float32(math.NaN())
				}
				Threads(3).MatMul(got, x[:m*k], m, w)
				name := fmt.Sprintf("n=%d k=%d m=%d", n, k, m)
				want := make([]float32, m*n)
				xr := roundBF16(x[:m*k])
				MatMulRef(want, xr, m, w)
				checkClose(t, name, got, want, xr, m, w)
				if l := min(len(prev), len(got)); !slices.Equal(prev[:l], got[:l]) {
					t.Fatalf("%s: rows differ from those of a smaller m", name)
				}
				prev = got
				one := make([]float32, m*n)
				Threads(1).MatMul(one, x[:m*k], m, w)
				if !slices.Equal(one, got) {
					t.Fatalf("%s: 1 thread and 3 threads differ", name)
				}
				xt := make([]float32, m*k)
				for i := 0; i < m; i++ {
					for c := 0; c < k; c++ {
						xt[c*m+i] = x[i*k+c]
					}
				}
				gt := make([]float32, m*n)
				MatMulT(gt, xt, m, w)
				if !slices.Equal(gt, got) {
					t.Fatalf("%s: MatMulT bits differ from MatMul", name)
				}
			}
			// Row 0 against amxDotElem block by block, from the definition.
			for j := 0; j < n; j++ {
				var acc float32
				for blk := 0; blk < w.k2p()/16; blk++ {
					var a, b [16]uint32
					for kk := range 16 {
						k0 := 2 * (16*blk + kk)
						if k0 < k {
							a[kk] = uint32(bf16Of(x[k0]))
							b[kk] = uint32(bf16Of(src[j*k+k0]))
						}
						if k0+1 < k {
							a[kk] |= uint32(bf16Of(x[k0+1])) << 16
							b[kk] |= uint32(bf16Of(src[j*k+k0+1])) << 16
						}
					}
					acc = amxDotElem(acc, &a, &b)
				}
				if got := prev[j]; math.Float32bits(got) != math.Float32bits(acc) {
					t.Fatalf("n=%d k=%d: y[0,%d] = %v, the definition gives %v", n, k, j, got, acc)
				}
			}
		}
	}
	// MatMuls: several dot weights of one input, each with its own MatMul's bits.
	k := 70
	ws := []*Weight{Threads(0).NewWeightDot(randF32(r, 96*k), 96, k), Threads(0).NewWeightDot(randF32(r, 7*k), 7, k)}
	x := randF32(r, 20*k)
	ys := [][]float32{make([]float32, 20*96), make([]float32, 20*7)}
	Threads(2).MatMuls(ys, x, 20, ws)
	for i, w := range ws {
		alone := make([]float32, 20*w.N())
		MatMul(alone, x, 20, w)
		if !slices.Equal(alone, ys[i]) {
			t.Fatalf("MatMuls: weight %d differs from its own MatMul", i)
		}
	}
}

// TestAMXHardware checks the AMX kernel (amxDotBF16) against its Go emulation bit for bit, over
// magnitudes that reach the denormal range, every row split of a block and several k; then
// MatMul on the amx path on 8 goroutines at once while the GC runs (tile state is per thread:
// each kernel call configures and releases its tiles). It needs a CPU with AMX that the OS lets
// this process use; with PROLONG_REQUIRE_AMX=1 (a machine known to have AMX) their absence fails.
func TestAMXHardware(t *testing.T) {
	im, ok := impls["amx"]
	if !ok {
		if os.Getenv("PROLONG_REQUIRE_AMX") == "1" {
			t.Fatalf("PROLONG_REQUIRE_AMX=1 but the amx path is unavailable: %s", AMXStatus())
		}
		t.Skipf("no AMX: %s (the emulation is checked by hand and against the float64 oracle; run on a Sapphire Rapids or later Xeon for this check)", AMXStatus())
	}
	r := rand.New(rand.NewPCG(13, 14))
	scaled := func(lo, hi int) float32 {
		return float32(r.NormFloat64()) * float32(math.Ldexp(1, lo+r.IntN(hi-lo)))
	}
	pair := func(lo, hi int) uint32 {
		return uint32(bf16Of(scaled(lo, hi))) | uint32(bf16Of(scaled(lo, hi)))<<16
	}
	for _, rng := range [][2]int{{-8, 8}, {-70, -50}, {-140, -100}, {100, 127}} {
		for _, rows := range []int{1, 2, 7, 15, 16, 17, 24, 31, 32} {
			for _, kb := range []int{1, 2, 5} {
				k2p := 16 * kb
				lda := 4*k2p + 4*r.IntN(3)*16
				a := make([]uint32, rows*lda/4)
				b := make([]uint32, k2p*nr)
				for i := range a {
					a[i] = pair(rng[0], rng[1])
				}
				for i := range b {
					b[i] = pair(-20, 20)
				}
				rows0 := min(rows, 16)
				mt := 1
				if rows > 16 {
					mt = 2
				}
				ldc := 4*nr + 64*r.IntN(2)
				got := make([]float32, rows*ldc/4)
				want := make([]float32, rows*ldc/4)
				im.amx(amxConfig(rows0, rows-rows0), &a[0], &b[0], &got[0], kb, lda, ldc, mt)
				kernelAMXGo(amxConfig(rows0, rows-rows0), &a[0], &b[0], &want[0], kb, lda, ldc, mt)
				for i := range want {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("range 2^%v, rows %d, kb %d: c[%d,%d] = %v (%#x) in hardware, %v (%#x) emulated",
							rng, rows, kb, i/(ldc/4), i%(ldc/4), got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
					}
				}
			}
		}
	}
	// Hand-worked cases through the hardware: the even/odd sums and the block sum.
	restore := SetISA("amx")
	defer restore()
	x := []float32{0x1p24, 1, 1, 1, 1, 1, 0} // one row, k = 7
	wr := []float32{1, 1, 1, 1, 1, 0, 0}     // one column
	y := make([]float32, 1)
	MatMul(y, x, 1, Threads(1).NewWeightDot(wr, 1, len(wr)))
	if y[0] != 0x1p24+2 { // even: 2^24 + 1 + 1 -> 2^24; odd: 1 + 1 = 2 (k 1, 3; k 5's weight is 0)
		t.Errorf("hand-worked row: %v, want 2^24 + 2", y[0])
	}
	// Concurrency: the same product on 8 goroutines at once, with the GC running, gives the
	// bits of one run alone.
	const m, n, k = 100, 200, 300
	w := Threads(0).NewWeightDot(randF32(r, n*k), n, k)
	xs := randF32(r, m*k)
	ref := make([]float32, m*n)
	Threads(1).MatMul(ref, xs, m, w)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]float32, m*n)
			for it := 0; it < 20; it++ {
				Threads(2).MatMul(out, xs, m, w)
				if !slices.Equal(out, ref) {
					errs <- fmt.Errorf("goroutine %d, run %d: bits differ from the single run", g, it)
					return
				}
				runtime.GC()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
