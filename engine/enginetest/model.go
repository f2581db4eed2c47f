package enginetest

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/prolong-rl/prolong/engine"
)

// Whole tiny models, built on both backends from the same random weights.

// tinyConfigs are the model shapes of the suite: Qwen2 (q/k/v biases, tied embeddings,
// H/KV = 6, Dh = 8), Qwen3 (qk-norm, untied, H/KV = 2, Dh = 24 with H·Dh != D) and Llama
// (llama3 RoPE scaling, untied, no GQA, Dh = 16). Vocabularies are odd sizes.
func tinyConfigs() []*engine.Config {
	return []*engine.Config{
		{ModelType: "qwen2", VocabSize: 131, HiddenSize: 48, NumHiddenLayers: 2, NumAttentionHeads: 6,
			NumKeyValueHeads: 1, HeadDim: 8, IntermediateSize: 80, RMSNormEps: 1e-6, RopeTheta: 10000,
			MaxPositionEmbeddings: 256, TieWordEmbeddings: true, AttentionBias: true},
		{ModelType: "qwen3", VocabSize: 97, HiddenSize: 40, NumHiddenLayers: 2, NumAttentionHeads: 4,
			NumKeyValueHeads: 2, HeadDim: 24, IntermediateSize: 72, RMSNormEps: 1e-6, RopeTheta: 1e6,
			MaxPositionEmbeddings: 256, QKNorm: true},
		{ModelType: "llama", VocabSize: 113, HiddenSize: 64, NumHiddenLayers: 2, NumAttentionHeads: 4,
			NumKeyValueHeads: 4, HeadDim: 16, IntermediateSize: 96, RMSNormEps: 1e-5, RopeTheta: 500000,
			MaxPositionEmbeddings: 256, RopeScaling: &engine.RopeScaling{Type: "llama3", Factor: 8,
				LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 32}},
	}
}

// tinyWeights are the random weights of config c: std 0.25 makes the logits spread over a
// few units, so that greedy decoding is not decided by rounding.
func tinyWeights(c *engine.Config) map[string]engine.HostTensor {
	return engine.RandomWeights(c, uint64(c.VocabSize), 0.25)
}

// newModel builds a model on b; the caller frees it with freeModel.
func newModel(c *engine.Config, b engine.Backend, dt engine.DType) *engine.Model {
	m, err := engine.NewModel(c, b, tinyWeights(c), dt)
	if err != nil {
		panic(err)
	}
	return m
}

// freeModel frees the weights of m (the RoPE tables are the model's own and stay).
func freeModel(m *engine.Model) {
	seen := map[*engine.Tensor]bool{}
	for _, name := range engine.WeightNames(m.Config) {
		if w := m.Weight(name); w != nil && !seen[w] {
			seen[w] = true
			m.Backend.Free(w)
		}
	}
	if m.LMHead != nil && !seen[m.LMHead] {
		m.Backend.Free(m.LMHead)
	}
}

// randSeqs returns sequences of the given lengths with random tokens.
func randSeqs(r *rand.Rand, vocab int, lens ...int) [][]int32 {
	var out [][]int32
	for _, n := range lens {
		out = append(out, randIDs(r, n, vocab))
	}
	return out
}

func modelCases(o Options) []testCase {
	dt := "f32"
	if o.WeightDType == engine.BF16 {
		dt = "bf16"
	}
	var cs []testCase
	for _, cfg := range tinyConfigs() {
		p := "Model/" + cfg.ModelType + "/"
		cs = append(cs, testCase{p + "logits/" + dt, func(c *caseCtx) { modelLogits(c, cfg) }})
		cs = append(cs, testCase{p + "score/" + dt, func(c *caseCtx) { modelScore(c, cfg) }})
		cs = append(cs, testCase{p + "score-long/" + dt, func(c *caseCtx) { modelScore(c, cfg, 200, 67, 131, 2) }})
		cs = append(cs, testCase{p + "cached/" + dt, func(c *caseCtx) { modelCached(c, cfg) }})
		if o.WeightDType == engine.F32 {
			cs = append(cs, testCase{p + "greedy/" + dt, func(c *caseCtx) { modelGreedy(c, cfg, engine.KVF32) }})
		}
		// Decoding from a bf16 KV cache on both backends (fp32 weights whatever o says), on
		// the backends that have one.
		cs = append(cs, testCase{p + "greedy/bf16kv", func(c *caseCtx) { modelGreedy(c, cfg, engine.KVBF16) }})
	}
	return cs
}

