package cuda

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prolong-rl/prolong/cuda/internal/kernelgen"
	"github.com/prolong-rl/prolong/engine"
)

// kernelOutputs lists, per kernel, the positions of its writable pointer parameters (a
// pointer type without const): what a launch writes.
var kernelOutputs = sync.OnceValue(func() map[string][]int {
	ks, err := kernelgen.Parse("kernels", []byte(KernelSource()))
	if err != nil {
		panic(err)
	}
	out := map[string][]int{}
	for _, k := range ks {
		for i, p := range k.Params {
			if strings.HasSuffix(p.CType, "*") && !strings.HasPrefix(p.CType, "const") {
				out[k.Name] = append(out[k.Name], i)
			}
		}
	}
	return out
})

// conversions walks the fake's calls from call index c0 (launch index l0, GEMM index m0) and
// tallies its f32_to_bf16_kernel launches by the last writer of the tensor each converts: the
// kernel whose output pointer, or the GEMM whose C, was that tensor's address last ("?": none
// seen since c0). It also returns how many kernels were launched.
func (g *fakeGPU) conversions(c0, l0, m0 int) (byWriter map[string]int, launches int) {
	byWriter = map[string]int{}
	writer := map[uint64]string{}
	li, mi := l0, m0
	for _, c := range g.calls[c0:] {
		switch c {
		case "launchKernel":
			l := g.launches[li]
			li++
			if l.name == "f32_to_bf16_kernel" {
				w := writer[l.args[1]]
				if w == "" {
					w = "?"
				}
				byWriter[w]++
				continue
			}
			for _, i := range kernelOutputs()[l.name] {
				writer[l.args[i]] = l.name
			}
		case "blas.gemmEx":
			writer[g.gemms[mi].c] = "gemm"
			mi++
		}
	}
	return byWriter, li - l0
}

// foldedKernels are the producers whose outputs' conversions Options.FoldBF16 folds: the
// unfused kernels and the folding ones.
var foldedKernels = []string{"rmsnorm", "add_rmsnorm", "swiglu", "swiglu_bwd", "attn_paged_gqa", "rmsnorm_bwd_dx",
	"rmsnorm_bf16", "add_rmsnorm_bf16", "swiglu_out_bf16", "swiglu_bwd_bf16", "attn_paged_gqa_bf16", "rmsnorm_bwd_dx_bf16"}

// foldTally is the conversions of one phase of foldWorkload.
type foldTally struct {
	byWriter map[string]int
	launches int
}

func (f foldTally) total() (n int) {
	for _, c := range f.byWriter {
		n += c
	}
	return n
}

func (f foldTally) folded() (n int) {
	for _, k := range foldedKernels {
		n += f.byWriter[k]
	}
	return n
}

// foldRequests are 12 prompts of 3 tokens, each sampled once greedily for steps tokens: a
// prefill of 36 rows, then decode steps of 12 rows (above the 8 that the matrix-vector kernels
// take, so the projections run GEMMs on bf16 copies).
func foldRequests(steps int) []engine.Request {
	var rs []engine.Request
	for i := range 12 {
		rs = append(rs, engine.Request{Prompt: []int32{int32(i + 1), int32(2*i + 3), 7}, Params: engine.SamplingParams{MaxNewTokens: steps}})
	}
	return rs
}

