package engine_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/engine/internal/kern"
)

// maxAbsDiff returns the largest |a-b| and the largest |b|.
func maxAbsDiff(a, b []float32) (diff, scale float64) {
	for i := range a {
		diff = max(diff, math.Abs(float64(a[i])-float64(b[i])))
		scale = max(scale, math.Abs(float64(b[i])))
	}
	return diff, scale
}

// TestGoldenLogits checks the logits of every fixture model against the PyTorch float64
// reference, all sequences in one ragged batch, on every matmul path the CPU has.
func TestGoldenLogits(t *testing.T) {
	for _, isa := range []string{"generic", kern.ISA()} {
		for _, name := range goldenNames(t) {
			t.Run(isa+"/"+name, func(t *testing.T) {
				defer kern.SetISA(isa)()
				g := loadGolden(t, name)
				m := g.model(t, engine.F32)
				got, err := m.Logits(context.Background(), g.seqs)
				if err != nil {
					t.Fatal(err)
				}
				for i := range g.seqs {
					d, s := maxAbsDiff(got[i], g.logits[i])
					if d > 1e-4 {
						t.Errorf("sequence %d (len %d): max |logit diff| %.3g (logits up to %.3g)", i, len(g.seqs[i]), d, s)
					}
				}
			})
		}
	}
}

