package engine_test

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/engine/enginetest"
)

// TestDecodeBucket: a decode batch is padded to the least power of two that holds it, capped at
// MaxSeqs (worked by hand).
func TestDecodeBucket(t *testing.T) {
	tests := []struct{ n, maxSeqs, want int }{
		{1, 256, 1}, {2, 256, 2}, {3, 256, 4}, {4, 256, 4}, {5, 256, 8}, {9, 256, 16},
		{16, 256, 16}, {17, 256, 32}, {129, 256, 256}, {256, 256, 256},
		{5, 6, 6}, {6, 6, 6}, {3, 6, 4}, {1, 1, 1}, {7, 12, 8}, {9, 12, 12},
	}
	for _, tt := range tests {
		if got := engine.DecodeBucket(tt.n, tt.maxSeqs); got != tt.want {
			t.Errorf("DecodeBucket(%d, max %d) = %d, want %d", tt.n, tt.maxSeqs, got, tt.want)
		}
	}
}

// randPrompt is a prompt of n random tokens of a vocabulary of v.
func randPrompt(rng *rand.Rand, n, v int) []int32 {
	p := make([]int32, n)
	for i := range p {
		p[i] = int32(rng.IntN(v))
	}
	return p
}

// TestFixedDecodeSameBits: decode steps on the fixed buffers, padded to their bucket or not, give the tokens, log-probs,
// finish reasons and top log-probs of decode steps through Model.forward (the path before
// them), bit for bit, for batches of one to many rows that shrink across buckets as samples
// finish or stop, with a MaxSeqs that is no power of two, top-k/top-p and top log-probs on some
// rows, preemption in a small KV pool, and bf16 weights and KV.
func TestFixedDecodeSameBits(t *testing.T) {
	c := defaultModelConfig()
	f32, err := engine.NewModel(c, cpu.New(), engine.RandomWeights(c, 1, 0.02), engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	bf16, err := engine.NewModel(c, cpu.New(), engine.RandomWeights(c, 1, 0.02), engine.BF16)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	// shrinking is one sample each of n requests ending after 2, 5, 8, ... tokens: the batch
	// goes n, n-1, ..., 1 through every bucket below n.
	shrinking := func(n int, p engine.SamplingParams) []engine.Request {
		var reqs []engine.Request
		for i := range n {
			q := p
			q.MaxNewTokens, q.Seed = 2+3*i, uint64(i)
			reqs = append(reqs, engine.Request{Prompt: randPrompt(rng, 1+rng.IntN(20), c.VocabSize), Params: q})
		}
		return reqs
	}
	// mixed are n requests of random prompt lengths, samples and lengths, stopping at tokens 0
	// and 1 (a batch changes as samples stop and new requests join).
	mixed := func(n int, p engine.SamplingParams) []engine.Request {
		var reqs []engine.Request
		for i := range n {
			q := p
			prompt := randPrompt(rng, 1+rng.IntN(24), c.VocabSize)
			q.N, q.MaxNewTokens, q.Seed = 1+rng.IntN(5), 1+rng.IntN(c.MaxPositionEmbeddings-len(prompt)), uint64(100+i)
			q.StopTokens = []int32{0, 1}
			reqs = append(reqs, engine.Request{Prompt: prompt, Params: q})
		}
		return reqs
	}
	hot := engine.SamplingParams{Temperature: 1}
	// pool8 is a KV budget of 8 blocks (a sample of 64 positions takes 4): samples are preempted.
	pool8 := func(dt engine.DType) int64 { return 4 * engine.KVBudget(c, dt, 1, 1) } // 2 blocks each
	tests := []struct {
		name    string
		m       *engine.Model
		opts    engine.GeneratorOptions
		reqs    []engine.Request
		preempt bool // the pool is small enough to preempt
	}{
		{"batch 1 greedy", f32, engine.GeneratorOptions{}, []engine.Request{{Prompt: []int32{3, 4, 5}, Params: engine.SamplingParams{MaxNewTokens: 40}}}, false},
		{"batch 3 in bucket 4", f32, engine.GeneratorOptions{}, []engine.Request{{Prompt: []int32{3, 4, 5}, Params: engine.SamplingParams{N: 3, Temperature: 1, MaxNewTokens: 30, Seed: 9}}}, false},
		{"batch 16 shrinking to 1", f32, engine.GeneratorOptions{}, shrinking(16, hot), false},
		{"batch 11 shrinking, top-k top-p", f32, engine.GeneratorOptions{}, shrinking(11, engine.SamplingParams{Temperature: 0.8, TopK: 5, TopP: 0.9}), false},
		{"mixed, stop tokens", f32, engine.GeneratorOptions{}, mixed(12, hot), false},
		{"mixed, MaxSeqs 6", f32, engine.GeneratorOptions{MaxSeqs: 6}, mixed(8, hot), false},
		{"mixed, top log-probs", f32, engine.GeneratorOptions{}, func() []engine.Request {
			r := mixed(8, hot)
			for i := range r {
				r[i].Params.TopLogProbs = i % 3 // some rows ask, some do not
			}
			return r
		}(), false},
		{"mixed, preemption", f32, engine.GeneratorOptions{KVBudgetBytes: pool8(engine.F32)}, mixed(20, hot), true},
		{"bf16 weights and KV, shrinking", bf16, engine.GeneratorOptions{KVDType: engine.KVBF16}, shrinking(9, hot), false},
		{"bf16, preemption", bf16, engine.GeneratorOptions{KVDType: engine.KVBF16, KVBudgetBytes: pool8(engine.BF16)}, mixed(20, hot), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			slow := newGen(t, tt.m, tt.opts)
			engine.SetSlowDecode(slow, true)
			want, err := slow.Generate(context.Background(), tt.reqs)
			if err != nil {
				t.Fatal(err)
			}
			for _, pad := range []bool{true, false} {
				fast := newGen(t, tt.m, tt.opts)
				engine.SetPadDecode(fast, pad)
				got, err := fast.Generate(context.Background(), tt.reqs)
				if err != nil {
					t.Fatal(err)
				}
				if engine.FixedDecodeSteps(slow) != 0 || engine.FixedDecodeSteps(fast) == 0 {
					t.Fatalf("padded %v: fixed decode steps: %d on the forward path, %d on the fixed one", pad, engine.FixedDecodeSteps(slow), engine.FixedDecodeSteps(fast))
				}
				if tt.preempt && (fast.Preemptions() == 0 || fast.Preemptions() != slow.Preemptions()) {
					t.Fatalf("padded %v: preemptions: %d fixed, %d forward; want the same, above 0", pad, fast.Preemptions(), slow.Preemptions())
				}
				if used := fast.Cache().Used(); used != 0 {
					t.Errorf("padded %v: %d KV blocks in use after Generate", pad, used)
				}
				for i := range want {
					for j, w := range want[i].Samples {
						if err := sameSample(got[i].Samples[j], w); err != nil {
							t.Fatalf("padded %v: request %d sample %d: %v", pad, i, j, err)
						}
					}
				}
				t.Logf("padded %v: %d fixed decode steps, %d preemptions", pad, engine.FixedDecodeSteps(fast), fast.Preemptions())
			}
		})
	}
}

