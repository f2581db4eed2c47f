package enginetest

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/prolong-rl/prolong/engine"
)

// Forward ops of engine.Backend. Outputs that an op overwrites start from random values, so
// that a kernel that accumulates into its output, or skips elements, shows.

// matmulShape is one M×K×N product.
type matmulShape struct{ m, k, n int }

func (s matmulShape) String() string { return fmt.Sprintf("M=%d,K=%d,N=%d", s.m, s.k, s.n) }

// matmulShapes are odd sizes around tile edges, decode-sized products (a few rows, K a
// multiple of 8, as a GPU's matrix-vector kernel takes them), plus one larger product (in full
// runs) so that a GPU's tiled paths run.
func matmulShapes(o Options) []matmulShape {
	s := []matmulShape{{1, 67, 129}, {3, 129, 257}, {17, 257, 67}, {1, 256, 200}, {5, 512, 129}}
	if !o.Short {
		s = append(s, matmulShape{8, 1536, 72}, matmulShape{3, 8960, 40})
	}
	if !o.Short {
		s = append(s, matmulShape{64, 512, 1024})
	}
	return s
}

// attnShape is one attention head layout: H query heads, KV key/value heads, head dim Dh.
type attnShape struct{ h, kv, dh int }

func (s attnShape) String() string { return fmt.Sprintf("H=%d,KV=%d,Dh=%d", s.h, s.kv, s.dh) }

// attnShapes cover GQA groups H/KV of 1, 2, 6, 7 and 12 and head dims 8, 24, 64, 128 and 256
// (a GPU's grouped kernel holds up to 8 heads of up to 128 dims; the others take its general
// kernel).
func attnShapes(o Options) []attnShape {
	if o.Short {
		return []attnShape{{4, 2, 24}, {6, 1, 64}}
	}
	return []attnShape{{3, 3, 8}, {4, 2, 24}, {6, 1, 64}, {4, 2, 128}, {14, 2, 128}, {12, 1, 32}, {2, 1, 256}}
}