// TestGoldenGreedy reproduces the reference greedy continuations exactly, both prompts
// decoded together with the KV cache.
func TestGoldenGreedy(t *testing.T) {
	for _, name := range goldenNames(t) {
		t.Run(name, func(t *testing.T) {
			g := loadGolden(t, name)
			m := g.model(t, engine.F32)
			gen, err := engine.NewGenerator(m, engine.GeneratorOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer gen.Close()
			var reqs []engine.Request
			for _, p := range g.greedy.Prompts {
				reqs = append(reqs, engine.Request{Prompt: p, Params: engine.SamplingParams{MaxNewTokens: g.greedy.MaxNewTokens}})
			}
			res, err := gen.Generate(context.Background(), reqs)
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range res {
				if !slices.Equal(r.Samples[0].Tokens, g.greedy.Continuations[i]) {
					t.Errorf("prompt %d: got %v, want %v", i, r.Samples[0].Tokens, g.greedy.Continuations[i])
				}
			}
			if gen.Cache().Used() != 0 {
				t.Errorf("%d KV blocks leaked", gen.Cache().Used())
			}
		})
	}
}

// TestBF16Weights: a model with bf16 linear weights widened to fp32 in the matmuls equals an
// fp32 model whose weights were rounded to bf16 on the host; with bf16 dot products (the
// default where the CPU has AVX512_BF16, emulated elsewhere) it stays close to it: each matmul's
// x is rounded to bf16 too (2^-9 relative), which moves these logits by about 0.1.
func TestBF16Weights(t *testing.T) {
	g := loadGolden(t, "qwen2")
	rounded := map[string]engine.HostTensor{}
	c := g.cfg
	for name, w := range g.weights {
		shape, _ := engine.WeightShape(c, name)
		d := slices.Clone(w.Data)
		if len(shape) == 2 && (name != "model.embed_tokens.weight" || c.TieWordEmbeddings) {
			bits := make([]uint16, len(d))
			kern.F32ToBF16(bits, d)
			kern.BF16ToF32(d, bits)
		}
		rounded[name] = engine.HostTensor{Shape: w.Shape, Data: d}
	}
	ref, err := engine.NewModel(c, cpu.New(), rounded, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := ref.Logits(context.Background(), g.seqs)
	for _, tc := range []struct {
		prec cpu.Precision
		tol  float64 // against the rounded fp32 model
	}{{cpu.PrecisionFP32, 1e-5}, {cpu.PrecisionBF16, 0.25}} {
		m, err := engine.NewModel(c, cpu.New(cpu.WithMatMulPrecision(tc.prec)), g.weights, engine.BF16)
		if err != nil {
			t.Fatal(err)
		}
		got, err := m.Logits(context.Background(), g.seqs)
		if err != nil {
			t.Fatal(err)
		}
		for i := range want {
			if d, _ := maxAbsDiff(got[i], want[i]); d > tc.tol {
				t.Errorf("%v matmuls, sequence %d: bf16 model differs from rounded fp32 model by %.3g", tc.prec, i, d)
			}
			if d, _ := maxAbsDiff(got[i], g.logits[i]); d > 0.5 {
				t.Errorf("%v matmuls, sequence %d: bf16 model far from fp32 reference: %.3g", tc.prec, i, d)
			}
		}
	}
}

// TestCachedEqualsUncached feeds a sequence one token at a time through the KV cache and
// compares every position's logits with the full forward pass.
func TestCachedEqualsUncached(t *testing.T) {
	for _, name := range goldenNames(t) {
		t.Run(name, func(t *testing.T) {
			g := loadGolden(t, name)
			m := g.model(t, engine.F32)
			seq := g.seqs[len(g.seqs)-1]
			full, err := m.Logits(context.Background(), [][]int32{seq})
			if err != nil {
				t.Fatal(err)
			}
			cache, err := engine.NewKVCache(m, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			s := cache.NewSeq()
			v := g.cfg.VocabSize
			// a 3-token prefill, then one token per step.
			for p := 0; p < len(seq); {
				n := 1
				if p == 0 {
					n = 3
				}
				err := engine.ForwardSeq(m, s, seq[p:p+n], func(l *engine.Tensor) error {
					got := make([]float32, v)
					if err := m.Backend.Download(l, got); err != nil {
						return err
					}
					pos := p + n - 1
					if d, _ := maxAbsDiff(got, full[0][pos*v:(pos+1)*v]); d > 1e-5 {
						t.Errorf("position %d: cached logits differ by %.3g", pos, d)
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				p += n
			}
		})
	}
}

func newGen(t *testing.T, m *engine.Model, opts engine.GeneratorOptions) *engine.Generator {
	t.Helper()
	g, err := engine.NewGenerator(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

// TestForkedSamples draws n samples per prompt from a shared, forked prompt cache and checks
// each sample's log-probs against an independent prefill of prompt+response (Score), for
// prompts ending inside a block and exactly at a block boundary (copy on write).
func TestForkedSamples(t *testing.T) {
	g := loadGolden(t, "qwen3")
	m := g.model(t, engine.F32)
	gen := newGen(t, m, engine.GeneratorOptions{})
	r := rand.New(rand.NewPCG(1, 2))
	var reqs []engine.Request
	for _, n := range []int{5, 16, 21} {
		prompt := make([]int32, n)
		for i := range prompt {
			prompt[i] = int32(r.IntN(g.cfg.VocabSize))
		}
		reqs = append(reqs, engine.Request{Prompt: prompt, Params: engine.SamplingParams{N: 4, Temperature: 1, MaxNewTokens: 20, Seed: uint64(n)}})
	}
	res, err := gen.Generate(context.Background(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	var score []engine.ScoreRequest
	for i, rs := range res {
		distinct := map[string]bool{}
		for _, s := range rs.Samples {
			score = append(score, engine.ScoreRequest{Tokens: append(slices.Clone(reqs[i].Prompt), s.Tokens...), Start: len(reqs[i].Prompt)})
			distinct[fmt.Sprint(s.Tokens)] = true
		}
		if len(distinct) < 2 {
			t.Errorf("prompt %d: the 4 samples are all equal: forks share state", i)
		}
	}
	sc, err := m.Score(context.Background(), score, 1)
	if err != nil {
		t.Fatal(err)
	}
	k := 0
	for _, rs := range res {
		for _, s := range rs.Samples {
			if d, _ := maxAbsDiff(s.LogProbs, sc[k].LogProbs); d > 1e-5 {
				t.Errorf("sample %d: forked log-probs differ from independent prefill by %.3g", k, d)
			}
			k++
		}
	}
	// Greedy forks all equal the single greedy continuation.
	p := g.greedy.Prompts[1]
	res, err = gen.Generate(context.Background(), []engine.Request{{Prompt: p, Params: engine.SamplingParams{N: 3, MaxNewTokens: 16}}})
	if err != nil {
		t.Fatal(err)
	}
	for j, s := range res[0].Samples {
		if !slices.Equal(s.Tokens, g.greedy.Continuations[1]) {
			t.Errorf("greedy fork %d = %v, want %v", j, s.Tokens, g.greedy.Continuations[1])
		}
	}
	if gen.Cache().Used() != 0 {
		t.Errorf("%d KV blocks leaked", gen.Cache().Used())
	}
}

// TestSeededSampling: same seed, same tokens, whatever else is in the batch; another seed,
// other tokens; stop tokens end a sample and are kept.
func TestSeededSampling(t *testing.T) {
	g := loadGolden(t, "llama3")
	m := g.model(t, engine.F32)
	gen := newGen(t, m, engine.GeneratorOptions{})
	a := engine.Request{Prompt: []int32{1, 2, 3}, Params: engine.SamplingParams{N: 3, Temperature: 1.2, TopP: 0.95, TopK: 50, MaxNewTokens: 24, Seed: 7}}
	b := engine.Request{Prompt: []int32{9, 8, 7, 6, 5}, Params: engine.SamplingParams{N: 2, Temperature: 0.7, MaxNewTokens: 10, Seed: 1}}
	alone, err := gen.Generate(context.Background(), []engine.Request{a})
	if err != nil {
		t.Fatal(err)
	}
	mixed, err := gen.Generate(context.Background(), []engine.Request{b, a})
	if err != nil {
		t.Fatal(err)
	}
	for j := range alone[0].Samples {
		if !slices.Equal(alone[0].Samples[j].Tokens, mixed[1].Samples[j].Tokens) {
			t.Errorf("sample %d depends on the batch: %v vs %v", j, alone[0].Samples[j].Tokens, mixed[1].Samples[j].Tokens)
		}
	}
	a.Params.Seed = 8
	other, _ := gen.Generate(context.Background(), []engine.Request{a})
	if slices.Equal(other[0].Samples[0].Tokens, alone[0].Samples[0].Tokens) {
		t.Error("a different seed gave the same tokens")
	}
	// Stop on the 5th token sampled by the first run.
	stop := alone[0].Samples[0].Tokens[4]
	a.Params.Seed = 7
	a.Params.StopTokens = []int32{stop}
	res, _ := gen.Generate(context.Background(), []engine.Request{a})
	s := res[0].Samples[0]
	if i := slices.Index(alone[0].Samples[0].Tokens, stop); len(s.Tokens) != i+1 || s.Finish != engine.FinishStop || s.Tokens[i] != stop {
		t.Errorf("stop token %d: got %v (%s)", stop, s.Tokens, s.Finish)
	}
	if alone[0].Samples[0].Finish != engine.FinishLength || len(alone[0].Samples[0].Tokens) != 24 {
		t.Errorf("max tokens: %d tokens, finish %s", len(alone[0].Samples[0].Tokens), alone[0].Samples[0].Finish)
	}
}

// TestKVBudget: a request one of whose samples cannot fit in the whole budget is refused with a
// clear error; a request whose samples fit only one at a time runs (they are preempted in turn;
// it used to be refused for its worst case, N samples at once); many requests that only fit one
// at a time all complete.
func TestKVBudget(t *testing.T) {
	g := loadGolden(t, "qwen2")
	m := g.model(t, engine.F32)
	c := g.cfg
	block := int64(c.NumHiddenLayers * 2 * c.KVDim() * engine.DefaultBlockSize * 4)
	gen := newGen(t, m, engine.GeneratorOptions{KVBudgetBytes: 8 * block}) // one request of the second batch at a time
	// 100 + 40 positions: 9 blocks.
	_, err := gen.Generate(context.Background(), []engine.Request{{Prompt: make([]int32, 100), Params: engine.SamplingParams{N: 4, MaxNewTokens: 40}}})
	if !errors.Is(err, engine.ErrKVBudget) || !strings.Contains(err.Error(), "request 0") {
		t.Fatalf("err = %v, want a KV budget error naming request 0", err)
	}
	// 40 + 40 positions: 5 blocks a sample, 20 for all four at once.
	res, err := gen.Generate(context.Background(), []engine.Request{{Prompt: make([]int32, 40), Params: engine.SamplingParams{N: 4, MaxNewTokens: 40, Temperature: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if gen.Preemptions() == 0 || len(res[0].Samples) != 4 || len(res[0].Samples[3].Tokens) != 40 {
		t.Fatalf("4 samples of 80 positions in 8 blocks: %d preemptions, %d samples", gen.Preemptions(), len(res[0].Samples))
	}
	var reqs []engine.Request
	for i := 0; i < 5; i++ {
		reqs = append(reqs, engine.Request{Prompt: []int32{int32(i), 1, 2}, Params: engine.SamplingParams{N: 2, MaxNewTokens: 20, Temperature: 1, Seed: uint64(i)}})
	}
	res, err = gen.Generate(context.Background(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		for _, s := range r.Samples {
			if len(s.Tokens) != 20 {
				t.Errorf("request %d: %d tokens", i, len(s.Tokens))
			}
		}
	}
	// the low-level cache refuses to grow past its budget, naming it.
	cache, _ := engine.NewKVCache(m, 2*block)
	s := cache.NewSeq()
	if _, err := s.Reserve(3 * engine.DefaultBlockSize); !errors.Is(err, engine.ErrKVBudget) {
		t.Errorf("reserve beyond budget: %v", err)
	}
	if cache.Used() != 0 || s.Len() != 0 {
		t.Errorf("failed reserve left %d blocks, len %d", cache.Used(), s.Len())
	}
}

func TestBadRequests(t *testing.T) {
	g := loadGolden(t, "qwen2")
	m := g.model(t, engine.F32)
	gen := newGen(t, m, engine.GeneratorOptions{})
	tests := []struct {
		r    engine.Request
		want string
	}{
		{engine.Request{Prompt: nil, Params: engine.SamplingParams{MaxNewTokens: 1}}, "empty prompt"},
		{engine.Request{Prompt: []int32{1}, Params: engine.SamplingParams{}}, "max_new_tokens"},
		{engine.Request{Prompt: []int32{1000}, Params: engine.SamplingParams{MaxNewTokens: 1}}, "token id 1000"},
		{engine.Request{Prompt: []int32{1}, Params: engine.SamplingParams{MaxNewTokens: 1, TopP: 2}}, "top_p"},
		{engine.Request{Prompt: []int32{1}, Params: engine.SamplingParams{MaxNewTokens: 600}}, "max_position_embeddings"},
	}
	for _, tt := range tests {
		_, err := gen.Generate(context.Background(), []engine.Request{{Prompt: []int32{1}, Params: engine.SamplingParams{MaxNewTokens: 1}}, tt.r})
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "request 1") {
			t.Errorf("err = %v, want request 1 and %q", err, tt.want)
		}
	}
	bad := map[string]engine.HostTensor{}
	for k, v := range g.weights {
		bad[k] = v
	}
	delete(bad, "model.layers.1.mlp.up_proj.weight")
	if _, err := engine.NewModel(g.cfg, cpu.New(), bad, engine.F32); err == nil || !strings.Contains(err.Error(), "model.layers.1.mlp.up_proj.weight") {
		t.Errorf("missing weight: %v", err)
	}
	bad["model.layers.1.mlp.up_proj.weight"] = engine.HostTensor{Shape: []int{3, 3}, Data: make([]float32, 9)}
	if _, err := engine.NewModel(g.cfg, cpu.New(), bad, engine.F32); err == nil || !strings.Contains(err.Error(), "shape [3 3]") {
		t.Errorf("bad shape: %v", err)
	}
}
