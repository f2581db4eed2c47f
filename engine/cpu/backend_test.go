package cpu

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/internal/kern"
)

// TestSizeClass: lengths round up to m·2^e with m in 4..8 (worked by hand), at most 25% more.
func TestSizeClass(t *testing.T) {
	for _, c := range []struct{ n, want int }{
		{1, 1}, {8, 8}, {9, 10}, {10, 10}, {11, 12}, {16, 16}, {17, 20}, {100, 112}, {112, 112},
		{113, 128}, {1000, 1024}, {1025, 1280}, {1280, 1280}, {1281, 1536},
		{4096 * 192, 4096 * 192}, // 3·2^18 = 6·2^17
		{960 * 512, 1 << 19},     // 491520 = 7.5·2^16
	} {
		if got := sizeClass(c.n); got != c.want {
			t.Errorf("sizeClass(%d) = %d, want %d", c.n, got, c.want)
		}
	}
	for n := 1; n < 1<<16; n++ {
		if c := sizeClass(n); c < n || 4*c > 5*n+4*8 || sizeClass(c) != c {
			t.Fatalf("sizeClass(%d) = %d: below it, over 25%% above it, or not a class", n, c)
		}
	}
}

// TestPoolLimit: freed buffers are reused (same storage, zeroed) by any length of their size
// class while the pool holds at most its limit in bytes; beyond it buffers are dropped (the
// rollout server's small pool).
func TestPoolLimit(t *testing.T) {
	c := New(WithPoolLimit(1000)) // 250 floats
	a := c.Alloc(10, 10)          // 100 floats, class 112: 448 bytes
	buf := a.Buf.([]float32)
	buf[3] = 7
	c.Free(a)
	if c.pooled != 448 || a.Buf != nil {
		t.Fatalf("after one free: pooled %d", c.pooled)
	}
	b := c.Alloc(5, 21) // 105 floats, the same class: the same storage, cleared
	if got := b.Buf.([]float32); &got[0] != &buf[0] || got[3] != 0 || len(got) != 105 || c.pooled != 0 {
		t.Fatalf("not reused or not cleared: %v, len %d, pooled %d", got[3], len(got), c.pooled)
	}
	for _, shape := range [][]int{{10, 10}, {5, 10}, {20, 10}, {3, 3}} { // classes 112, 56, 224, 10
		c.Free(c.Alloc(shape...))
		if c.pooled > c.poolLimit {
			t.Fatalf("pool %d bytes over its %d limit", c.pooled, c.poolLimit)
		}
	}
	// 448 + 224 + 40 bytes kept, the 896-byte buffer dropped.
	if c.pooled != 712 || len(c.pool[224]) != 0 {
		t.Fatalf("pooled %d bytes, %d buffers of 224 floats", c.pooled, len(c.pool[224]))
	}
	c.Free(b)
	if c.pooled != 712 { // no room for 448 more
		t.Fatalf("pooled %d", c.pooled)
	}
	// Parameters, packed weights and uploaded tensors are not pooled.
	p, _ := c.UploadParam(make([]float32, 4), 2, 2)
	w, _ := c.Upload(engine.F32, make([]float32, 4), true, 2, 2)
	u, _ := c.Upload(engine.F32, make([]float32, 9), false, 9)
	c.Free(p)
	c.Free(w)
	c.Free(u)
	if c.pooled != 712 || p.Buf != nil || w.Buf != nil || u.Buf != nil {
		t.Fatalf("after freeing a parameter, a weight and an upload: pooled %d", c.pooled)
	}

	if d := New(); d.poolLimit != DefaultPoolLimit || DefaultPoolLimit != 1<<30 || d.thr != 0 {
		t.Fatalf("defaults: pool limit %d, threads %d", d.poolLimit, d.thr)
	}
	z := New(WithPoolLimit(0))
	z.Free(z.Alloc(3))
	if z.pooled != 0 {
		t.Fatalf("pool limit 0 kept %d bytes", z.pooled)
	}
}

// TestPoolVaryingLengths: a training step's activations [T, D] for token counts T that change at
// every step (as packed batches' do) are served by a few buffers, not one per T: the pool used to
// keep buffers by exact length and so filled up to its 1 GiB limit with lengths that rarely came
// back (the default job's warm start held 1 GiB of them, 3.9 GB resident in all).
func TestPoolVaryingLengths(t *testing.T) {
	c := New()
	seen := map[*float32]bool{}
	for T := 900; T <= 1100; T++ {
		x := c.Alloc(T, 192)
		seen[&x.Buf.([]float32)[0]] = true
		c.Free(x)
	}
	// T·192 runs over 172800..211200: classes 196608 (6·2^15) up to 196608, then 229376 (7·2^15).
	if len(seen) != 2 || c.pooled != 4*(196608+229376) {
		t.Fatalf("%d buffers made, %d bytes pooled; want 2 and %d", len(seen), c.pooled, 4*(196608+229376))
	}
}