func forwardCases(o Options) []testCase {
	var cs []testCase
	cs = append(cs, testCase{"Embedding/V=101,D=67,T=23", func(c *caseCtx) {
		table, ids, init := randn(c.rng, 101*67, 1), randIDs(c.rng, 23, 101), randn(c.rng, 23*67, 1)
		c.both(c.tol.Elementwise, func(e *env) []output {
			out := e.up(init, 23, 67)
			e.b.Embedding(out, e.up(table, 101, 67), ids)
			return []output{{"", e.down(out)}}
		})
	}})
	for _, s := range matmulShapes(o) {
		for _, kind := range []string{"f32", "bf16", "param"} {
			cs = append(cs, testCase{"MatMul/" + s.String() + "/" + kind, func(c *caseCtx) {
				x, w, init := randn(c.rng, s.m*s.k, 1), randn(c.rng, s.n*s.k, 1/math.Sqrt(float64(s.k))), randn(c.rng, s.m*s.n, 1)
				tol := c.tol.MatMul
				if kind == "bf16" {
					tol = c.tol.MatMulBF16
				}
				c.both(tol, func(e *env) []output {
					var wt *engine.Tensor
					switch kind {
					case "f32":
						wt = e.weight(engine.F32, w, s.n, s.k)
					case "bf16":
						wt = e.weight(engine.BF16, w, s.n, s.k)
					default:
						wt = e.param(w, s.n, s.k)
					}
					out := e.up(init, s.m, s.n)
					e.b.MatMul(out, e.up(x, s.m, s.k), wt)
					return []output{{"", e.down(out)}}
				})
			}})
		}
	}
	cs = append(cs, fusedProjectionCases(o)...)
	cs = append(cs, testCase{"AddBias/M=17,N=129", func(c *caseCtx) {
		x, bias := randn(c.rng, 17*129, 1), randn(c.rng, 129, 1)
		c.both(c.tol.Elementwise, func(e *env) []output {
			xt := e.up(x, 17, 129)
			e.b.AddBias(xt, e.up(bias, 129))
			return []output{{"", e.down(xt)}}
		})
	}})
	for _, n := range []struct {
		rows, groups, size int
		inplace            bool
	}{{5, 1, 257, false}, {7, 4, 24, true}, {3, 3, 128, true}, {1, 1, 67, true}} {
		name := fmt.Sprintf("RMSNorm/rows=%d,D=%d", n.rows, n.size)
		if n.groups > 1 {
			name = fmt.Sprintf("RMSNorm/rows=%d,heads=%d,Dh=%d", n.rows, n.groups, n.size)
		}
		if n.inplace {
			name += "/inplace"
		}
		cs = append(cs, testCase{name, func(c *caseCtx) {
			width := n.groups * n.size
			x, w, init := randn(c.rng, n.rows*width, 2), randn(c.rng, n.size, 1), randn(c.rng, n.rows*width, 1)
			c.both(c.tol.Elementwise, func(e *env) []output {
				xt := e.up(x, n.rows, width)
				out := xt
				if !n.inplace {
					out = e.up(init, n.rows, width)
				}
				e.b.RMSNorm(out, xt, e.up(w, n.size), 1e-6)
				return []output{{"", e.down(out)}}
			})
		}})
	}
	for _, n := range []struct {
		rows, size int
		inplace    bool // sum is x, as in generation's residual stream
	}{{5, 257, false}, {9, 128, true}} {
		name := fmt.Sprintf("AddRMSNorm/rows=%d,D=%d", n.rows, n.size)
		if n.inplace {
			name += "/inplace"
		}
		cs = append(cs, testCase{name, func(c *caseCtx) {
			x, y, w := randn(c.rng, n.rows*n.size, 2), randn(c.rng, n.rows*n.size, 1), randn(c.rng, n.size, 1)
			// The backend's AddRMSNorm (also where it keeps it off: the GPU check verifies it
			// before it becomes a default) against the reference's Add then RMSNorm.
			c.both(c.tol.Elementwise, func(e *env) []output {
				xt, yt, wt := e.up(x, n.rows, n.size), e.up(y, n.rows, n.size), e.up(w, n.size)
				sum := xt
				if !n.inplace {
					sum = e.up(make([]float32, len(x)), n.rows, n.size)
				}
				normed := e.up(make([]float32, len(x)), n.rows, n.size)
				if fb, ok := e.b.(engine.AddRMSNormBackend); ok && e.b != c.ref {
					fb.AddRMSNorm(sum, normed, xt, yt, wt, 1e-6)
				} else {
					e.b.Add(sum, xt, yt)
					e.b.RMSNorm(normed, sum, wt, 1e-6)
				}
				return []output{{"sum", e.down(sum)}, {"normed", e.down(normed)}}
			})
		}})
	}
	for _, r := range []struct {
		heads, dh int
		cfg       *engine.Config
	}{
		{3, 8, &engine.Config{HeadDim: 8, RopeTheta: 10000}},
		{2, 24, &engine.Config{HeadDim: 24, RopeTheta: 1e6}},
		{2, 64, &engine.Config{HeadDim: 64, RopeTheta: 500000, RopeScaling: &engine.RopeScaling{Type: "llama3",
			Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 64}}},
		{1, 128, &engine.Config{HeadDim: 128, RopeTheta: 10000}},
	} {
		cs = append(cs, testCase{fmt.Sprintf("RoPE/T=19,heads=%d,Dh=%d", r.heads, r.dh), func(c *caseCtx) {
			const T, P = 19, 300
			cos, sin := modelRopeTables(r.cfg, P)
			pos := randIDs(c.rng, T, P) // ragged, unsorted positions
			pos[0], pos[1] = 0, P-1
			x := randn(c.rng, T*r.heads*r.dh, 1)
			c.both(c.tol.Elementwise, func(e *env) []output {
				xt := e.up(x, T, r.heads*r.dh)
				e.b.RoPE(xt, r.dh, pos, e.up(cos, P, r.dh/2), e.up(sin, P, r.dh/2))
				return []output{{"", e.down(xt)}}
			})
		}})
	}
	for _, s := range attnShapes(o) {
		cs = append(cs, testCase{"Attention/" + s.String() + "/ragged", func(c *caseCtx) { pagedAttention(c, s, false, engine.F32) }})
		if !o.Short {
			cs = append(cs, testCase{"Attention/" + s.String() + "/long", func(c *caseCtx) { pagedAttention(c, s, true, engine.F32) }})
		}
		// bf16 KV stores, on the backends that have them (engine.KVDTyper).
		cs = append(cs, testCase{"Attention/" + s.String() + "/ragged/bf16kv", func(c *caseCtx) { pagedAttention(c, s, false, engine.BF16) }})
		// A scoring pass over fresh sequences (AttnBatch.Scratch), which backends may run as the
		// training forward (the CPU's and the GPU's tiled kernels).
		lens := []int{1, 130, 67}
		if !o.Short {
			lens = append(lens, 300)
		}
		cs = append(cs, testCase{fmt.Sprintf("Attention/%s/scratch,lens=%v", s, lens), func(c *caseCtx) { scratchAttention(c, s, lens) }})
	}
	for _, lc := range longContextCases(o) {
		for _, kvdt := range []engine.DType{engine.F32, engine.BF16} {
			name := fmt.Sprintf("Attention/%v/decode-ctx=%s", lc.s, strings.Trim(strings.Join(strings.Fields(fmt.Sprint(lc.ctx)), ","), "[]"))
			if kvdt == engine.BF16 {
				name += "/bf16kv"
			}
			cs = append(cs, testCase{name, func(c *caseCtx) { longContextAttention(c, lc.s, lc.ctx, kvdt) }})
		}
	}
	for _, inplace := range []bool{false, true} {
		name := "SwiGLU/M=17,N=129"
		if inplace {
			name += "/inplace"
		}
		cs = append(cs, testCase{name, func(c *caseCtx) {
			g, u, init := randn(c.rng, 17*129, 2), randn(c.rng, 17*129, 1), randn(c.rng, 17*129, 1)
			c.both(c.tol.Elementwise, func(e *env) []output {
				gt := e.up(g, 17, 129)
				out := gt
				if !inplace {
					out = e.up(init, 17, 129)
				}
				e.b.SwiGLU(out, gt, e.up(u, 17, 129))
				return []output{{"", e.down(out)}}
			})
		}})
	}
	for _, alias := range []string{"a", "b", "none"} {
		cs = append(cs, testCase{"Add/M=17,N=129/out=" + alias, func(c *caseCtx) {
			a, b, init := randn(c.rng, 17*129, 1), randn(c.rng, 17*129, 1), randn(c.rng, 17*129, 1)
			c.both(c.tol.Elementwise, func(e *env) []output {
				at, bt := e.up(a, 17, 129), e.up(b, 17, 129)
				out := map[string]*engine.Tensor{"a": at, "b": bt}[alias]
				if out == nil {
					out = e.up(init, 17, 129)
				}
				e.b.Add(out, at, bt)
				return []output{{"", e.down(out)}}
			})
		}})
	}
	cs = append(cs, testCase{"GatherRows/R=9,C=67", func(c *caseCtx) {
		x, init := randn(c.rng, 23*67, 1), randn(c.rng, 9*67, 1)
		rows := []int32{22, 0, 5, 5, 17, 0, 3, 22, 11}
		c.both(c.tol.Elementwise, func(e *env) []output {
			out := e.up(init, 9, 67)
			e.b.GatherRows(out, e.up(x, 23, 67), rows)
			return []output{{"", e.down(out)}}
		})
	}})
	cs = append(cs, qkvRoPECases(o)...)
	cs = append(cs, sampleCases(o)...)
	for _, temp := range []float32{1, 0.6} {
		cs = append(cs, testCase{fmt.Sprintf("LogProbs/R=13,V=257/T=%g", temp), func(c *caseCtx) {
			logits, targets := randn(c.rng, 13*257, 3), randIDs(c.rng, 13, 257)
			c.both(c.tol.LogProbs, func(e *env) []output {
				lp, ent, err := e.b.LogProbs(e.up(logits, 13, 257), targets, temp)
				if err != nil {
					panic(err)
				}
				return []output{{"logp", lp}, {"entropy", ent}}
			})
		}})
	}
	cs = append(cs, testCase{"LogProbsInto/R=13,V=257/T=0.6/chunks=5", logProbsIntoCase})
	cs = append(cs, topLogProbsCases()...)
	return cs
}

