package engine_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// weightedTokens is Σ w·logp + e·H over the batch's scored tokens as a TokenLoss (w, e per
// sequence and token).
func weightedTokens(w, e [][]float64) engine.TokenLoss {
	return engine.TokenLoss{Entropy: true, Term: func(s, j int, logp, ent float64) (float64, float64, float64) {
		return w[s][j]*logp + e[s][j]*ent, w[s][j], e[s][j]
	}}
}

// TestFusedHeadVsTwoPass: ForwardBackwardTokens (log-probs, entropies and gradients in one
// pass over the LM head's chunks) gives the same loss, log-probs and gradients, bit for bit, as
// ForwardBackward (log-probs first, the loss on all of them, then the gradients) on the same
// loss, for chunks of 1, 5 and all rows, a temperature, recompute, on every golden config (tied
// and untied heads); and its gradients match the float64 reference (itself checked against
// finite differences and PyTorch) to 1e-4 relative.
func TestFusedHeadVsTwoPass(t *testing.T) {
	for _, name := range goldenNames(t) {
		g := loadGolden(t, name)
		for _, tc := range []struct {
			rows      int
			temp      float32
			recompute bool
		}{{1, 1, false}, {5, 1, true}, {0, 1, false}, {5, 0.7, false}} {
			t.Run(fmt.Sprintf("%s/rows=%d/temp=%g/recompute=%v", name, tc.rows, tc.temp, tc.recompute), func(t *testing.T) {
				r := rand.New(rand.NewPCG(5, 6))
				batch := trainBatch(r, g.cfg.VocabSize, 7, 13, 20, 2)
				w, e := randomCoefs(r, batch), randomCoefs(r, batch)
				tl := weightedTokens(w, e)
				opts := engine.TrainOptions{Recompute: tc.recompute, MaxLogitRows: tc.rows, Temperature: tc.temp}
				two := newTrainer(t, g.cfg, g.weights, opts)
				fused := newTrainer(t, g.cfg, g.weights, opts)
				st2, err := two.ForwardBackward(context.Background(), batch, tl.LossFunc())
				if err != nil {
					t.Fatal(err)
				}
				stf, err := fused.ForwardBackwardTokens(context.Background(), batch, tl)
				if err != nil {
					t.Fatal(err)
				}
				if stf.Loss != st2.Loss || fmt.Sprint(stf.LogProb, stf.Entropy) != fmt.Sprint(st2.LogProb, st2.Entropy) {
					t.Fatalf("fused loss %v, log-probs or entropies differ from the two-pass head's (loss %v)", stf.Loss, st2.Loss)
				}
				for _, wn := range two.TrainableNames() {
					want, _ := two.Grad(wn)
					got, err := fused.Grad(wn)
					if err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(got, want) {
						t.Errorf("grad %s: fused head differs from the two-pass head (relative %.3g)", wn, relErr(got, f64s(want)))
					}
				}
				if tc.temp != 1 {
					return
				}
				ref, err := engine.NewRefModel(g.cfg, g.weights)
				if err != nil {
					t.Fatal(err)
				}
				seqs, pos, targets := refArgs(batch)
				wantLoss, wantGrads := ref.ForwardBackward(seqs, pos, targets, weightedLoss(flat(w), flat(e)))
				if math.Abs(stf.Loss-wantLoss) > 1e-5*math.Max(1, math.Abs(wantLoss)) {
					t.Errorf("loss %.8g, reference %.8g", stf.Loss, wantLoss)
				}
				for _, wn := range fused.TrainableNames() {
					got, _ := fused.Grad(wn)
					if e := relErr(got, wantGrads[wn]); e > 1e-4 || math.IsNaN(e) {
						t.Errorf("grad %s relative error %.3g against the float64 reference", wn, e)
					}
				}
			})
		}
	}
}

func f64s(s []float32) []float64 {
	out := make([]float64, len(s))
	for i, v := range s {
		out[i] = float64(v)
	}
	return out
}

