package grpo

import (
	"context"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// lmHeadCounter is the CPU backend counting its LM-head GEMMs (MatMul into [rows, vocab]).
type lmHeadCounter struct {
	*cpu.Backend
	vocab int
	n     atomic.Int64
}

func (b *lmHeadCounter) MatMul(out, x, w *engine.Tensor) {
	if out.Shape[len(out.Shape)-1] == b.vocab {
		b.n.Add(1)
	}
	b.Backend.MatMul(out, x, w)
}

// onePassPolicy is a tiny Qwen2-shaped policy with the given vocabulary on a counting CPU
// backend, its log-probs at temperature 1.2.
func onePassPolicy(t *testing.T, vocab int) (*engine.Trainer, *lmHeadCounter) {
	t.Helper()
	c := &engine.Config{ModelType: "qwen2", VocabSize: vocab, HiddenSize: 16, NumHiddenLayers: 2, NumAttentionHeads: 2,
		NumKeyValueHeads: 1, HeadDim: 8, IntermediateSize: 32, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 128, AttentionBias: true}
	b := &lmHeadCounter{Backend: cpu.New(), vocab: vocab}
	m, err := engine.NewModel(c, b, engine.RandomWeights(c, 5, 0.3), engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := engine.NewTrainer(m, engine.TrainOptions{Temperature: 1.2, Optimizer: engine.AdamWConfig{LR: 1e-2, ClipNorm: 1}})
	if err != nil {
		t.Fatal(err)
	}
	return tr, b
}

// offPolicyRollouts are responses of the given lengths to two prompts (two kinds) with
// random tokens and advantages, and old, reference and rollout log-probs moved off the
// policy's by noise so that every clip is reached.
func offPolicyRollouts(t *testing.T, tr *engine.Trainer, lens []int) []*rollout {
	t.Helper()
	rng := rand.New(rand.NewPCG(11, 12))
	prompts := []*Prompt{{Tokens: []int32{1, 2, 3}, Kind: "a"}, {Tokens: []int32{4}, Kind: "b"}}
	var rs []*rollout
	for i, n := range lens {
		r := &rollout{prompt: prompts[i%2], adv: rng.NormFloat64()}
		for range n {
			r.tokens = append(r.tokens, int32(rng.IntN(tr.Model.Config.VocabSize)))
		}
		rs = append(rs, r)
	}
	sc, err := tr.Model.Score(context.Background(), scoreRequests(rs), tr.Temperature())
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		for _, lp := range sc[i].LogProbs {
			old := float64(lp) + 1.2*rng.NormFloat64()
			r.old = append(r.old, old)
			r.ref = append(r.ref, float64(lp)+0.5*rng.NormFloat64())
			r.rollout = append(r.rollout, old+0.7*rng.NormFloat64())
		}
	}
	return rs
}

// onePassUpdate accumulates the gradient of rs (one mini-batch, micro-batches of at most
// microTokens tokens, as miniBatch splits it) through the one-pass or the two-pass loss, and
// returns the loss sums, every gradient and the LM-head GEMMs it ran.
func onePassUpdate(t *testing.T, vocab int, lens []int, cfg LossConfig, microTokens int, twoPass bool) (lossAgg, map[string][]float32, int64) {
	t.Helper()
	tr, b := onePassPolicy(t, vocab)
	rs := offPolicyRollouts(t, tr, lens)
	po := &PolicyOptimizer{Policy: tr, twoPassLoss: twoPass}
	if cfg.KLCoef > 0 {
		po.Reference = tr.Model // microStep only asks whether there is one
	}
	lc := cfg
	for _, r := range rs {
		lc.TokenNorm += float64(r.length())
	}
	lc.SeqNorm = float64(len(rs))
	b.n.Store(0)
	var agg lossAgg
	for lo := 0; lo < len(rs); {
		hi, toks := lo, 0
		for hi < len(rs) && (hi == lo || toks+len(rs[hi].prompt.Tokens)+len(rs[hi].tokens) <= microTokens) {
			toks += len(rs[hi].prompt.Tokens) + len(rs[hi].tokens)
			hi++
		}
		if err := po.microStep(context.Background(), rs[lo:hi], lc, 1, &agg); err != nil {
			t.Fatal(err)
		}
		lo = hi
	}
	grads := map[string][]float32{}
	for _, name := range tr.TrainableNames() {
		g, err := tr.Grad(name)
		if err != nil {
			t.Fatal(err)
		}
		grads[name] = g
	}
	return agg, grads, b.n.Load()
}

// compareUpdates reports the loss sums and gradients of the one-pass update that differ from
// the two-pass one's by more than tol (relative; a gradient tensor by its largest element).
func compareUpdates(t *testing.T, name string, got, want lossAgg, gotG, wantG map[string][]float32, tol float64) {
	t.Helper()
	for _, s := range []struct {
		name      string
		got, want float64
	}{
		{"loss", got.loss, want.loss}, {"pg", got.pg, want.pg}, {"kl", got.kl, want.kl}, {"entropy", got.ent, want.ent},
		{"clip low", got.clo, want.clo}, {"clip high", got.chi, want.chi}, {"dual clip", got.dual, want.dual},
		{"approx kl", got.akl, want.akl}, {"tokens", got.tokens, want.tokens},
	} {
		if !relNear(s.got, s.want, tol) {
			t.Errorf("%s: %s = %.17g, two-pass %.17g", name, s.name, s.got, s.want)
		}
	}
	for _, m := range []struct {
		name      string
		got, want map[string]float64
	}{{"kind tokens", got.kindTokens, want.kindTokens}, {"kind entropy", got.kindEnt, want.kindEnt}, {"kind kl", got.kindKL, want.kindKL}} {
		if len(m.got) != len(m.want) {
			t.Errorf("%s: %s %v, two-pass %v", name, m.name, m.got, m.want)
		}
		for k, w := range m.want {
			if !relNear(m.got[k], w, tol) {
				t.Errorf("%s: %s[%s] = %.17g, two-pass %.17g", name, m.name, k, m.got[k], w)
			}
		}
	}
	if want.clo+want.chi == 0 {
		t.Errorf("%s: no token clipped: the case proves little", name)
	}
	for n, w := range wantG {
		g := gotG[n]
		var scale, diff float64
		for i := range w {
			scale = math.Max(scale, math.Abs(float64(w[i])))
			diff = math.Max(diff, math.Abs(float64(g[i])-float64(w[i])))
		}
		if scale == 0 || diff > tol*scale {
			t.Errorf("%s: gradient of %s differs by %g (largest element %g)", name, n, diff, scale)
		}
	}
}

// The GRPO update through the one-pass LM head (ForwardBackwardTokens with TokenPolicyLoss)
// gives the two-pass update's loss, metrics and every weight's gradient, under each option
// of the loss, over several micro-batches.
func TestMicroStepOnePassMatchesTwoPass(t *testing.T) {
	lens := []int{6, 2, 9, 4, 7, 3}
	for _, c := range lossOptionCases() {
		want, wantG, _ := onePassUpdate(t, 12, lens, c.cfg, 20, true)
		got, gotG, _ := onePassUpdate(t, 12, lens, c.cfg, 20, false)
		compareUpdates(t, c.name, got, want, gotG, wantG, 1e-6)
	}
}

// The GRPO update runs the LM head once per chunk of rows: with a vocabulary of 151,936 the
// 150 scored rows take two chunks of logits (64 MiB), too many to keep between two passes,
// so the two-pass loss ran four LM-head GEMMs where the one-pass loss runs two, with the same
// gradients. GSPO, whose loss is not per-token, keeps the two passes.
func TestGRPOStepRunsLMHeadOnce(t *testing.T) {
	const vocab = 151936
	lens := []int{50, 50, 50}
	cfg := DefaultLossConfig()
	want, wantG, nTwo := onePassUpdate(t, vocab, lens, cfg, 1000, true)
	got, gotG, nOne := onePassUpdate(t, vocab, lens, cfg, 1000, false)
	if nTwo != 4 || nOne != 2 {
		t.Errorf("LM-head GEMMs: one-pass %d, two-pass %d; want 2 and 4", nOne, nTwo)
	}
	compareUpdates(t, "vocabulary 151936", got, want, gotG, wantG, 1e-6)
	cfg.Mode, cfg.GSPOClipLow, cfg.GSPOClipHigh = PolicyGSPO, 3e-4, 4e-4
	if _, _, n := onePassUpdate(t, vocab, lens, cfg, 1000, false); n != 4 {
		t.Errorf("GSPO: %d LM-head GEMMs, want 4 (two passes)", n)
	}
}

// Whole GRPO steps through the one-pass loss log the metrics of the two-pass loss and end
// on the same weights.
func TestStepsOnePassMatchTwoPass(t *testing.T) {
	cfg := smallConfig()
	cfg.PromptsPerStep, cfg.SamplesPerPrompt, cfg.MaxResponseTokens = 6, 4, 8
	cfg.MicroBatchTokens = 24
	var metrics [2][]*Metrics
	var weights [2]map[string]engine.HostTensor
	for i, twoPass := range []bool{false, true} {
		tr, gen := newGRPO(t, cfg, countSevens)
		tr.twoPassLoss = twoPass
		for s := 0; s < 3; s++ {
			m, err := tr.Step(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			metrics[i] = append(metrics[i], m)
		}
		gen.Close()
		w, err := tr.Policy.Model.HostWeights()
		if err != nil {
			t.Fatal(err)
		}
		weights[i] = w
	}
	for s := range metrics[0] {
		g, w := metrics[0][s], metrics[1][s]
		if w.OptimizerUpdates == 0 || w.ClipFracLow+w.ClipFracHigh+w.ApproxKL == 0 && s > 0 {
			t.Errorf("step %d: no update or all on-policy (%d updates, approx KL %g)", s+1, w.OptimizerUpdates, w.ApproxKL)
		}
		for _, v := range []struct {
			name      string
			got, want float64
		}{
			{"loss", g.Loss, w.Loss}, {"pg_loss", g.PGLoss, w.PGLoss}, {"kl_loss", g.KL, w.KL}, {"entropy", g.Entropy, w.Entropy},
			{"pg_clipfrac", g.ClipFrac, w.ClipFrac}, {"clip low", g.ClipFracLow, w.ClipFracLow}, {"clip high", g.ClipFracHigh, w.ClipFracHigh},
			{"pg_clipfrac_lower", g.DualClipFrac, w.DualClipFrac}, {"ppo_kl", g.ApproxKL, w.ApproxKL}, {"grad_norm", g.GradNorm, w.GradNorm},
			{"reward", g.RewardMean, w.RewardMean}, {"train tokens", float64(g.TrainTokens), float64(w.TrainTokens)},
			{"entropy toy", g.EntropyByKind["toy"], w.EntropyByKind["toy"]}, {"kl toy", g.KLByKind["toy"], w.KLByKind["toy"]},
		} {
			if !relNear(v.got, v.want, 1e-6) {
				t.Errorf("step %d: %s = %.17g, two-pass %.17g", s+1, v.name, v.got, v.want)
			}
		}
	}
	for n, w := range weights[1] {
		for i, v := range w.Data {
			if g := weights[0][n].Data[i]; math.Abs(float64(g-v)) > 1e-6*math.Max(1, math.Abs(float64(v))) {
				t.Fatalf("weight %s[%d] = %v, two-pass %v", n, i, g, v)
			}
		}
	}
}
