package enginetest

import (
	"context"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/prolong-rl/prolong/engine"
)

// Training of the tiny models with engine.Trainer on both backends.

func trainCases(o Options) []testCase {
	var cs []testCase
	for _, cfg := range tinyConfigs() {
		cs = append(cs, testCase{"Train/" + cfg.ModelType, func(c *caseCtx) { trainModel(c, cfg, false, 0) }})
		cs = append(cs, testCase{"Train/" + cfg.ModelType + "/lora", func(c *caseCtx) { trainModel(c, cfg, true, 0) }})
		cs = append(cs, testCase{"Train/" + cfg.ModelType + "/lora-dropout", func(c *caseCtx) { trainModel(c, cfg, true, 0.2) }})
	}
	for _, cfg := range tinyConfigs() {
		cs = append(cs, testCase{"Train/" + cfg.ModelType + "/fused-head", func(c *caseCtx) { trainFusedHead(c, cfg) }})
	}
	return cs
}

// trainBatch returns sequences of the given lengths, each scored from a random start.
func trainBatch(r *rand.Rand, vocab int, lens ...int) []engine.ScoreRequest {
	var out []engine.ScoreRequest
	for _, s := range randSeqs(r, vocab, lens...) {
		out = append(out, engine.ScoreRequest{Tokens: s, Start: 1 + r.IntN(len(s)-1)})
	}
	return out
}

// coefs returns random per-token coefficients shaped like the batch's scored tokens.
func coefs(r *rand.Rand, b []engine.ScoreRequest) [][]float64 {
	var out [][]float64
	for _, s := range b {
		row := make([]float64, len(s.Tokens)-s.Start)
		for i := range row {
			row[i] = r.NormFloat64()
		}
		out = append(out, row)
	}
	return out
}

// trainRun is what one backend's training produced.
type trainRun struct {
	names []string
	grads map[string][]float32 // after two micro-batches
	delta map[string][]float32 // weight change over ten optimizer steps
	loss  []float32            // loss of every ForwardBackward
}

// trainModel accumulates the gradient of two micro-batches (SFT cross-entropy over a ragged
// batch, then a weighted log-prob + entropy loss, so weight gradients must add up) and compares
// every weight's gradient; then takes ten AdamW steps (clipping, weight decay except on 1-D
// weights, warmup), each on a fresh micro-batch, and compares every weight's change. With
// lora, the same for rank-3 LoRA adapters on every linear layer (A from PEFT's init, B random
// so that A's gradient is not zero) over the frozen base: the adapters' gradients and changes;
// with dropout > 0, under LoRA dropout (Backend.Dropout's masks on the adapters' inputs, a new
// mask for every micro-batch and step).
func trainModel(c *caseCtx, cfg *engine.Config, lora bool, dropout float64) {
	steps := 10
	b1 := trainBatch(c.rng, cfg.VocabSize, 7, 13, 20)
	b2 := trainBatch(c.rng, cfg.VocabSize, 2, 17)
	w2, e2 := coefs(c.rng, b2), coefs(c.rng, b2)
	var later [][]engine.ScoreRequest
	for i := 1; i < steps; i++ {
		later = append(later, trainBatch(c.rng, cfg.VocabSize, 3+c.rng.IntN(20), 3+c.rng.IntN(20)))
	}
	var lc engine.LoRAConfig
	var adapters map[string]engine.HostTensor
	if lora {
		lc = engine.LoRAConfig{Rank: 3, Alpha: 6, Seed: 7, Dropout: dropout}
		var err error
		if adapters, err = engine.InitLoRA(cfg, lc); err != nil {
			panic(err)
		}
		// In a fixed order, so the case's inputs are the same every run (map order is not).
		for _, n := range slices.Sorted(maps.Keys(adapters)) {
			if strings.HasSuffix(n, ".lora_B.weight") {
				copy(adapters[n].Data, randn(c.rng, len(adapters[n].Data), 0.1))
			}
		}
	}
	run := func(b engine.TrainBackend) *trainRun {
		w := tinyWeights(cfg)
		m, err := engine.NewModel(cfg, b, w, engine.F32)
		if err != nil {
			panic(err)
		}
		defer freeModel(m)
		// Eps 1e-5, not the default 1e-8: AdamW's first step moves a weight by
		// lr·g/(|g|+eps), about lr·sign(g), so an element whose gradient is within rounding of
		// zero (a few 1e-8 here, as a cancelling sum gives) moves anywhere in [-lr, lr] on two
		// honest backends. With the default, one LoRA input in 40 gave an NMSE of 1.6e-4 for
		// a 2⁻²²-noisy CPU backend; with 1e-5 the worst of 240 runs was 2e-8.
		tr, err := engine.NewTrainer(m, engine.TrainOptions{Temperature: 0.9, MaxLogitRows: 16,
			Optimizer: engine.AdamWConfig{LR: 3e-3, Eps: 1e-5, WeightDecay: 0.05, NoDecay1D: true, ClipNorm: 1,
				Schedule: engine.LinearWarmup(3)}, LoRA: lc, LoRAInit: adapters})
		if err != nil {
			panic(err)
		}
		r := &trainRun{names: tr.TrainableNames(), grads: map[string][]float32{}, delta: map[string][]float32{}}
		fb := func(batch []engine.ScoreRequest, loss engine.LossFunc) {
			st, err := tr.ForwardBackward(context.Background(), batch, loss)
			if err != nil {
				panic(err)
			}
			r.loss = append(r.loss, float32(st.Loss))
		}
		n := 0
		for _, s := range append(b1, b2...) {
			n += len(s.Tokens) - s.Start
		}
		fb(b1, engine.CrossEntropy(float64(n)))
		fb(b2, engine.WeightedLogProb(w2, e2))
		for _, name := range r.names {
			if r.grads[name], err = tr.Grad(name); err != nil {
				panic(err)
			}
		}
		for i := 0; i < steps; i++ {
			if i > 0 {
				fb(later[i-1], engine.CrossEntropy(0))
			}
			if _, err := tr.Step(); err != nil {
				panic(err)
			}
		}
		after, err := m.HostWeights()
		if lora {
			after, err = m.AdapterWeights()
			w = adapters
		}
		if err != nil {
			panic(err)
		}
		for _, name := range r.names {
			d := after[name].Data
			for i, v := range w[name].Data {
				d[i] -= v
			}
			r.delta[name] = d
		}
		return r
	}
	want, got := run(c.ref), run(c.b)
	c.nmse("loss", got.loss, want.loss, c.tol.Train)
	for _, name := range want.names {
		c.nmse("grad/"+name, got.grads[name], want.grads[name], c.tol.Train)
	}
	for _, name := range want.names {
		c.nmse("adamw10/"+name, got.delta[name], want.delta[name], c.tol.Train)
	}
}