// TestScratchWeightsBounded: the backward pass's packed Xᵀ scratch weights, whose shape [K, T]
// follows the micro-batch's token count T, are kept for reuse only up to maxScratchWeights (they
// used to be kept by shape without bound: 150 MB of them after the default job's warm start).
func TestScratchWeightsBounded(t *testing.T) {
	c := New()
	const n, k = 8, 64
	dw, err := c.UploadParam(make([]float32, n*k), n, k)
	if err != nil {
		t.Fatal(err)
	}
	for m := 100; m < 200; m++ {
		dy, x := c.Alloc(m, n), c.Alloc(m, k)
		c.MatMulDW(dw, dy, x)
		c.Free(dy)
		c.Free(x)
	}
	if len(c.wpool) != maxScratchWeights {
		t.Fatalf("%d scratch weights kept, want %d", len(c.wpool), maxScratchWeights)
	}
	// The most recent shapes are kept, and a kept shape is reused.
	last := c.wpool[len(c.wpool)-1]
	if last.K() != 199 || last.N() != k {
		t.Fatalf("last kept scratch weight [%d, %d], want [%d, 199]", last.N(), last.K(), k)
	}
	dy, x := c.Alloc(199, n), c.Alloc(199, k)
	c.MatMulDW(dw, dy, x)
	if len(c.wpool) != maxScratchWeights || c.wpool[len(c.wpool)-1] != last {
		t.Fatal("the scratch weight of shape [64, 199] was not reused")
	}
}

// TestRegistered: importing the package registers "cpu", which engine.OpenDevice opens for
// "cpu" and, in a program without accelerators, for "auto".
func TestRegistered(t *testing.T) {
	d, err := engine.OpenDevice("cpu", engine.DeviceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Backend.(*Backend); !ok || d.Chosen != d.Name() || !strings.HasPrefix(d.Chosen, "cpu (") {
		t.Fatalf("cpu: %T %q", d.Backend, d.Chosen)
	}
	if d.Info.Kind != "cpu" || d.Info.Name != d.Name() || d.Info.BF16 != HasBF16Dot() || d.Info.MemoryBytes <= 0 {
		t.Errorf("cpu: info %+v", d.Info)
	}
	d, err = engine.OpenDevice("auto", engine.DeviceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Backend.(*Backend); !ok || d.Chosen != d.Name()+" (auto: this program has no accelerator backend built in)" {
		t.Fatalf("auto: %T %q", d.Backend, d.Chosen)
	}
	if d.Name() != "cpu ("+KernelISA()+")" && d.Name() != "cpu ("+KernelISA()+", bf16 dot)" {
		t.Fatalf("name %q", d.Name())
	}
}

// TestDeviceOptions: the options of engine.OpenDevice reach the CPU backend as data — matmul
// precision (bf16 only where the CPU has AVX512_BF16), threads, pool limit — and a bad one is
// refused naming its flag; Close empties the pool.
func TestDeviceOptions(t *testing.T) {
	for _, tc := range []struct {
		opts    engine.DeviceOptions
		prec    Precision
		thr     kern.Threads
		pool    int64
		wantErr string
	}{
		{engine.DeviceOptions{}, PrecisionAuto, 0, DefaultPoolLimit, ""},
		{engine.DeviceOptions{MatMulPrecision: "fp32", Threads: 3, PoolLimitBytes: 1 << 20}, PrecisionFP32, 3, 1 << 20, ""},
		{engine.DeviceOptions{MatMulPrecision: "auto", PoolLimitBytes: -1}, PrecisionAuto, 0, 0, ""},
		{engine.DeviceOptions{MatMulPrecision: "fp16"}, 0, 0, 0, `--matmul-precision "fp16": want auto, fp32 or bf16`},
		{engine.DeviceOptions{MatMulPrecision: "bf16"}, PrecisionBF16, 0, DefaultPoolLimit, map[bool]string{true: "", false: "this CPU has no AVX512_BF16"}[HasBF16Dot()]},
	} {
		d, err := engine.OpenDevice("cpu", tc.opts)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%+v: %v, want an error with %q", tc.opts, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%+v: %v", tc.opts, err)
		}
		c := d.Backend.(*Backend)
		if c.prec != tc.prec || c.thr != tc.thr || c.poolLimit != tc.pool {
			t.Errorf("%+v: precision %v threads %v pool %d, want %v %v %d", tc.opts, c.prec, c.thr, c.poolLimit, tc.prec, tc.thr, tc.pool)
		}
		x := c.Alloc(1000)
		c.Free(x)
		if tc.pool > 0 && c.pooled == 0 {
			t.Errorf("%+v: a freed buffer was not pooled", tc.opts)
		}
		if err := d.Close(); err != nil || c.pooled != 0 || len(c.pool) != 0 {
			t.Errorf("%+v: after Close: %v, %d bytes pooled", tc.opts, err, c.pooled)
		}
	}
}