// modelRopeTables builds the cos and sin tables [P, Dh/2] as engine.Model does: angles
// p·inv_freq in float64, rounded to fp32.
func modelRopeTables(cfg *engine.Config, P int) (cos, sin []float32) {
	inv := cfg.InvFreq()
	half := len(inv)
	cos, sin = make([]float32, P*half), make([]float32, P*half)
	for p := 0; p < P; p++ {
		for i, f := range inv {
			s, c := math.Sincos(float64(p) * f)
			cos[p*half+i], sin[p*half+i] = float32(c), float32(s)
		}
	}
	return cos, sin
}

// attnSeq is one sequence of a paged-attention batch: its block table, its context length
// after the step and the number of new tokens it brings.
type attnSeq struct {
	blocks []int32
	ctx, n int
}

// attnBatch lays out a batch: query rows in order, new tokens at the last n positions, their
// cache slots from the block table.
func attnBatch(seqs []attnSeq, bs int) *engine.AttnBatch {
	b := &engine.AttnBatch{SeqStart: []int32{0}}
	for _, s := range seqs {
		for p := s.ctx - s.n; p < s.ctx; p++ {
			b.Slots = append(b.Slots, s.blocks[p/bs]*int32(bs)+int32(p%bs))
		}
		b.SeqStart = append(b.SeqStart, int32(len(b.Slots)))
		b.CtxLen = append(b.CtxLen, int32(s.ctx))
		b.Blocks = append(b.Blocks, s.blocks)
	}
	return b
}