// trainFusedHead compares the backend's ForwardBackwardTokens (the LM head's log-probs,
// entropies and gradients in one pass over chunks of 4 rows) with the reference backend's
// ForwardBackward on the same per-token loss (log-prob and entropy terms, temperature 0.8):
// the loss and every weight's gradient.
func trainFusedHead(c *caseCtx, cfg *engine.Config) {
	batch := trainBatch(c.rng, cfg.VocabSize, 9, 14, 3)
	w, e := coefs(c.rng, batch), coefs(c.rng, batch)
	tl := engine.TokenLoss{Entropy: true, Term: func(s, j int, logp, ent float64) (float64, float64, float64) {
		return w[s][j]*logp + e[s][j]*ent, w[s][j], e[s][j]
	}}
	run := func(b engine.TrainBackend, fused bool) (float32, []string, map[string][]float32) {
		m, err := engine.NewModel(cfg, b, tinyWeights(cfg), engine.F32)
		if err != nil {
			panic(err)
		}
		defer freeModel(m)
		tr, err := engine.NewTrainer(m, engine.TrainOptions{Temperature: 0.8, MaxLogitRows: 4})
		if err != nil {
			panic(err)
		}
		var st *engine.StepStats
		if fused {
			st, err = tr.ForwardBackwardTokens(context.Background(), batch, tl)
		} else {
			st, err = tr.ForwardBackward(context.Background(), batch, tl.LossFunc())
		}
		if err != nil {
			panic(err)
		}
		grads := map[string][]float32{}
		for _, name := range tr.TrainableNames() {
			if grads[name], err = tr.Grad(name); err != nil {
				panic(err)
			}
		}
		return float32(st.Loss), tr.TrainableNames(), grads
	}
	wantLoss, names, want := run(c.ref, false)
	gotLoss, _, got := run(c.b, true)
	c.nmse("loss", []float32{gotLoss}, []float32{wantLoss}, c.tol.Train)
	for _, name := range names {
		c.nmse("grad/"+name, got[name], want[name], c.tol.Train)
	}
}