// TestThreads: with WithThreads(1) every op runs as one chunk, so SumSquares is the plain
// float64 sum in order; matmuls give the same bits for every thread count (each output is one
// FMA chain over k), and a parameter's matmul, repacked after a write, too.
func TestThreads(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	data := func(k int) []float32 {
		d := make([]float32, k)
		for i := range d {
			d[i] = float32(rng.NormFloat64())
		}
		return d
	}
	const m, n, k = 33, 65, 300
	xh, wh, w2 := data(m*k), data(n*k), data(n*k)
	big := data(1 << 18)
	var want float64
	for _, v := range big {
		want += float64(v) * float64(v)
	}
	var ref []float32
	for _, threads := range []int{0, 1, 2, 3, 5} {
		c := New(WithThreads(threads))
		x, _ := c.Upload(engine.F32, xh, false, m, k)
		s, _ := c.Upload(engine.F32, big, false, len(big))
		if threads == 1 {
			if got, err := c.SumSquares(s); err != nil || math.Float64bits(got) != math.Float64bits(want) {
				t.Fatalf("one thread: SumSquares %v, serial sum %v", got, want)
			}
		}
		w, _ := c.UploadParam(wh, n, k)
		y := c.Alloc(m, n)
		c.MatMul(y, x, w)
		c.Copy(w, &engine.Tensor{Shape: []int{n, k}, DType: engine.F32, Buf: w2})
		y2 := c.Alloc(m, n)
		c.MatMul(y2, x, w)
		got := make([]float32, 2*m*n)
		if err := c.Download(y, got[:m*n]); err != nil {
			t.Fatal(err)
		}
		if err := c.Download(y2, got[m*n:]); err != nil {
			t.Fatal(err)
		}
		if ref == nil {
			ref = got
			continue
		}
		for i := range got {
			if math.Float32bits(got[i]) != math.Float32bits(ref[i]) {
				t.Fatalf("threads %d: y[%d] = %g, default threads %g", threads, i, got[i], ref[i])
			}
		}
	}
}

// TestMatMuls: the one-pass projections of an input through an inference weight (fp32 and
// bf16) and a trainable parameter give each output the bits of its own MatMul, whose values
// TestMatMul checks against a float64 oracle; mismatched shapes panic naming them.
func TestMatMuls(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	data := func(n int) []float32 {
		d := make([]float32, n)
		for i := range d {
			d[i] = float32(r.NormFloat64())
		}
		return d
	}
	const m, k = 3, 96
	ns := []int{64, 40, 33}
	c := New()
	x, _ := c.Upload(engine.F32, data(m*k), false, m, k)
	w0, _ := c.Upload(engine.F32, data(ns[0]*k), true, ns[0], k)
	w1, _ := c.Upload(engine.BF16, data(ns[1]*k), true, ns[1], k)
	w2, _ := c.UploadParam(data(ns[2]*k), ns[2], k)
	ws := []*engine.Tensor{w0, w1, w2}
	outs := []*engine.Tensor{c.Alloc(m, ns[0]), c.Alloc(m, ns[1]), c.Alloc(m, ns[2])}
	c.MatMuls(outs, x, ws)
	for i, w := range ws {
		alone := c.Alloc(m, ns[i])
		c.MatMul(alone, x, w)
		got, want := make([]float32, m*ns[i]), make([]float32, m*ns[i])
		if err := c.Download(outs[i], got); err != nil {
			t.Fatal(err)
		}
		if err := c.Download(alone, want); err != nil {
			t.Fatal(err)
		}
		for j := range got {
			if math.Float32bits(got[j]) != math.Float32bits(want[j]) {
				t.Fatalf("weight %d: y[%d] = %g, MatMul gives %g", i, j, got[j], want[j])
			}
		}
	}
	defer func() {
		if p := recover(); p == nil || !strings.Contains(p.(string), "[3 40]") {
			t.Errorf("MatMuls with a [3,40] output for a [33,96] weight: panic %v, want one naming the shapes", p)
		}
	}()
	c.MatMuls([]*engine.Tensor{outs[1]}, x, []*engine.Tensor{w2})
}