// pagedAttention runs two steps of attention over a paged KV store of dtype kvdt (layer 1 of
// 2, block size engine.DefaultBlockSize) and compares both steps' outputs. Step 1 prefills two
// sequences; then a partly filled block is copied (copy on write); step 2 mixes decode rows, a
// fresh prefill, and two forks of the first sequence that share its full prefix blocks, one
// extending it in its own block and one in the copied block. With kvdt BF16 the backend under
// test runs a bf16 store and the reference an fp32 store given the keys and values rounded to
// bf16: a bf16 store must compute as if it held fp32 copies of its rounded values. A backend
// without bf16 stores (not engine.KVDTyper) records the case as passed, saying so in Detail.
func pagedAttention(c *caseCtx, s attnShape, long bool, kvdt engine.DType) {
	if !engine.KVDTypeSupported(c.b, kvdt) {
		c.add(Result{Metric: MetricNMSE, Pass: true, BadIndex: -1,
			Detail: fmt.Sprintf("not run: the %s backend's KV store holds no %v", c.b.Name(), kvdt)})
		return
	}
	const bs = engine.DefaultBlockSize
	a := 21 // prompt of sequence A
	if long {
		a = 150
	}
	full := int32(a / bs) // blocks of A that are full
	blocksA := make([]int32, 0, a/bs+1)
	for i := int32(0); i <= full; i++ {
		blocksA = append(blocksA, i)
	}
	next := full + 1
	blk := func() int32 { next++; return next - 1 }
	bB, bC, bD, bE := blk(), blk(), blk(), blk() // B's block, C's own, D's, E's copy of A's last
	step1 := []attnSeq{{blocksA, a, a}, {[]int32{bB}, 5, 5}}
	cFork := append(slices.Clone(blocksA[:full]), bC) // shares A's full blocks, then its own
	eFork := append(slices.Clone(blocksA[:full]), bE) // shares A's full blocks and a copy of the last
	step2 := []attnSeq{
		{blocksA, a + 1, 1},          // decode
		{cFork, int(full)*bs + 4, 4}, // fork: 4 new tokens after the shared blocks
		{[]int32{bB}, 6, 1},          // decode
		{[]int32{bD}, 3, 3},          // fresh prefill
		{eFork, a + 2, 2},            // fork: 2 new tokens in the copied block
	}
	b1, b2 := attnBatch(step1, bs), attnBatch(step2, bs)
	t1, t2 := len(b1.Slots), len(b2.Slots)
	qw, kw := s.h*s.dh, s.kv*s.dh
	in1 := [][]float32{randn(c.rng, t1*qw, 1), randn(c.rng, t1*kw, 1), randn(c.rng, t1*kw, 1), randn(c.rng, t1*qw, 1)}
	in2 := [][]float32{randn(c.rng, t2*qw, 1), randn(c.rng, t2*kw, 1), randn(c.rng, t2*kw, 1), randn(c.rng, t2*qw, 1)}
	rounded := func(x []float32) []float32 { // x rounded to bf16 (to nearest even)
		h := make([]uint16, len(x))
		out := make([]float32, len(x))
		for i, v := range x {
			b := math.Float32bits(v)
			h[i] = uint16((b + 0x7fff + (b>>16)&1) >> 16)
			out[i] = math.Float32frombits(uint32(h[i]) << 16)
		}
		return out
	}
	in1r, in2r := slices.Clone(in1), slices.Clone(in2)
	for _, in := range [][][]float32{in1r, in2r} {
		in[1], in[2] = rounded(in[1]), rounded(in[2])
	}
	c.both(c.tol.Attention, func(e *env) []output {
		dt, in1, in2 := kvdt, in1, in2
		if kvdt != engine.F32 && e.b == c.ref {
			dt, in1, in2 = engine.F32, in1r, in2r
		}
		kv := e.kvOf(dt, 2, s.kv, bs, s.dh, 2)
		if err := kv.Grow(int(next)); err != nil {
			panic(err)
		}
		if kv.NumBlocks() != int(next) {
			panic(fmt.Sprintf("KVStore.NumBlocks() = %d after Grow(%d)", kv.NumBlocks(), next))
		}
		run := func(in [][]float32, t int, b *engine.AttnBatch) []float32 {
			out := e.up(in[3], t, qw)
			e.b.Attention(out, e.up(in[0], t, qw), e.up(in[1], t, kw), e.up(in[2], t, kw), kv, 1, b)
			return e.down(out)
		}
		o1 := run(in1, t1, b1)
		kv.CopyBlock(int(bE), int(blocksA[full]))
		o2 := run(in2, t2, b2)
		return []output{{"step1", o1}, {"step2", o2}}
	})
}