// TestFusedHeadFiniteDifferences checks the fused head's gradients of the LM head, the final
// norm and the embedding (the head's input, through every layer) against central finite
// differences of the loss it reports, on a model with an untied head, 3-row chunks and a loss
// with log-prob and entropy terms. fp32 forward passes: step 1e-2, tolerance 2% of the largest
// entry checked plus 1e-4.
func TestFusedHeadFiniteDifferences(t *testing.T) {
	g := loadGolden(t, "qwen2")
	cfg := *g.cfg
	cfg.TieWordEmbeddings = false
	weights := map[string]engine.HostTensor{}
	for k, v := range g.weights {
		weights[k] = engine.HostTensor{Shape: v.Shape, Data: slices.Clone(v.Data)}
	}
	if _, ok := weights["lm_head.weight"]; !ok {
		e := weights["model.embed_tokens.weight"]
		weights["lm_head.weight"] = engine.HostTensor{Shape: e.Shape, Data: slices.Clone(e.Data)}
	}
	r := rand.New(rand.NewPCG(7, 8))
	batch := trainBatch(r, cfg.VocabSize, 6, 9)
	tl := weightedTokens(randomCoefs(r, batch), randomCoefs(r, batch))
	tr := newTrainer(t, &cfg, weights, engine.TrainOptions{MaxLogitRows: 3})
	if _, err := tr.ForwardBackwardTokens(context.Background(), batch, tl); err != nil {
		t.Fatal(err)
	}
	names := []string{"lm_head.weight", "model.norm.weight", "model.embed_tokens.weight"}
	grads := map[string][]float32{}
	for _, name := range names {
		g, err := tr.Grad(name)
		if err != nil {
			t.Fatal(err)
		}
		grads[name] = g
	}
	lossAt := func(name string, i int, v float32) float64 {
		w := weights[name].Data
		old := w[i]
		w[i] = v
		defer func() { w[i] = old }()
		if err := tr.LoadWeights(weights); err != nil {
			t.Fatal(err)
		}
		st, err := tr.ForwardBackwardTokens(context.Background(), batch, tl)
		if err != nil {
			t.Fatal(err)
		}
		return st.Loss
	}
	for _, name := range names {
		grad := grads[name]
		// The entries of largest gradient (the embedding's rows of tokens in the batch) and a
		// few at random.
		idx := make([]int, len(grad))
		for i := range idx {
			idx[i] = i
		}
		slices.SortFunc(idx, func(a, b int) int { return cmpAbs(grad[b], grad[a]) })
		pick := append(idx[:6:6], r.IntN(len(grad)), r.IntN(len(grad)))
		var gmax float64
		for _, i := range pick {
			gmax = math.Max(gmax, math.Abs(float64(grad[i])))
		}
		for _, i := range pick {
			const h = 1e-2
			w := weights[name].Data[i]
			fd := (lossAt(name, i, w+h) - lossAt(name, i, w-h)) / (2 * h)
			if d := math.Abs(fd - float64(grad[i])); d > 0.02*gmax+1e-4 {
				t.Errorf("%s[%d]: gradient %.6g, finite difference %.6g", name, i, grad[i], fd)
			}
		}
	}
}

func cmpAbs(a, b float32) int {
	x, y := math.Abs(float64(a)), math.Abs(float64(b))
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// liveBytes is the CPU backend with the bytes of the tensors allocated through Alloc and not
// yet freed counted, and their high-water mark.
type liveBytes struct {
	*cpu.Backend
	size       map[*engine.Tensor]int64
	live, peak int64
}

func (b *liveBytes) Alloc(shape ...int) *engine.Tensor {
	t := b.Backend.Alloc(shape...)
	b.size[t] = 4 * int64(t.Len())
	b.live += b.size[t]
	b.peak = max(b.peak, b.live)
	return t
}

func (b *liveBytes) Free(t *engine.Tensor) {
	if n, ok := b.size[t]; ok {
		b.live -= n
		delete(b.size, t)
	}
	b.Backend.Free(t)
}

// TestLMHeadMemoryFlat: the high-water mark of the engine's buffers during a training step's
// forward and backward grows with the tokens by the activations only, not by tokens ×
// vocabulary. With a vocabulary of 8192 and a one-layer model of width 16, going from 512 to
// 4000 scored tokens adds 3488 × 8192 × 4 = 114 MB of logits; the step's peak may grow by a
// quarter of that (28.6 MB: a 32 MiB chunk of logits instead of all 512 rows' 16 MiB, plus
// about 2 KB of activations and their gradients per token). Before, ForwardBackward kept all
// the logits for the backward up to 128 MiB (a peak 112 MiB higher at 4000 tokens).
func TestLMHeadMemoryFlat(t *testing.T) {
	cfg := &engine.Config{ModelType: "qwen2", VocabSize: 8192, HiddenSize: 16, NumHiddenLayers: 1, NumAttentionHeads: 1,
		NumKeyValueHeads: 1, HeadDim: 16, IntermediateSize: 16, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 4096}
	step := func(tokens int, fused bool) int64 {
		b := &liveBytes{Backend: cpu.New(), size: map[*engine.Tensor]int64{}}
		m, err := engine.NewModel(cfg, b, engine.RandomWeights(cfg, 1, 0.02), engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := engine.NewTrainer(m, engine.TrainOptions{})
		if err != nil {
			t.Fatal(err)
		}
		toks := make([]int32, tokens+1)
		for i := range toks {
			toks[i] = int32(i * 7919 % cfg.VocabSize)
		}
		seqs := []engine.ScoreRequest{{Tokens: toks, Start: 1}}
		base := b.live
		b.peak = base
		if fused {
			_, err = tr.ForwardBackwardTokens(context.Background(), seqs, engine.TokenCrossEntropy(float64(tokens)))
		} else {
			_, err = tr.ForwardBackward(context.Background(), seqs, engine.CrossEntropy(0))
		}
		if err != nil {
			t.Fatal(err)
		}
		return b.peak - base
	}
	const small, big = 512, 4000
	for _, fused := range []bool{false, true} {
		t.Run(fmt.Sprintf("fused=%v", fused), func(t *testing.T) {
			a, b := step(small, fused), step(big, fused)
			limit := int64((big - small) * cfg.VocabSize * 4 / 4)
			t.Logf("peak %.1f MiB at %d tokens, %.1f MiB at %d", float64(a)/(1<<20), small, float64(b)/(1<<20), big)
			if b > a+limit {
				t.Fatalf("a step of %d tokens peaks %d bytes above one of %d, over %d: the LM head's memory grows with tokens × vocabulary", big, b-a, small, limit)
			}
		})
	}
}
