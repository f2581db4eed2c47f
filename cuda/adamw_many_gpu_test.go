package cuda

import (
	"slices"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
)

// qwen15BTrainable lists the shapes of the trainable weights of Qwen2.5-1.5B as the optimizer
// sees them (339 tensors, lm_head untied), and which of them are matmul weights (a bf16 copy
// each with BF16Matmul).
func qwen15BTrainable() (shapes [][]int, matmul []bool) {
	const d, kv, ff, vocab, layers = 1536, 256, 8960, 151936, 28
	add := func(mm bool, sh ...int) { shapes, matmul = append(shapes, sh), append(matmul, mm) }
	add(false, vocab, d)
	for range layers {
		add(false, d)
		add(true, d, d)
		add(false, d)
		add(true, kv, d)
		add(false, kv)
		add(true, kv, d)
		add(false, kv)
		add(true, d, d)
		add(false, d)
		add(true, ff, d)
		add(true, ff, d)
		add(true, d, ff)
	}
	add(false, d)
	add(true, vocab, d)
	return shapes, matmul
}

// TestGPUAdamWManyTiming (GPU) times the optimizer update of the 1.5B shape's 339 weights with
// bf16 matmul copies: AdamW per tensor followed by the conversions the next forward makes
// (f32_to_bf16 of every matmul weight), against one AdamWMany, which writes the copies itself.
// It logs the best of five of each and checks that the two leave the same bits (the
// conformance suite's AdamWMany case checks the update on its own).
func TestGPUAdamWManyTiming(t *testing.T) {
	b := openGPU(t, Options{BF16Matmul: true, MultiTensorAdamW: true})
	shapes, matmul := qwen15BTrainable()
	if len(shapes) != 339 {
		t.Fatalf("%d trainable tensors, want 339", len(shapes))
	}
	adamWManyTiming(t, b, shapes, matmul)
}

// TestAdamWManyTimingFake runs adamWManyTiming's code on the fake GPU with small shapes (the
// fake computes nothing: this checks the test's own code, not the numbers).
func TestAdamWManyTimingFake(t *testing.T) {
	newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{BF16Matmul: true, MultiTensorAdamW: true})
	if err != nil {
		t.Fatal(err)
	}
	adamWManyTiming(t, b, [][]int{{100, 8}, {8}, {3 * adamWChunk}, {16, 8}}, []bool{false, false, true, true})
}

// adamWManyTiming is TestGPUAdamWManyTiming on the given weights.
func adamWManyTiming(t *testing.T, b *Backend, shapes [][]int, matmul []bool) {
	var ps, gs, ms, vs []*engine.Tensor
	var hs []engine.AdamWStep
	h := engine.AdamWStep{LR: 1e-5, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1, BC1: 0.1, BC2: 0.001}
	var n int
	for _, sh := range shapes {
		ps, gs, ms, vs = append(ps, b.Alloc(sh...)), append(gs, b.Alloc(sh...)), append(ms, b.Alloc(sh...)), append(vs, b.Alloc(sh...))
		hd := h
		if len(sh) == 1 {
			hd.WeightDecay = 0
		}
		hs = append(hs, hd)
		n += ps[len(ps)-1].Len()
	}
	defer func() {
		for _, ts := range [][]*engine.Tensor{ps, gs, ms, vs} {
			for _, x := range ts {
				b.Free(x)
			}
		}
	}()
	// Gradients of about 1e-3, so that the bit check below compares something.
	for _, g := range gs {
		up, err := b.Upload(engine.F32, slices.Repeat([]float32{1e-3, -2e-3, 5e-4}, (g.Len()+2)/3)[:g.Len()], false, g.Shape...)
		if err != nil {
			t.Fatal(err)
		}
		b.Copy(g, up)
		b.Free(up)
	}
	convert := func() {
		b.op(desc("bf16 copies of the matmul weights"), func() {
			for i, p := range ps {
				if matmul[i] {
					b.bf16Copy(p)
				}
			}
		})
	}
	convert() // every matmul weight gets its bf16 copy, as after a first forward
	perTensor := func() {
		for i := range ps {
			b.AdamW(ps[i], gs[i], ms[i], vs[i], hs[i])
		}
		convert()
	}
	many := func() { b.AdamWMany(ps, gs, ms, vs, hs) }
	best := func(f func()) time.Duration {
		f() // warm-up
		if err := b.Sync(); err != nil {
			t.Fatal(err)
		}
		d := time.Duration(1 << 62)
		for range 5 {
			t0 := time.Now()
			f()
			if err := b.Sync(); err != nil {
				t.Fatal(err)
			}
			d = min(d, time.Since(t0))
		}
		return d
	}
	dp, dm := best(perTensor), best(many)
	// 28 bytes an element read and written (p, g, m, v in, p, m, v out), plus 2 (bf16 copy) for
	// the matmul weights' elements.
	t.Logf("%d tensors, %.2fG elements: AdamW per tensor + bf16 conversions %.2f ms, AdamWMany %.2f ms (%.2fx)",
		len(ps), float64(n)/1e9, dp.Seconds()*1e3, dm.Seconds()*1e3, dp.Seconds()/dm.Seconds())

	// Same bits: one more step each way from the same state.
	down := func(x *engine.Tensor) []float32 {
		out := make([]float32, x.Len())
		if err := b.Download(x, out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, i := range []int{0, 1, 2, len(ps) - 1} {
		p0, m0, v0 := down(ps[i]), down(ms[i]), down(vs[i])
		b.AdamW(ps[i], gs[i], ms[i], vs[i], hs[i])
		want := [][]float32{down(ps[i]), down(ms[i]), down(vs[i])}
		for j, x := range []*engine.Tensor{ps[i], ms[i], vs[i]} {
			up, err := b.Upload(engine.F32, [][]float32{p0, m0, v0}[j], false, x.Shape...)
			if err != nil {
				t.Fatal(err)
			}
			b.Copy(x, up)
			b.Free(up)
		}
		b.AdamWMany(ps[i:i+1], gs[i:i+1], ms[i:i+1], vs[i:i+1], hs[i:i+1])
		for j, x := range []*engine.Tensor{ps[i], ms[i], vs[i]} {
			if !slices.Equal(down(x), want[j]) {
				t.Errorf("tensor %d %v, output %d: AdamWMany differs from AdamW", i, x.Shape, j)
			}
		}
	}
}