// scratchAttention runs one scoring pass (AttnBatch.Scratch) of fresh sequences of the given
// lengths (no context before their tokens) over an fp32 paged store, and compares the outputs.
func scratchAttention(c *caseCtx, s attnShape, lens []int) {
	const bs = engine.DefaultBlockSize
	var seqs []attnSeq
	next := int32(0)
	for _, n := range lens {
		var blocks []int32
		for i := 0; i < (n+bs-1)/bs; i++ {
			blocks = append(blocks, next)
			next++
		}
		seqs = append(seqs, attnSeq{blocks, n, n})
	}
	ab := attnBatch(seqs, bs)
	ab.Scratch = true
	T := len(ab.Slots)
	qw, kw := s.h*s.dh, s.kv*s.dh
	in := [][]float32{randn(c.rng, T*qw, 1), randn(c.rng, T*kw, 1), randn(c.rng, T*kw, 1), randn(c.rng, T*qw, 1)}
	c.both(c.tol.Attention, func(e *env) []output {
		kv := e.kv(1, s.kv, bs, s.dh, int(next))
		out := e.up(in[3], T, qw)
		e.b.Attention(out, e.up(in[0], T, qw), e.up(in[1], T, kw), e.up(in[2], T, kw), kv, 0, ab)
		return []output{{"", e.down(out)}}
	})
}