// foldWorkload runs on the fake GPU g with options o and a model of config c a training step's ForwardBackward
// (uninitBatch: 57 tokens) and two generations of foldRequests (2 and 3 new tokens: the
// prefill and one decode step, then one more), and tallies each phase's conversions.
func foldWorkload(t *testing.T, g *fakeGPU, o Options, c *engine.Config) map[string]foldTally {
	t.Helper()
	b, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	m, err := engine.NewModel(c, b, engine.RandomWeights(c, 1, 0.25), engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := engine.NewTrainer(m, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-3}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	out := map[string]foldTally{}
	phase := func(name string, f func() error) {
		c0, l0, m0 := len(g.calls), len(g.launches), len(g.gemms)
		if err := f(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := b.Sync(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var tl foldTally
		tl.byWriter, tl.launches = g.conversions(c0, l0, m0)
		out[name] = tl
	}
	batch := uninitBatch(c.VocabSize)
	phase("train", func() error {
		w := make([][]float64, len(batch))
		for i, s := range batch {
			w[i] = make([]float64, len(s.Tokens)-s.Start)
			for j := range w[i] {
				w[i][j] = float64(j%3) - 1
			}
		}
		_, err := tr.ForwardBackward(context.Background(), batch, engine.WeightedLogProb(w, w))
		return err
	})
	for _, steps := range []int{2, 3} {
		phase(fmt.Sprintf("generate %d", steps), func() error {
			gen, err := engine.NewGenerator(m, engine.GeneratorOptions{MaxSeqs: 16})
			if err != nil {
				return err
			}
			defer gen.Close()
			_, err = gen.Generate(context.Background(), foldRequests(steps))
			return err
		})
	}
	// One decode step of 12 rows: the difference of the two generations.
	d := foldTally{byWriter: map[string]int{}, launches: out["generate 3"].launches - out["generate 2"].launches}
	for k, n := range out["generate 3"].byWriter {
		d.byWriter[k] = n - out["generate 2"].byWriter[k]
	}
	out["decode step"] = d
	return out
}

// TestFoldBF16Conversions (fake GPU): with BF16Matmul, a training step's forward and backward,
// a prefill and a decode step of 12 rows convert the outputs of RMSNorm, AddRMSNorm, SwiGLU,
// SwiGLUBackward, qk-norm's backward and the paged attention (attn_paged_gqa) with
// f32_to_bf16_kernel before the
// GEMMs read them; with FoldBF16 too, none
// (every other conversion stays), and each phase launches that many kernels fewer. The
// conversions are told apart by the kernel that last wrote the converted address.
func TestFoldBF16Conversions(t *testing.T) {
	base := Options{BF16Matmul: true, FusedAddRMSNorm: true}
	on := base
	on.FoldBF16 = true
	off := foldWorkload(t, newFakeGPU(t, 90, 1<<34), base, graphTestConfig)
	fold := foldWorkload(t, newFakeGPU(t, 90, 1<<34), on, graphTestConfig)
	// Qwen3's qk-norm: its backward's dq and dk feed the Q and K projections' backward.
	qk := *graphTestConfig
	qk.ModelType, qk.QKNorm, qk.AttentionBias = "qwen3", true, false
	off["train qk-norm"] = foldWorkload(t, newFakeGPU(t, 90, 1<<34), base, &qk)["train"]
	fold["train qk-norm"] = foldWorkload(t, newFakeGPU(t, 90, 1<<34), on, &qk)["train"]
	// Per layer (2 layers): h1 (rmsnorm), h2 (add_rmsnorm), mm (swiglu); in training also dgate
	// and dup (swiglu_bwd), with qk-norm dq and dk (rmsnorm_bwd_dx); in generation the attention
	// output (attn_paged_gqa) and once per pass the final norm's rows (rmsnorm). Training
	// attention (attn_train) is not folded.
	want := map[string]map[string]int{
		"train":         {"rmsnorm": 2, "add_rmsnorm": 2, "swiglu": 2, "swiglu_bwd": 4},
		"train qk-norm": {"rmsnorm": 2, "add_rmsnorm": 2, "swiglu": 2, "swiglu_bwd": 4, "rmsnorm_bwd_dx": 4},
		"generate 2":    {"rmsnorm": 2*2 + 2, "add_rmsnorm": 2 * 2, "swiglu": 2 * 2, "attn_paged_gqa": 2 * 2},
		"decode step":   {"rmsnorm": 2 + 1, "add_rmsnorm": 2, "swiglu": 2, "attn_paged_gqa": 2},
	}
	for _, ph := range []string{"train", "train qk-norm", "generate 2", "decode step"} {
		o, f := off[ph], fold[ph]
		t.Logf("%s: FoldBF16 off: %d conversions (%v), %d launches; on: %d conversions (%v), %d launches",
			ph, o.total(), o.byWriter, o.launches, f.total(), f.byWriter, f.launches)
		for _, k := range foldedKernels {
			if o.byWriter[k] != want[ph][k] {
				t.Errorf("%s, off: %d conversions of %s's output, want %d", ph, o.byWriter[k], k, want[ph][k])
			}
		}
		if f.folded() != 0 {
			t.Errorf("%s, on: %d conversions of folded outputs (%v), want none", ph, f.folded(), f.byWriter)
		}
		if f.total() != o.total()-o.folded() || f.launches != o.launches-o.folded() {
			t.Errorf("%s: on %d conversions and %d launches, want %d and %d (off less the %d folded)",
				ph, f.total(), f.launches, o.total()-o.folded(), o.launches-o.folded(), o.folded())
		}
	}
}

// foldLaunches runs f and returns the kernels it launched and the GEMMs it enqueued.
func foldLaunches(t *testing.T, g *fakeGPU, b *Backend, f func()) ([]fakeLaunch, []gemm) {
	t.Helper()
	l0, m0 := len(g.launches), len(g.gemms)
	f()
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	return slices.Clone(g.launches[l0:]), slices.Clone(g.gemms[m0:])
}

func names(ls []fakeLaunch) []string {
	var s []string
	for _, l := range ls {
		s = append(s, l.name)
	}
	return s
}

// anyArg in an expected launch argument matches any value (a metadata upload's address).
const anyArg = ^uint64(0)

// TestFoldBF16Ops (fake GPU): RMSNorm (also in place), AddRMSNorm, SwiGLU, Attention (the paged
// GQA kernel), RMSNormBackward over heads (qk-norm, in place) and SwiGLUBackward
// with FoldBF16 and BF16Matmul launch their folding kernels with the fp32 output, its bf16
// copy (the tensor's own, beside it), the inputs and the weight; the GEMMs that read the
// output next (MatMul; MatMulDX and MatMulDW for the backward's) read that copy and launch no
// conversion; after an in-place write of the output (AddBias, Scale) the next GEMM converts it
// again, into the same copy.
func TestFoldBF16Ops(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{BF16Matmul: true, FoldBF16: true})
	if err != nil {
		t.Fatal(err)
	}
	const T, D, I = 16, 64, 96
	const eps = float32(1e-6)
	epsBits := uint64(math.Float32bits(eps))
	w := b.Alloc(D)
	wq := fakeWeight(t, b, engine.F32, 32, D)  // a projection of the normed rows
	wd := fakeWeight(t, b, engine.F32, D, I)   // the down projection
	wg := fakeWeight(t, b, engine.F32, I, D)   // the gate projection
	wq2 := fakeWeight(t, b, engine.F32, D, 64) // o_proj
	p := func(ts ...*engine.Tensor) []uint64 { // addresses, a tensor's bf16 copy as its pointer's bf
		var s []uint64
		for _, t := range ts {
			s = append(s, uint64(ptr(t)))
		}
		return s
	}
	bf := func(t *engine.Tensor) uint64 { return devBuf(t).bf }
	// warm makes the bf16 copies of tensors current (the weights', and inputs' other than the
	// folded output), so that the GEMMs below convert nothing else.
	warm := func(ts ...*engine.Tensor) {
		b.op(desc("warm"), func() {
			for _, t := range ts {
				b.bf16Copy(t)
			}
		})
	}
	warm(wq, wd, wg, wq2)

	type folded struct {
		out *engine.Tensor // a folded output
		use func()         // a GEMM that reads it
	}
	for _, tc := range []struct {
		name  string
		setup func() (run func(), kernel string, args func() []uint64, outs []folded)
	}{
		{"RMSNorm", func() (func(), string, func() []uint64, []folded) {
			x, out, y := b.Alloc(T, D), b.Alloc(T, D), b.Alloc(T, 32)
			return func() { b.RMSNorm(out, x, w, eps) }, "rmsnorm_bf16",
				func() []uint64 {
					return []uint64{uint64(ptr(out)), bf(out), uint64(ptr(x)), uint64(ptr(w)), D, epsBits}
				},
				[]folded{{out, func() { b.MatMul(y, out, wq) }}}
		}},
		{"RMSNorm/inplace", func() (func(), string, func() []uint64, []folded) {
			x, y := b.Alloc(T, D), b.Alloc(T, 32)
			return func() { b.RMSNorm(x, x, w, eps) }, "rmsnorm_bf16",
				func() []uint64 { return []uint64{uint64(ptr(x)), bf(x), uint64(ptr(x)), uint64(ptr(w)), D, epsBits} },
				[]folded{{x, func() { b.MatMul(y, x, wq) }}}
		}},
		{"AddRMSNorm", func() (func(), string, func() []uint64, []folded) {
			x, r, normed, y := b.Alloc(T, D), b.Alloc(T, D), b.Alloc(T, D), b.Alloc(T, 32)
			return func() { b.AddRMSNorm(x, normed, x, r, w, eps) }, "add_rmsnorm_bf16",
				func() []uint64 {
					return []uint64{uint64(ptr(x)), uint64(ptr(normed)), bf(normed), uint64(ptr(x)), uint64(ptr(r)), uint64(ptr(w)), D, epsBits}
				},
				[]folded{{normed, func() { b.MatMul(y, normed, wq) }}}
		}},
		{"SwiGLU", func() (func(), string, func() []uint64, []folded) {
			gate, up, mm, y := b.Alloc(T, I), b.Alloc(T, I), b.Alloc(T, I), b.Alloc(T, D)
			return func() { b.SwiGLU(mm, gate, up) }, "swiglu_out_bf16",
				func() []uint64 { return []uint64{uint64(ptr(mm)), bf(mm), uint64(ptr(gate)), uint64(ptr(up)), T * I} },
				[]folded{{mm, func() { b.MatMul(y, mm, wd) }}}
		}},
		{"Attention", func() (func(), string, func() []uint64, []folded) {
			// 12 new tokens, each its own sequence of one position; H = 4, KV = 2, Dh = 16.
			const H, KV, dh = 4, 2, 16
			st, err := b.NewKVStore(1, KV, engine.DefaultBlockSize, dh, T, engine.F32)
			if err != nil {
				t.Fatal(err)
			}
			ab := &engine.AttnBatch{SeqStart: []int32{0}}
			for i := range int32(12) {
				ab.Blocks = append(ab.Blocks, []int32{i})
				ab.CtxLen = append(ab.CtxLen, 1)
				ab.Slots = append(ab.Slots, i*engine.DefaultBlockSize)
				ab.SeqStart = append(ab.SeqStart, i+1)
			}
			q, k, v, out, y := b.Alloc(12, H*dh), b.Alloc(12, KV*dh), b.Alloc(12, KV*dh), b.Alloc(12, H*dh), b.Alloc(12, D)
			kv := st.(*kvStore)
			return func() { b.Attention(out, q, k, v, st, 0, ab) }, "attn_paged_gqa_bf16",
				func() []uint64 {
					return []uint64{uint64(ptr(out)), bf(out), uint64(ptr(q)), kv.k[0], kv.v[0], anyArg, H, KV, dh,
						engine.DefaultBlockSize, uint64(math.Float32bits(0.25))}
				},
				[]folded{{out, func() { b.MatMul(y, out, wq2) }}}
		}},
		{"RMSNormBackward/heads", func() (func(), string, func() []uint64, []folded) {
			// qk-norm's backward in place on dq [T, 4 heads of 16], as the engine calls it.
			dq, qb, wn, gwn, dh := b.Alloc(T, 64), b.Alloc(T, 64), b.Alloc(16), b.Alloc(16), b.Alloc(T, 64)
			return func() { b.RMSNormBackward(dq, gwn, dq, qb, wn, eps) }, "rmsnorm_bwd_dx_bf16",
				func() []uint64 {
					return []uint64{uint64(ptr(dq)), bf(dq), anyArg, uint64(ptr(dq)), uint64(ptr(qb)), uint64(ptr(wn)), T * 64, 16}
				},
				[]folded{{dq, func() { b.MatMulDX(dh, dq, wq2) }}}
		}},
		{"SwiGLUBackward", func() (func(), string, func() []uint64, []folded) {
			dg, du, dmm, gate, up := b.Alloc(T, I), b.Alloc(T, I), b.Alloc(T, I), b.Alloc(T, I), b.Alloc(T, I)
			h, dh, gw := b.Alloc(T, D), b.Alloc(T, D), b.Alloc(I, D)
			warm(h)
			return func() { b.SwiGLUBackward(dg, du, dmm, gate, up) }, "swiglu_bwd_bf16",
				func() []uint64 {
					return append([]uint64{uint64(ptr(dg)), uint64(ptr(du)), bf(dg), bf(du)}, append(p(dmm, gate, up), T*I)...)
				},
				[]folded{{dg, func() { b.MatMulDX(dh, dg, wg) }}, {du, func() { b.MatMulDW(gw, du, h) }}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run, kernel, args, outs := tc.setup()
			ls, _ := foldLaunches(t, g, b, run)
			ls = slices.DeleteFunc(ls, func(l fakeLaunch) bool { // the ops' other launches
				return slices.Contains([]string{"kv_write", "rmsnorm_bwd_stats", "rmsnorm_bwd_dw_part", "colsum_add"}, l.name)
			})
			if got := names(ls); !slices.Equal(got, []string{kernel}) {
				t.Fatalf("launches %v, want %s alone", got, kernel)
			}
			want := args()
			for i, a := range want {
				if a == anyArg && i < len(ls[0].args) {
					want[i] = ls[0].args[i]
				}
			}
			if !slices.Equal(ls[0].args, want) {
				t.Fatalf("%s args %#x, want %#x", kernel, ls[0].args, want)
			}
			for _, o := range outs {
				if bf(o.out) == 0 {
					t.Fatalf("output %v has no bf16 copy", o.out.Shape)
				}
				ls, gs := foldLaunches(t, g, b, o.use)
				reads := func(gs []gemm) bool {
					for _, m := range gs {
						if m.a == bf(o.out) || m.b == bf(o.out) {
							return true
						}
					}
					return false
				}
				if len(ls) != 0 || len(gs) != 1 || !reads(gs) {
					t.Fatalf("GEMM after %s: launches %v, GEMMs %+v; want no launch and one GEMM reading the copy %#x", kernel, names(ls), gs, bf(o.out))
				}
				// An in-place write makes the copy stale: the next GEMM converts again.
				bias := b.Alloc(o.out.Cols())
				for _, write := range []func(){func() { b.AddBias(o.out, bias) }, func() { b.Scale(o.out, 2) }} {
					write()
					ls, gs = foldLaunches(t, g, b, o.use)
					conv := []uint64{bf(o.out), uint64(ptr(o.out)), uint64(o.out.Len())}
					if !slices.Equal(names(ls), []string{"f32_to_bf16_kernel"}) || !slices.Equal(ls[0].args, conv) || !reads(gs) {
						t.Fatalf("GEMM after an in-place write: launches %v, GEMMs %+v; want one conversion with args %#x and a GEMM reading it", ls, gs, conv)
					}
				}
			}
		})
	}
}

// TestFoldBF16Unfused (fake GPU): the plain kernels run, and no copy is written, without
// FoldBF16; without bf16 GEMMs (neither BF16Matmul nor a bf16 weight, until one is uploaded);
// for decoding rows (at most 8, which the matrix-vector kernels read in fp32); and for a norm
// over heads (qk-norm, which RoPE rewrites next). The training backward without bf16 GEMMs
// runs swiglu_bwd; RMSNormBackward folds only over heads (qk-norm's dq, dk), not over rows.
func TestFoldBF16Unfused(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	const eps = float32(1e-6)
	for _, tc := range []struct {
		name   string
		o      Options
		rows   int
		width  int  // of the rows
		wn     int  // of the norm's weight: width for a row norm, less for heads
		bf16W  bool // upload a bf16 linear weight first
		kernel string
	}{
		{"off", Options{BF16Matmul: true}, 16, 64, 64, false, "rmsnorm"},
		{"fp32-gemms", Options{FoldBF16: true}, 16, 64, 64, false, "rmsnorm"},
		{"bf16-weights", Options{FoldBF16: true}, 16, 64, 64, true, "rmsnorm_bf16"}, // after fp32-gemms: the same backend
		{"decode-rows", Options{BF16Matmul: true, FoldBF16: true}, 8, 64, 64, false, "rmsnorm"},
		{"decode-rows-odd-width", Options{BF16Matmul: true, FoldBF16: true}, 8, 60, 60, false, "rmsnorm_bf16"}, // MatMul's GEMM: K%8 != 0
		{"prefill-rows", Options{BF16Matmul: true, FoldBF16: true}, 9, 64, 64, false, "rmsnorm_bf16"},
		{"heads", Options{BF16Matmul: true, FoldBF16: true}, 16, 64, 16, false, "rmsnorm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Open(tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if tc.bf16W {
				fakeWeight(t, b, engine.BF16, 8, 64)
			}
			x, out, w := b.Alloc(tc.rows, tc.width), b.Alloc(tc.rows, tc.width), b.Alloc(tc.wn)
			ls, _ := foldLaunches(t, g, b, func() { b.RMSNorm(out, x, w, eps) })
			if got := names(ls); !slices.Equal(got, []string{tc.kernel}) {
				t.Fatalf("launches %v, want %s", got, tc.kernel)
			}
			if tc.kernel == "rmsnorm" && devBuf(out).bf != 0 {
				t.Fatalf("a bf16 copy allocated for out without a folding kernel")
			}
			if tc.name == "heads" || tc.name == "prefill-rows" {
				// The backward folds the opposite way: a norm over heads (qk-norm: its dx feeds the
				// projections' backward), not over rows (its dx goes to an Add).
				dx, gw := b.Alloc(tc.rows, tc.width), b.Alloc(tc.wn)
				ls, _ := foldLaunches(t, g, b, func() { b.RMSNormBackward(dx, gw, x, out, w, eps) })
				want := map[string]string{"heads": "rmsnorm_bwd_dx_bf16", "prefill-rows": "rmsnorm_bwd_dx"}[tc.name]
				if got := names(ls); got[len(got)-1] != want {
					t.Fatalf("RMSNormBackward: launches %v, want %s last", got, want)
				}
			}
			if tc.name == "fp32-gemms" {
				dg, du, d := b.Alloc(16, 96), b.Alloc(16, 96), b.Alloc(16, 96)
				ls, _ := foldLaunches(t, g, b, func() { b.SwiGLUBackward(dg, du, d, d, d) })
				if got := names(ls); !slices.Equal(got, []string{"swiglu_bwd"}) {
					t.Fatalf("SwiGLUBackward without bf16 GEMMs: launches %v, want swiglu_bwd", got)
				}
			}
		})
	}
}

// bf16Nearest is the bf16 nearest to a finite f in value (ties to the even mantissa), chosen by
// comparing distances in float64, and its NaN a quiet NaN with f's sign and top payload bits:
// a reference independent of f32_to_bf16's integer trick. Above the largest bf16 by half an
// ulp or more is infinity.
func bf16Nearest(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	if u&0x7fffffff == 0x7f800000 {
		return uint16(u >> 16)
	}
	lo := uint16(u >> 16) // truncation: toward zero
	hi := lo + 1          // the next bf16 away from zero
	val := func(h uint16) float64 {
		if h&0x7fff == 0x7f80 { // infinity, as the next step of the binade: 2^128
			return math.Copysign(math.Ldexp(1, 128), float64(bf16ToF32(h&0x8000|0x3f80)))
		}
		return float64(bf16ToF32(h))
	}
	v := float64(f)
	dl, dh := math.Abs(v-val(lo)), math.Abs(val(hi)-v)
	switch {
	case dl < dh:
		return lo
	case dh < dl:
		return hi
	case lo&1 == 0:
		return lo
	}
	return hi
}

// f32ToBF16Kernel is f32_to_bf16 of kernels/common.cuh, transcribed: what f32_to_bf16_kernel
// and the folding kernels store.
func f32ToBF16Kernel(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

// TestFoldBF16Rounding: f32_to_bf16 (common.cuh: the rounding of f32_to_bf16_kernel and of the
// folding kernels, and the CPU's F32ToBF16) is the nearest bf16, ties to even, for values
// worked by hand (ties both ways, subnormals, the overflow to infinity, NaN payloads) and a
// million random bit patterns.
func TestFoldBF16Rounding(t *testing.T) {
	for _, c := range []struct {
		in   uint32
		want uint16
	}{
		{0x00000000, 0x0000}, {0x80000000, 0x8000}, {0x3f800000, 0x3f80},
		{0x3f808000, 0x3f80}, // 1 + 2^-8: a tie, to the even 1
		{0x3f818000, 0x3f82}, // 1 + 3·2^-8: a tie, to the even 1 + 2^-6
		{0x3f808001, 0x3f81}, // just above the tie
		{0xbf80ffff, 0xbf81}, // -(1 + ...): by magnitude
		{0x00008000, 0x0000}, // a subnormal tie, to the even 0
		{0x00018000, 0x0002}, // a subnormal tie, to the even 2
		{0x007fffff, 0x0080}, // the largest subnormal: up to the smallest normal
		{0x7f7f7fff, 0x7f7f}, // just below the tie at the top: the largest bf16
		{0x7f7f8000, 0x7f80}, // the tie at the top: to infinity (even)
		{0x7f800000, 0x7f80}, {0xff800000, 0xff80},
		{0x7f800001, 0x7fc0}, {0xff812345, 0xffc1}, {0x7fffffff, 0x7fff},
	} {
		f := math.Float32frombits(c.in)
		if got, ref := f32ToBF16Kernel(f), bf16Nearest(f); got != c.want || ref != c.want {
			t.Errorf("%#08x: f32_to_bf16 %#04x, nearest %#04x; want %#04x", c.in, got, ref, c.want)
		}
	}
	r := rand.New(rand.NewPCG(3, 5))
	for range 1 << 20 {
		f := math.Float32frombits(r.Uint32())
		if got, ref := f32ToBF16Kernel(f), bf16Nearest(f); got != ref {
			t.Fatalf("%#08x: f32_to_bf16 %#04x, nearest %#04x", math.Float32bits(f), got, ref)
		}
	}
}

// BenchmarkFoldBF16Conversions counts, on the fake driver, the f32_to_bf16_kernel launches of
// one training step at the 1.5B shape as tools/bench times it (DeepSeek-R1-Distill-Qwen-1.5B's
// config, 8 × 1024 tokens, cross-entropy on every next token, MaxLogitRows 1024, bf16 matmuls,
// AdamW, the other options off) with Options.FoldBF16 off and on, and the bytes they move
// (each reads 4 and writes 2 bytes an element; a folding kernel still writes the 2). The
// weights are all zero and share one host buffer (the fake driver copies nothing).
//
//	go test ./cuda -run XXX -bench FoldBF16Conversions -benchtime 1x
func BenchmarkFoldBF16Conversions(bm *testing.B) {
	c, w, seqs := bench15B(bm)
	for range bm.N {
		for _, on := range []bool{false, true} {
			g := newFakeGPU(bm, 90, 1<<40)
			b, err := Open(Options{BF16Matmul: true, FoldBF16: on})
			if err != nil {
				bm.Fatal(err)
			}
			m, err := engine.NewModel(c, b, w, engine.F32)
			if err != nil {
				bm.Fatal(err)
			}
			tr, err := engine.NewTrainer(m, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-5, ClipNorm: 1}, MaxLogitRows: 1024})
			if err != nil {
				bm.Fatal(err)
			}
			step := func() (n int, elems int64) {
				l0 := len(g.launches)
				if _, err := tr.ForwardBackward(context.Background(), seqs, engine.CrossEntropy(0)); err != nil {
					bm.Fatal(err)
				}
				if _, err := tr.Step(); err != nil {
					bm.Fatal(err)
				}
				if err := b.Sync(); err != nil {
					bm.Fatal(err)
				}
				for _, l := range g.launches[l0:] {
					if l.name == "f32_to_bf16_kernel" {
						n++
						elems += int64(l.args[2])
					}
				}
				return n, elems
			}
			step() // the first step allocates the AdamW moments
			n, elems := step()
			name := map[bool]string{false: "off", true: "on"}[on]
			bm.ReportMetric(float64(n), "conversions/step-"+name)
			bm.ReportMetric(float64(6*elems)/1e9, "conversion-GB/step-"+name)
			bm.Logf("fold-bf16 %s: %d f32_to_bf16_kernel launches a step, %.2f G elements, %.2f GB read and written", name, n, float64(elems)/1e9, float64(6*elems)/1e9)
		}
	}
}