// modelLogits compares the logits of a ragged prefill batch (lengths 1 to 40: one token,
// inside a KV block, across blocks) on both backends.
func modelLogits(c *caseCtx, cfg *engine.Config) {
	lens := []int{1, 9, 23, 40}
	if c.o.Short {
		lens = []int{1, 9, 23}
	}
	seqs := randSeqs(c.rng, cfg.VocabSize, lens...)
	run := func(b engine.TrainBackend) []float32 {
		m := newModel(cfg, b, c.o.WeightDType)
		defer freeModel(m)
		l, err := m.Logits(context.Background(), seqs)
		if err != nil {
			panic(err)
		}
		return slices.Concat(l...)
	}
	want := run(c.ref)
	c.nmse("", run(c.b), want, c.tol.Model)
}

// modelScore compares the log-probs and entropies of Model.Score (temperature 0.8) on both
// backends, on a packed batch of sequences of lengths 12, 30 and 5, or lens (score-long: odd
// lengths across the tiles of the CPU backend's tiled prefill).
func modelScore(c *caseCtx, cfg *engine.Config, lens ...int) {
	if len(lens) == 0 {
		lens = []int{12, 30, 5}
	}
	var reqs []engine.ScoreRequest
	for _, s := range randSeqs(c.rng, cfg.VocabSize, lens...) {
		reqs = append(reqs, engine.ScoreRequest{Tokens: s, Start: 1 + c.rng.IntN(len(s)-1)})
	}
	run := func(b engine.TrainBackend) (lp, ent []float32) {
		m := newModel(cfg, b, c.o.WeightDType)
		defer freeModel(m)
		res, err := m.Score(context.Background(), reqs, 0.8)
		if err != nil {
			panic(err)
		}
		for _, r := range res {
			lp, ent = append(lp, r.LogProbs...), append(ent, r.Entropy...)
		}
		return lp, ent
	}
	wl, we := run(c.ref)
	gl, ge := run(c.b)
	c.nmse("logp", gl, wl, c.tol.Model)
	c.nmse("entropy", ge, we, c.tol.Model)
}

// modelCached generates on the backend under test with the KV cache (a prefill, then one
// token per step; three samples per prompt forked from the prompt's cache, prompts ending
// inside a block, at a block boundary and across one, so that shared blocks are copied on
// write) and compares each sampled token's log-prob with an uncached prefill of prompt and
// response (Model.Score) on the same backend.
func modelCached(c *caseCtx, cfg *engine.Config) {
	newTokens := 12
	if c.o.Short {
		newTokens = 6
	}
	m := newModel(cfg, c.b, c.o.WeightDType)
	defer freeModel(m)
	var reqs []engine.Request
	for i, p := range randSeqs(c.rng, cfg.VocabSize, 5, 16, 21) {
		reqs = append(reqs, engine.Request{Prompt: p, Params: engine.SamplingParams{N: 3, Temperature: 1,
			MaxNewTokens: newTokens, Seed: uint64(i + 1)}})
	}
	res := generate(m, reqs)
	var score []engine.ScoreRequest
	var cached []float32
	for i, r := range res {
		for _, s := range r.Samples {
			score = append(score, engine.ScoreRequest{Tokens: slices.Concat(reqs[i].Prompt, s.Tokens), Start: len(reqs[i].Prompt)})
			cached = append(cached, s.LogProbs...)
		}
	}
	sc, err := m.Score(context.Background(), score, 1)
	if err != nil {
		panic(err)
	}
	var full []float32
	for _, r := range sc {
		full = append(full, r.LogProbs...)
	}
	c.nmse("", cached, full, c.tol.Model)
}

// generate runs reqs through a fresh generator of m (default options) and returns the results;
// an error panics, as the cases report.
func generate(m *engine.Model, reqs []engine.Request) []engine.Result {
	return generateKV(m, reqs, engine.KVAuto)
}