// sampleCases: Sample against the reference with the same U values, and the sampling
// distribution of the backend under test against the exact probabilities.
func sampleCases(o Options) []testCase {
	rows := 96
	if o.Short {
		rows = 32
	}
	// The second variant rounds the logits to halves: many tokens tie, and top-k and top-p
	// must break the ties by the lower id, as the reference does.
	var cs []testCase
	for _, ties := range []bool{false, true} {
		name := fmt.Sprintf("Sample/R=%d,V=257", rows)
		if ties {
			name += "/ties"
		}
		cs = append(cs, testCase{name, func(c *caseCtx) { sampleIDs(c, rows, ties) }})
	}
	n := 20000
	if o.Short {
		n = 5000
	}
	for _, p := range []engine.SampleRow{{Temperature: 0.7}, {Temperature: 1.2, TopK: 10, TopP: 0.9}} {
		name := fmt.Sprintf("Sample/distribution/V=50,n=%d/T=%g", n, p.Temperature)
		if p.TopK > 0 {
			name += fmt.Sprintf(",topk=%d,topp=%g", p.TopK, p.TopP)
		}
		cs = append(cs, testCase{name, func(c *caseCtx) { sampleDistribution(c, p, n) }})
	}
	return cs
}

// sampleDistribution draws n tokens from one row of logits (repeated n times) with fresh U
// values on the backend under test and compares the counts with the exact probabilities
// (temperature, top-k, top-p worked in float64) by a chi-square statistic over bins of
// expected count >= 5 (rarer tokens pooled). A token outside the kept set fails at once.
// The threshold df + 6·√(2·df) is about a 1e-6 tail for these df; the U values are seeded,
// so the outcome is fixed.
func sampleDistribution(c *caseCtx, p engine.SampleRow, n int) {
	const V = 50
	row := randn(c.rng, V, 1.5)
	probs := exactProbs(row, p)
	logits := make([]float32, 0, n*V)
	params := make([]engine.SampleRow, n)
	for i := range params {
		logits = append(logits, row...)
		params[i] = p
		params[i].U = c.rng.Float64()
	}
	var ids []int32
	withEnv(c.b, func(e *env) []output {
		var err error
		ids, _, err = e.b.Sample(e.up(logits, n, V), params)
		if err != nil {
			panic(err)
		}
		return nil
	})
	counts := make([]float64, V)
	for i, id := range ids {
		if id < 0 || id >= V || probs[id] == 0 {
			c.add(Result{Metric: MetricChi2, Error: math.Inf(1), BadIndex: i, Got: float64(id),
				Detail: fmt.Sprintf("row %d drew token %d, which has probability 0", i, id)})
			return
		}
		counts[id]++
	}
	var chi2, poolObs, poolExp float64
	df := -1
	for id, q := range probs {
		exp := q * float64(n)
		if exp == 0 {
			continue
		}
		if exp < 5 {
			poolObs += counts[id]
			poolExp += exp
			continue
		}
		chi2 += (counts[id] - exp) * (counts[id] - exp) / exp
		df++
	}
	if poolExp > 0 {
		chi2 += (poolObs - poolExp) * (poolObs - poolExp) / poolExp
		df++
	}
	tol := float64(df) + 6*math.Sqrt(2*float64(df))
	c.add(Result{Metric: MetricChi2, Error: chi2, Tol: tol, Pass: chi2 <= tol, BadIndex: -1,
		Detail: fmt.Sprintf("%d degrees of freedom", df)})
}

// exactProbs returns the probabilities Sample draws from: softmax(logits/T), restricted to
// the TopK most likely tokens and then to the smallest most likely set reaching TopP of their
// mass (ties to the lower id), renormalised.
func exactProbs(logits []float32, p engine.SampleRow) []float64 {
	V := len(logits)
	z := make([]float64, V)
	m := math.Inf(-1)
	for i, l := range logits {
		z[i] = float64(l) / float64(p.Temperature)
		m = max(m, z[i])
	}
	for i := range z {
		z[i] = math.Exp(z[i] - m)
	}
	order := make([]int, V)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case z[a] > z[b]:
			return -1
		case z[a] < z[b]:
			return 1
		}
		return a - b
	})
	keep := order
	if p.TopK > 0 && p.TopK < V {
		keep = keep[:p.TopK]
	}
	if p.TopP > 0 && p.TopP < 1 {
		var mass float64
		for _, id := range keep {
			mass += z[id]
		}
		need, acc := float64(p.TopP)*mass, 0.0
		for i, id := range keep {
			acc += z[id]
			if acc >= need {
				keep = keep[:i+1]
				break
			}
		}
	}
	probs := make([]float64, V)
	var total float64
	for _, id := range keep {
		total += z[id]
	}
	for _, id := range keep {
		probs[id] = z[id] / total
	}
	return probs
}