// TestAutoPrecision: with PrecisionAuto a bf16 weight becomes a dot-product weight exactly where
// the kernel path prefers them (kern's rule: AMX, or VDPBF16PS on AMD), never on a path that
// would emulate them; PrecisionFP32 never; the backend's name says which.
func TestAutoPrecision(t *testing.T) {
	for _, isa := range KernelISAs() {
		restore, err := SetKernelISA(isa)
		if err != nil {
			t.Fatal(err)
		}
		if BF16DotEngine() == "emulated" && BF16DotPreferred() {
			t.Errorf("%s: the emulated bf16 dot products are preferred", isa)
		}
		for _, prec := range []Precision{PrecisionAuto, PrecisionFP32} {
			c := New(WithMatMulPrecision(prec))
			w, err := c.Upload(engine.BF16, make([]float32, 64*64), true, 64, 64)
			if err != nil {
				t.Fatal(err)
			}
			want := prec == PrecisionAuto && BF16DotPreferred()
			if got := w.Buf.(*kern.Weight).Dot(); got != want {
				t.Errorf("%s, %v: dot weight %v, want %v (engine %s)", isa, prec, got, want, BF16DotEngine())
			}
			if got := strings.Contains(c.Name(), "bf16 dot"); got != want {
				t.Errorf("%s, %v: name %q", isa, prec, c.Name())
			}
		}
		restore()
	}
	if _, err := SetKernelISA("z80"); err == nil || !strings.Contains(err.Error(), `"z80"`) {
		t.Errorf("SetKernelISA(z80): %v", err)
	}
}

// TestAllocUninit: AllocUninit hands out a pooled buffer as it was left (UninitAsIs), cleared
// (UninitZero) or filled with NaN (UninitNaN, also what PROLONG_CPU_POISON=1 makes the default),
// new buffers included; Alloc clears a buffer that AllocUninit poisoned.
func TestAllocUninit(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []Option
		env  string
		want func(old float32) float32 // what a pooled buffer's element reads
		new  func() float32            // what a new buffer's element reads
	}{
		{"as-is", nil, "", func(old float32) float32 { return old }, func() float32 { return 0 }},
		{"zero", []Option{WithUninitFill(UninitZero)}, "", func(float32) float32 { return 0 }, func() float32 { return 0 }},
		{"nan", []Option{WithUninitFill(UninitNaN)}, "", func(float32) float32 { return float32(math.NaN()) }, func() float32 { return float32(math.NaN()) }},
		{"env", nil, "1", func(float32) float32 { return float32(math.NaN()) }, func() float32 { return float32(math.NaN()) }},
		{"env, option wins", []Option{WithUninitFill(UninitAsIs)}, "1", func(old float32) float32 { return old }, func() float32 { return 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(PoisonEnv, tc.env)
			c := New(tc.opts...)
			same := func(a, b float32) bool { return math.Float32bits(a) == math.Float32bits(b) }
			fresh := c.AllocUninit(3, 7)
			for i, v := range f32(fresh) {
				if !same(v, tc.new()) {
					t.Fatalf("new buffer [%d] = %v, want %v", i, v, tc.new())
				}
			}
			a := c.Alloc(4, 5) // 20 floats, class 20
			buf := f32(a)
			for i := range buf {
				buf[i] = float32(i) + 0.5
			}
			c.Free(a)
			b := c.AllocUninit(2, 9) // 18 floats, class 20: the same storage
			got := f32(b)
			if &got[0] != &buf[0] || len(got) != 18 {
				t.Fatalf("pooled buffer not reused (len %d)", len(got))
			}
			for i, v := range got {
				if want := tc.want(float32(i) + 0.5); !same(v, want) {
					t.Fatalf("reused buffer [%d] = %v, want %v", i, v, want)
				}
			}
			c.Free(b)
			z := c.Alloc(20)
			for i, v := range f32(z) {
				if v != 0 {
					t.Fatalf("Alloc after AllocUninit: [%d] = %v, want 0", i, v)
				}
			}
		})
	}
}