// sameSample says how g differs from w, bit for bit.
func sameSample(g, w engine.Sample) error {
	switch {
	case !slices.Equal(g.Tokens, w.Tokens):
		return fmt.Errorf("tokens %v, want %v", g.Tokens, w.Tokens)
	case !sameBits(g.LogProbs, w.LogProbs):
		return fmt.Errorf("log-probs %v, want %v", g.LogProbs, w.LogProbs)
	case g.Finish != w.Finish:
		return fmt.Errorf("finish %s, want %s", g.Finish, w.Finish)
	case len(g.TopIDs) != len(w.TopIDs) || len(g.TopLogProbs) != len(w.TopLogProbs):
		return fmt.Errorf("%d/%d top lists, want %d/%d", len(g.TopIDs), len(g.TopLogProbs), len(w.TopIDs), len(w.TopLogProbs))
	}
	for k := range w.TopIDs {
		if !slices.Equal(g.TopIDs[k], w.TopIDs[k]) || !sameBits(g.TopLogProbs[k], w.TopLogProbs[k]) {
			return fmt.Errorf("token %d: top %v %v, want %v %v", k, g.TopIDs[k], g.TopLogProbs[k], w.TopIDs[k], w.TopLogProbs[k])
		}
	}
	return nil
}

// Decode modes of recordSteps.
const (
	forwardPath = iota // Model.forward, the path before the fixed buffers
	padded             // fixed buffers, batches padded to their bucket (for CUDA graphs)
	exact              // fixed buffers of the batch's size (the CPU's default)
)