// sampleIDs compares the ids and log-probs of Sample on rows of every kind (greedy, temperature,
// top-k, top-p, both, top-k 1) with the same U values.
func sampleIDs(c *caseCtx, rows int, ties bool) {
	const V = 257
	logits := randn(c.rng, rows*V, 3)
	if ties {
		for i, v := range logits {
			logits[i] = float32(math.Round(float64(v)*2) / 2)
		}
	}
	params := make([]engine.SampleRow, rows)
	kinds := []engine.SampleRow{{}, {Temperature: 1}, {Temperature: 0.7, TopK: 20}, {Temperature: 1.3, TopP: 0.9},
		{Temperature: 0.9, TopK: 50, TopP: 0.8}, {Temperature: 1, TopK: 1}}
	for i := range params {
		params[i] = kinds[i%len(kinds)]
		if params[i].Temperature > 0 {
			params[i].U = c.rng.Float64()
		}
	}
	type res struct {
		ids []int32
		lp  []float32
	}
	run := func(b engine.TrainBackend) res {
		var r res
		withEnv(b, func(e *env) []output {
			ids, lp, err := e.b.Sample(e.up(logits, rows, V), params)
			if err != nil {
				panic(err)
			}
			r = res{ids, lp}
			return nil
		})
		return r
	}
	want, got := run(c.ref), run(c.b)
	var greedyBad, sampled, sampledBad int
	var gl, wl []float32
	first := -1
	for i, p := range params {
		if got.ids[i] == want.ids[i] {
			gl, wl = append(gl, got.lp[i]), append(wl, want.lp[i])
			continue
		}
		if first < 0 {
			first = i
		}
		if p.Temperature == 0 {
			greedyBad++
		} else {
			sampledBad++
		}
	}
	for _, p := range params {
		if p.Temperature > 0 {
			sampled++
		}
	}
	frac := float64(sampledBad) / float64(sampled)
	r := Result{Name: "ids", Metric: MetricMismatch, Error: frac, Tol: c.tol.SampleMismatch,
		Pass: greedyBad == 0 && frac <= c.tol.SampleMismatch, BadIndex: -1,
		Detail: fmt.Sprintf("%d of %d greedy rows and %d of %d sampled rows differ", greedyBad, rows-sampled, sampledBad, sampled)}
	if first >= 0 {
		r.BadIndex, r.Got, r.Want = first, float64(got.ids[first]), float64(want.ids[first])
	}
	c.add(r)
	c.add(sampledLogProbs(gl, wl))
}

// sampledLogProbs compares the log-probs of the rows that drew the same id bit for bit: a
// backend's sampler computes them as the reference does (z - log(mass), mass summed in id order
// over the kept tokens), so that rollouts carry the trainer's log-probs exactly.
func sampledLogProbs(got, want []float32) Result {
	r := Result{Name: "logprobs", Metric: MetricMismatch, BadIndex: -1}
	bad := 0
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			if bad == 0 {
				r.BadIndex, r.Got, r.Want = i, float64(got[i]), float64(want[i])
			}
			bad++
		}
	}
	if len(want) > 0 {
		r.Error = float64(bad) / float64(len(want))
	}
	r.Pass = bad == 0
	r.Detail = fmt.Sprintf("%d of %d log-probs of rows that drew the same id differ in their bits", bad, len(want))
	return r
}

// fusedShapes are the M×K×N products of the fused projection cases: decode rows with K a
// multiple of 8 (a GPU's matrix-vector kernels), odd sizes around tile edges, and (in full
// runs) one larger product for a GPU's GEMM path.
func fusedShapes(o Options) []matmulShape {
	s := []matmulShape{{1, 64, 96}, {3, 256, 200}, {8, 128, 72}, {17, 257, 67}, {9, 512, 129}}
	if !o.Short {
		s = append(s, matmulShape{64, 512, 1024})
	}
	return s
}