// generateKV is generate with a KV cache of kv.
func generateKV(m *engine.Model, reqs []engine.Request, kv engine.KVDType) []engine.Result {
	gen, err := engine.NewGenerator(m, engine.GeneratorOptions{KVDType: kv})
	if err != nil {
		panic(err)
	}
	defer gen.Close()
	res, err := gen.Generate(context.Background(), reqs)
	if err != nil {
		panic(err)
	}
	return res
}

// modelGreedy compares greedy generation (fp32 weights, a KV cache of kv) token by token with
// the reference. Where the tokens part, the reference's logits there must not be a near tie
// (the two tokens' logits within 1e-4 of the row's scale); a near tie passes, with a note. With
// a bf16 cache the log-probs of the tokens up to where they part are compared too (Model
// tolerance), and a backend without bf16 caches records the case as passed, saying so.
func modelGreedy(c *caseCtx, cfg *engine.Config, kv engine.KVDType) {
	if kv == engine.KVBF16 && !engine.KVDTypeSupported(c.b, engine.BF16) {
		c.add(Result{Metric: MetricMismatch, Pass: true, BadIndex: -1,
			Detail: fmt.Sprintf("not run: the %s backend's KV store holds no bf16", c.b.Name())})
		return
	}
	const newTokens = 16
	prompts := randSeqs(c.rng, cfg.VocabSize, 3, 18)
	run := func(b engine.TrainBackend) ([][]int32, [][]float32) {
		m := newModel(cfg, b, engine.F32)
		defer freeModel(m)
		var reqs []engine.Request
		for _, p := range prompts {
			reqs = append(reqs, engine.Request{Prompt: p, Params: engine.SamplingParams{MaxNewTokens: newTokens}})
		}
		var out [][]int32
		var lps [][]float32
		for _, r := range generateKV(m, reqs, kv) {
			out = append(out, r.Samples[0].Tokens)
			lps = append(lps, r.Samples[0].LogProbs)
		}
		return out, lps
	}
	want, wantLP := run(c.ref)
	got, gotLP := run(c.b)
	if kv == engine.KVBF16 {
		var g, w []float32
		for i := range want {
			for j := 0; j < len(want[i]) && j < len(got[i]) && want[i][j] == got[i][j]; j++ {
				g, w = append(g, gotLP[i][j]), append(w, wantLP[i][j])
			}
		}
		c.nmse("logprobs", g, w, c.tol.Model)
	}
	r := Result{Metric: MetricMismatch, Tol: 0, Pass: true, BadIndex: -1}
	var differ, total int
	for i := range want {
		total += len(want[i])
		j := 0
		for j < len(want[i]) && j < len(got[i]) && want[i][j] == got[i][j] {
			j++
		}
		if j == len(want[i]) && len(got[i]) == len(want[i]) {
			continue
		}
		differ += len(want[i]) - j
		if r.BadIndex < 0 {
			r.BadIndex = i*newTokens + j
			if j < len(got[i]) {
				r.Got, r.Want = float64(got[i][j]), float64(want[i][j])
			}
		}
		if j >= len(got[i]) {
			r.Pass = false
			r.Detail += fmt.Sprintf("prompt %d: %d tokens, want %d; ", i, len(got[i]), len(want[i]))
			continue
		}
		// Is position j a near tie on the reference?
		m := newModel(cfg, c.ref, engine.F32)
		l, err := m.Logits(context.Background(), [][]int32{slices.Concat(prompts[i], want[i][:j])})
		freeModel(m)
		if err != nil {
			panic(err)
		}
		row := l[0][len(l[0])-cfg.VocabSize:]
		var scale float64
		for _, v := range row {
			scale = max(scale, math.Abs(float64(v)))
		}
		gap := math.Abs(float64(row[got[i][j]]) - float64(row[want[i][j]]))
		if gap <= 1e-4*scale {
			r.Detail += fmt.Sprintf("prompt %d: tokens part at %d on a near tie (logit gap %.2g); ", i, j, gap)
		} else {
			r.Pass = false
			r.Detail += fmt.Sprintf("prompt %d: tokens part at %d (got %d, want %d; reference logit gap %.3g); ", i, j, got[i][j], want[i][j], gap)
		}
	}
	r.Error = float64(differ) / float64(total)
	c.add(r)
}