// recordSteps generates reqs with a generator on a recording CPU backend, decoding in mode, and
// returns the backend calls of each step.
func recordSteps(t *testing.T, mode int, reqs []engine.Request) [][]enginetest.Call {
	t.Helper()
	c := defaultModelConfig()
	rec := enginetest.NewRecorder(cpu.New())
	m, err := engine.NewModel(c, rec, engine.RandomWeights(c, 1, 0.02), engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	g := newGen(t, m, engine.GeneratorOptions{MaxSeqs: 8})
	engine.SetSlowDecode(g, mode == forwardPath)
	engine.SetPadDecode(g, mode == padded)
	rec.Take() // the weights' uploads
	var steps [][]enginetest.Call
	if _, err := engine.GenerateChecked(g, reqs, func(int, uint64) { steps = append(steps, rec.Take()) }); err != nil {
		t.Fatal(err)
	}
	return steps
}

// sampleRows is the number of rows a step's Sample call drew (0: none).
func sampleRows(calls []enginetest.Call) int {
	for _, c := range calls {
		if c.Op == "Sample" {
			return c.Host[0].Len
		}
	}
	return 0
}

// TestDecodeStepFixedBuffers: on a recording backend, every decode step at one bucket after the
// first issues the same ops on the same tensors and the same host metadata arrays (ids,
// positions, slots, context lengths, block tables, sampling rows) as the one before it, with no
// Alloc, Free, Upload or Download; what comes back to the host is Sample's ids and log-probs
// alone. The batch is 3 samples of a 15-token prompt and one of a 3-token prompt (bucket 4); the
// short one ends after 12 tokens (3 rows, still bucket 4) and the others cross block
// boundaries (positions 16 and 32: new blocks in their tables). The first decode step makes the
// bucket's buffers and the RoPE tables; the prefill step goes through Model.forward. Without
// padding (the CPU's default) the same holds between steps of one batch size.
//
// Before the fixed buffers (the forward path, checked below as the recorder's own test) every
// decode step allocated and freed its 8 activation buffers, the gathered final-norm rows and the
// logits, and passed new host arrays for the ids, positions and attention batch.
func TestDecodeStepFixedBuffers(t *testing.T) {
	reqs := []engine.Request{
		{Prompt: randPrompt(rand.New(rand.NewPCG(1, 2)), 15, 32), Params: engine.SamplingParams{N: 3, Temperature: 1, MaxNewTokens: 30, Seed: 1}},
		{Prompt: []int32{5, 6, 7}, Params: engine.SamplingParams{Temperature: 1, MaxNewTokens: 12, Seed: 2}},
	}
	for _, mode := range []int{padded, exact} {
		steps := recordSteps(t, mode, reqs)
		if len(steps) != 30 {
			t.Fatalf("mode %d: %d steps, want 30 (a prefill and 29 decode steps)", mode, len(steps))
		}
		compared := 0
		for i := 3; i < len(steps); i++ {
			if P := sampleRows(steps[i]); P != sampleRows(steps[i-1]) || P != sampleRows(steps[i-2]) {
				continue // a new batch size: its first step makes its buffers
			}
			compared++
			if err := enginetest.SameBuffers(steps[i-1], steps[i]); err != nil {
				t.Fatalf("mode %d: decode steps %d and %d: %v", mode, i-1, i, err)
			}
			n := enginetest.Count(steps[i])
			for _, op := range []string{"Alloc", "Free", "Upload", "Download", "GatherRows", "NewKVStore", "LogProbs"} {
				if n[op] != 0 {
					t.Fatalf("mode %d: decode step %d: %d %s calls", mode, i, n[op], op)
				}
			}
			if n["Sample"] != 1 {
				t.Fatalf("mode %d: decode step %d: %d Sample calls, want 1", mode, i, n["Sample"])
			}
		}
		if want := map[int]int{padded: 27, exact: 25}[mode]; compared != want {
			t.Fatalf("mode %d: %d pairs of steps compared, want %d", mode, compared, want)
		}
		t.Logf("mode %d: a decode step: %d calls %v", mode, len(steps[2]), enginetest.Count(steps[2]))
	}

	// The recorder sees what the forward path does in every step.
	old := recordSteps(t, forwardPath, reqs)
	if err := enginetest.SameBuffers(old[2], old[3]); err == nil {
		t.Fatal("the forward path's decode steps 2 and 3 look the same to the recorder")
	}
	if n := enginetest.Count(old[3]); n["Alloc"] == 0 || n["Free"] != n["Alloc"] {
		t.Fatalf("the forward path's decode step 3: %v, want as many Alloc as Free, above 0", n)
	}
}

// BenchmarkFixedDecode measures decode steps of the ~122M Qwen2-shaped model (prompt of 32
// tokens, 32 new tokens, temperature 1) on the forward path (Model.forward, the path before the
// fixed buffers), on fixed buffers of the batch's size (the CPU's default) and on buffers
// padded to the bucket, in turn in the same run (the order rotating), at batch 1, 16 (exact
// buckets) and 9 (padded to 16), with fp32 and bf16 weights. It reports tokens/s of the fastest
// decode step of each (steps after the first decode step, which makes the buffers; the
// fastest, since the machines it runs on are shared and noisy) and the ratios to the forward path,
// and the ratio of the exact buffers' mean decode rate to the forward path's.
func BenchmarkFixedDecode(b *testing.B) {
	for _, dt := range []engine.DType{engine.F32, engine.BF16} {
		m := benchModel(b, dt)
		for _, batch := range []int{1, 9, 16} {
			b.Run(fmt.Sprintf("%v/batch=%d", dt, batch), func(b *testing.B) {
				var reqs []engine.Request
				for i := range batch {
					p := make([]int32, 32)
					for j := range p {
						p[j] = int32((i*131 + j*7) % 32000)
					}
					reqs = append(reqs, engine.Request{Prompt: p, Params: engine.SamplingParams{MaxNewTokens: 32, Temperature: 1, Seed: uint64(i)}})
				}
				modes := []int{forwardPath, exact, padded}
				best := make([]time.Duration, len(modes))
				sum, n := make([]time.Duration, len(modes)), make([]int, len(modes))
				gens := make([]*engine.Generator, len(modes))
				for _, mode := range modes {
					g, err := engine.NewGenerator(m, engine.GeneratorOptions{})
					if err != nil {
						b.Fatal(err)
					}
					defer g.Close()
					engine.SetSlowDecode(g, mode == forwardPath)
					engine.SetPadDecode(g, mode == padded)
					gens[mode] = g
				}
				turn := 0
				for b.Loop() {
					for k := range modes {
						mode := modes[(turn+k)%len(modes)]
						step, last := 0, time.Now()
						_, err := engine.GenerateChecked(gens[mode], reqs, func(int, uint64) {
							now := time.Now()
							if d := now.Sub(last); step >= 2 {
								best[mode] = min(cmp.Or(best[mode], d), d)
								sum[mode], n[mode] = sum[mode]+d, n[mode]+1
							}
							step, last = step+1, now
						})
						if err != nil {
							b.Fatal(err)
						}
					}
					turn++
				}
				rate := func(mode int) float64 { return float64(batch) / best[mode].Seconds() }
				b.ReportMetric(rate(forwardPath), "forward-tok/s")
				b.ReportMetric(rate(exact)/rate(forwardPath), "exact/forward")
				b.ReportMetric(rate(padded)/rate(forwardPath), "padded/forward")
				mean := func(mode int) float64 { return float64(sum[mode]) / float64(n[mode]) }
				b.ReportMetric(mean(forwardPath)/mean(exact), "exact/forward-mean")
			})
		}
	}
}

// stepSpy is a StepGraphBackend over the CPU backend that replays nothing: it checks that
// BeginDecodeStep and EndDecodeStep alternate and counts them.
type stepSpy struct {
	*cpu.Backend
	on          bool
	open        bool
	begins, end int
	err         error
}

func (s *stepSpy) DecodeGraphs() bool { return s.on }

func (s *stepSpy) BeginDecodeStep(int) {
	if s.open && s.err == nil {
		s.err = fmt.Errorf("BeginDecodeStep inside a bracketed step")
	}
	s.open = true
	s.begins++
}

func (s *stepSpy) EndDecodeStep() error {
	if !s.open && s.err == nil {
		s.err = fmt.Errorf("EndDecodeStep without BeginDecodeStep")
	}
	s.open = false
	s.end++
	return nil
}

// TestDecodeStepGraphHooks: on a backend that replays decode steps (engine.StepGraphBackend,
// here a spy over the CPU), every fixed-buffer decode step brackets exactly its device part
// with the hooks: BeginDecodeStep(bucket), then Embedding ... the LM head's MatMul into the
// logits, then EndDecodeStep, then Sample outside; the prefill step (Model.forward) is not
// bracketed; the generated tokens are those of the same run without the hooks; and a backend
// whose DecodeGraphs is false is never called.
func TestDecodeStepGraphHooks(t *testing.T) {
	reqs := []engine.Request{
		{Prompt: randPrompt(rand.New(rand.NewPCG(1, 2)), 15, 32), Params: engine.SamplingParams{N: 3, Temperature: 1, MaxNewTokens: 20, Seed: 1}},
		{Prompt: []int32{5, 6, 7}, Params: engine.SamplingParams{Temperature: 1, MaxNewTokens: 8, Seed: 2}},
	}
	run := func(on bool) ([]engine.Result, [][]enginetest.Call, *stepSpy) {
		c := defaultModelConfig()
		spy := &stepSpy{Backend: cpu.New(), on: on}
		rec := enginetest.NewRecorder(spy)
		m, err := engine.NewModel(c, rec, engine.RandomWeights(c, 1, 0.02), engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		g := newGen(t, m, engine.GeneratorOptions{MaxSeqs: 8})
		engine.SetPadDecode(g, true)
		rec.Take()
		var steps [][]enginetest.Call
		res, err := engine.GenerateChecked(g, reqs, func(int, uint64) { steps = append(steps, rec.Take()) })
		if err != nil {
			t.Fatal(err)
		}
		if spy.err != nil {
			t.Fatal(spy.err)
		}
		return res, steps, spy
	}
	want, plain, off := run(false)
	got, steps, spy := run(true)
	if off.begins != 0 || off.end != 0 {
		t.Fatalf("DecodeGraphs false: %d BeginDecodeStep, %d EndDecodeStep calls, want none", off.begins, off.end)
	}
	for _, st := range plain {
		if n := enginetest.Count(st); n["BeginDecodeStep"]+n["EndDecodeStep"] != 0 {
			t.Fatalf("DecodeGraphs false: the recorder saw %v", n)
		}
	}
	if len(steps) != 20 || spy.begins != 19 || spy.end != 19 {
		t.Fatalf("%d steps, %d BeginDecodeStep, %d EndDecodeStep; want 20 steps (a prefill, 19 decode steps), 19 of each", len(steps), spy.begins, spy.end)
	}
	for i, st := range steps {
		var ops []string
		for _, c := range st {
			ops = append(ops, c.Op)
		}
		b, e := slices.Index(ops, "BeginDecodeStep"), slices.Index(ops, "EndDecodeStep")
		if i == 0 {
			if b >= 0 || e >= 0 {
				t.Fatalf("the prefill step is bracketed: %v", ops)
			}
			continue
		}
		if b < 0 || e < b+2 {
			t.Fatalf("decode step %d: no bracket around its ops: %v", i, ops)
		}
		if key, rows := st[b].Args, sampleRows(st); key != fmt.Sprint(rows) {
			t.Fatalf("decode step %d: BeginDecodeStep(%s), want the bucket %d", i, key, rows)
		}
		logits := st[e-1]
		if ops[b+1] != "Embedding" || logits.Op != "MatMul" || e+1 >= len(ops) || ops[e+1] != "Sample" ||
			logits.Tensors[0].T != st[e+1].Tensors[0].T {
			t.Fatalf("decode step %d: the bracket holds %v .. %v and is followed by %v; want Embedding .. the LM head's MatMul, then Sample of its logits",
				i, ops[b+1], ops[e-1], ops[e+1:])
		}
		for _, op := range ops[b+1 : e] {
			if slices.Contains([]string{"Sample", "Download", "Upload", "Alloc", "Free", "LogProbs", "BeginDecodeStep"}, op) {
				t.Fatalf("decode step %d: %s inside the bracket", i, op)
			}
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the generation differs with the hooks:\n got %v\nwant %v", got, want)
	}
}