// weightOf uploads w [n, k] as a linear weight of kind "f32" or "bf16", or as a trainable
// parameter ("param").
func (e *env) weightOf(kind string, w []float32, n, k int) *engine.Tensor {
	switch kind {
	case "f32":
		return e.weight(engine.F32, w, n, k)
	case "bf16":
		return e.weight(engine.BF16, w, n, k)
	}
	return e.param(w, n, k)
}

// fusedProjectionCases: MatMuls (the Q/K/V and gate/up projections of one input) and
// GateUpSwiGLU on the backend under test, whether or not it uses them by default (the GPU check
// verifies them before they become defaults), against one MatMul per weight (and SwiGLU) on
// the reference. A backend without the op runs what the engine runs then.
func fusedProjectionCases(o Options) []testCase {
	var cs []testCase
	for _, s := range fusedShapes(o) {
		for _, kind := range []string{"f32", "bf16", "param"} {
			cs = append(cs, testCase{"MatMuls/" + s.String() + "/" + kind, func(c *caseCtx) {
				ns := []int{s.n, max(1, s.n/3), 2*s.n + 5} // three widths, as Q, K, V
				x := randn(c.rng, s.m*s.k, 1)
				var ws, inits [][]float32
				for _, n := range ns {
					ws = append(ws, randn(c.rng, n*s.k, 1/math.Sqrt(float64(s.k))))
					inits = append(inits, randn(c.rng, s.m*n, 1))
				}
				tol := c.tol.MatMul
				if kind == "bf16" {
					tol = c.tol.MatMulBF16
				}
				c.both(tol, func(e *env) []output {
					xt := e.up(x, s.m, s.k)
					var outs, wts []*engine.Tensor
					for i, n := range ns {
						outs = append(outs, e.up(inits[i], s.m, n))
						wts = append(wts, e.weightOf(kind, ws[i], n, s.k))
					}
					if mb, ok := e.b.(engine.MatMulsBackend); ok && e.b != c.ref {
						mb.MatMuls(outs, xt, wts)
					} else {
						for i := range wts {
							e.b.MatMul(outs[i], xt, wts[i])
						}
					}
					var res []output
					for i, t := range outs {
						res = append(res, output{fmt.Sprint("out", i), e.down(t)})
					}
					return res
				})
			}})
			for _, keep := range []bool{false, true} {
				name := "GateUpSwiGLU/" + s.String() + "/" + kind
				if keep {
					name += "/keep"
				}
				cs = append(cs, testCase{name, func(c *caseCtx) {
					x := randn(c.rng, s.m*s.k, 2)
					wg, wu := randn(c.rng, s.n*s.k, 1/math.Sqrt(float64(s.k))), randn(c.rng, s.n*s.k, 1/math.Sqrt(float64(s.k)))
					init := randn(c.rng, 3*s.m*s.n, 1)
					tol := c.tol.MatMul
					if kind == "bf16" {
						tol = c.tol.MatMulBF16
					}
					c.both(tol, func(e *env) []output {
						xt := e.up(x, s.m, s.k)
						gt, ut := e.weightOf(kind, wg, s.n, s.k), e.weightOf(kind, wu, s.n, s.k)
						out := e.up(init[:s.m*s.n], s.m, s.n)
						gate, up := e.up(init[s.m*s.n:2*s.m*s.n], s.m, s.n), e.up(init[2*s.m*s.n:], s.m, s.n)
						if fb, ok := e.b.(engine.GateUpSwiGLUBackend); ok && e.b != c.ref {
							if keep {
								fb.GateUpSwiGLU(out, gate, up, xt, gt, ut)
							} else {
								fb.GateUpSwiGLU(out, nil, nil, xt, gt, ut)
							}
						} else {
							e.b.MatMul(gate, xt, gt)
							e.b.MatMul(up, xt, ut)
							e.b.SwiGLU(out, gate, up)
						}
						res := []output{{"out", e.down(out)}}
						if keep {
							res = append(res, output{"gate", e.down(gate)}, output{"up", e.down(up)})
						}
						return res
					})
				}})
			}
		}
	}
	return cs
}
