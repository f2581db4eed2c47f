package cpu

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestPoolLimit: freed buffers are reused (same storage, zeroed) while the pool holds at most
// its limit in bytes; beyond it buffers are dropped (the rollout server's small pool).
func TestPoolLimit(t *testing.T) {
	c := New(WithPoolLimit(1000)) // 250 floats
	a := c.Alloc(10, 10)          // 400 bytes
	buf := a.Buf.([]float32)
	buf[3] = 7
	c.Free(a)
	if c.pooled != 400 || a.Buf != nil {
		t.Fatalf("after one free: pooled %d", c.pooled)
	}
	b := c.Alloc(4, 25) // same size: the same storage, cleared
	if got := b.Buf.([]float32); &got[0] != &buf[0] || got[3] != 0 || c.pooled != 0 {
		t.Fatalf("not reused or not cleared: %v, pooled %d", got[3], c.pooled)
	}
	for _, shape := range [][]int{{10, 10}, {5, 10}, {20, 10}, {3, 3}} {
		c.Free(c.Alloc(shape...))
		if c.pooled > c.poolLimit {
			t.Fatalf("pool %d bytes over its %d limit", c.pooled, c.poolLimit)
		}
	}
	// 400 + 200 + 36 bytes kept, the 800-byte buffer dropped.
	if c.pooled != 636 || len(c.pool[200]) != 0 {
		t.Fatalf("pooled %d bytes, %d buffers of 200 floats", c.pooled, len(c.pool[200]))
	}
	c.Free(b)
	if c.pooled != 636 { // no room for 400 more
		t.Fatalf("pooled %d", c.pooled)
	}
	// Parameters and packed weights are not pooled.
	p, _ := c.UploadParam(make([]float32, 4), 2, 2)
	w, _ := c.Upload(engine.F32, make([]float32, 4), true, 2, 2)
	c.Free(p)
	c.Free(w)
	if c.pooled != 636 || p.Buf != nil || w.Buf != nil {
		t.Fatalf("after freeing a parameter and a weight: pooled %d", c.pooled)
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

// TestRegistered: importing the package registers "cpu", which engine.OpenDevice opens for
// "cpu" and, in a program without accelerators, for "auto".
func TestRegistered(t *testing.T) {
	b, line, err := engine.OpenDevice("cpu")
	if _, ok := b.(*Backend); err != nil || !ok || line != b.Name() || !strings.HasPrefix(line, "cpu (") {
		t.Fatalf("cpu: %T %q %v", b, line, err)
	}
	b, line, err = engine.OpenDevice("auto")
	if _, ok := b.(*Backend); err != nil || !ok || line != b.Name()+" (auto: this program has no accelerator backend built in)" {
		t.Fatalf("auto: %T %q %v", b, line, err)
	}
	if b.Name() != "cpu ("+KernelISA()+")" && b.Name() != "cpu ("+KernelISA()+", bf16 dot)" {
		t.Fatalf("name %q", b.Name())
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
			if got := c.SumSquares(s); math.Float64bits(got) != math.Float64bits(want) {
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
