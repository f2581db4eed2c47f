package grpo

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// tokenLossOutput runs in through TokenPolicyLoss as ForwardBackwardTokens would (Term once
// per scored token, in order, with the log-probs and entropies of in) and returns its output
// with the derivatives Term gave (DEntropy nil when the loss does not use the entropy).
func tokenLossOutput(in LossInput, cfg LossConfig) (LossOutput, error) {
	logp, ent := in.LogProbs, in.Entropy
	in.LogProbs, in.Entropy = nil, nil
	l, err := NewTokenPolicyLoss(in, cfg)
	if err != nil {
		return LossOutput{}, err
	}
	tl := l.TokenLoss()
	dl, de := make([][]float64, len(logp)), make([][]float64, len(logp))
	var sum float64
	for s := range logp {
		dl[s], de[s] = make([]float64, len(logp[s])), make([]float64, len(logp[s]))
		for t := range logp[s] {
			var h float64
			if ent != nil {
				h = ent[s][t]
			}
			var v float64
			v, dl[s][t], de[s][t] = tl.Term(s, t, logp[s][t], h)
			sum += v
		}
	}
	out, err := l.Output()
	if err != nil {
		return out, err
	}
	if !near(sum, out.Loss, 1e-12) {
		return out, fmt.Errorf("the terms add up to %v, the loss is %v", sum, out.Loss)
	}
	out.DLogProbs = dl
	if tl.Entropy {
		out.DEntropy = de
	}
	return out, nil
}

// relNear reports whether got is within tol of want, relative to max(|want|, 1e-12).
func relNear(got, want, tol float64) bool {
	return math.Abs(got-want) <= tol*math.Max(math.Abs(want), 1e-12)
}

// compareLossOutputs reports every difference beyond tol (relative) between two outputs:
// loss, every metric, every per-sequence sum and every derivative.
func compareLossOutputs(t *testing.T, name string, got, want LossOutput, tol float64) {
	t.Helper()
	g, w := got.Metrics, want.Metrics
	for _, s := range []struct {
		name      string
		got, want float64
	}{
		{"loss", got.Loss, want.Loss}, {"pg_loss", g.PGLoss, w.PGLoss}, {"kl_loss", g.KLLoss, w.KLLoss},
		{"entropy_loss", g.EntropyLoss, w.EntropyLoss}, {"clip_frac_low", g.ClipFracLow, w.ClipFracLow},
		{"clip_frac_high", g.ClipFracHigh, w.ClipFracHigh}, {"dual_clip_frac", g.DualClipFrac, w.DualClipFrac},
		{"clip_cov_frac", g.ClipCovFrac, w.ClipCovFrac}, {"kl_cov_frac", g.KLCovFrac, w.KLCovFrac},
		{"approx_kl", g.ApproxKL, w.ApproxKL}, {"ref_kl", g.RefKL, w.RefKL}, {"entropy_mean", g.EntropyMean, w.EntropyMean},
		{"ratio_max", g.RatioMax, w.RatioMax}, {"tokens", float64(g.Tokens), float64(w.Tokens)}, {"seqs", float64(g.Seqs), float64(w.Seqs)},
	} {
		if !relNear(s.got, s.want, tol) {
			t.Errorf("%s: %s = %.17g, PolicyLoss %.17g", name, s.name, s.got, s.want)
		}
	}
	rows := func(what string, a, b [][]float64) {
		if (a == nil) != (b == nil) || len(a) != len(b) {
			t.Errorf("%s: %s has %d sequences (nil %v), PolicyLoss %d (nil %v)", name, what, len(a), a == nil, len(b), b == nil)
			return
		}
		for s := range b {
			for k := range b[s] {
				if !relNear(a[s][k], b[s][k], tol) {
					t.Errorf("%s: %s[%d][%d] = %.17g, PolicyLoss %.17g", name, what, s, k, a[s][k], b[s][k])
				}
			}
		}
	}
	rows("dlogp", got.DLogProbs, want.DLogProbs)
	rows("dentropy", got.DEntropy, want.DEntropy)
	rows("seq_ref_kl", [][]float64{got.SeqRefKL}, [][]float64{want.SeqRefKL})
	rows("seq_entropy", [][]float64{got.SeqEntropy}, [][]float64{want.SeqEntropy})
	for s := range want.SeqTokens {
		if got.SeqTokens[s] != want.SeqTokens[s] {
			t.Errorf("%s: seq_tokens[%d] = %d, PolicyLoss %d", name, s, got.SeqTokens[s], want.SeqTokens[s])
		}
	}
}

// The per-token loss of the GRPO mode equals verl's formulas as PyTorch autograd computes them
// (the goldens of TestPolicyLossGolden), value, metrics and gradients.
func TestTokenPolicyLossGolden(t *testing.T) {
	n := 0
	for _, g := range loadLossGoldens(t) {
		in, cfg := g.input()
		if !cfg.PerToken() {
			continue
		}
		n++
		out, err := tokenLossOutput(in, cfg)
		if err != nil {
			t.Fatalf("%s: %v", g.Name, err)
		}
		for _, s := range []struct {
			name      string
			got, want float64
		}{
			{"loss", out.Loss, g.Loss}, {"pg_loss", out.Metrics.PGLoss, g.PGLoss}, {"kl_loss", out.Metrics.KLLoss, g.KLLoss},
			{"entropy_loss", out.Metrics.EntropyLoss, g.EntropyLoss}, {"clip_frac_low", out.Metrics.ClipFracLow, g.ClipFracLow},
			{"clip_frac_high", out.Metrics.ClipFracHigh, g.ClipFracHigh}, {"dual_clip_frac", out.Metrics.DualClipFrac, g.DualClipFrac},
			{"approx_kl", out.Metrics.ApproxKL, g.ApproxKL}, {"ratio_max", out.Metrics.RatioMax, g.RatioMax},
		} {
			if !near(s.got, s.want, 1e-12) {
				t.Errorf("%s: %s = %.15g, torch %.15g", g.Name, s.name, s.got, s.want)
			}
		}
		for s := range g.DLogP {
			for k := range g.DLogP[s] {
				var de float64
				if out.DEntropy != nil {
					de = out.DEntropy[s][k]
				}
				if !near(out.DLogProbs[s][k], g.DLogP[s][k], 1e-10) || !near(de, g.DEntropy[s][k], 1e-12) {
					t.Errorf("%s: token [%d][%d]: dlogp %.15g dentropy %.15g, torch %.15g %.15g", g.Name, s, k,
						out.DLogProbs[s][k], de, g.DLogP[s][k], g.DEntropy[s][k])
				}
			}
		}
	}
	if n < 10 {
		t.Fatalf("only %d goldens of the per-token mode", n)
	}
}

// raggedLossInput is a batch of ragged sequences whose ratios reach both clip bounds and the
// dual clip, with reference, rollout log-probs and entropies.
func raggedLossInput(seed uint64, mask bool) LossInput {
	rng := rand.New(rand.NewPCG(seed, 7))
	lens := []int{5, 1, 9, 3, 7}
	var in LossInput
	for _, n := range lens {
		var lp, old, ref, ro, adv, ent []float64
		var mk []bool
		a := rng.NormFloat64()
		for range n {
			l := -3 * rng.Float64()
			lp = append(lp, l)
			old = append(old, l+1.2*rng.NormFloat64())
			ref = append(ref, l+0.5*rng.NormFloat64())
			ro = append(ro, old[len(old)-1]+0.7*rng.NormFloat64())
			adv = append(adv, a)
			ent = append(ent, 2*rng.Float64())
			mk = append(mk, rng.Float64() < 0.8)
		}
		in.LogProbs, in.OldLogProbs, in.RefLogProbs = append(in.LogProbs, lp), append(in.OldLogProbs, old), append(in.RefLogProbs, ref)
		in.RolloutLogProbs, in.Advantages, in.Entropy = append(in.RolloutLogProbs, ro), append(in.Advantages, adv), append(in.Entropy, ent)
		if mask {
			in.Mask = append(in.Mask, mk)
		}
	}
	return in
}

// lossOptionCases are the GRPO loss's options, one case each.
func lossOptionCases() []struct {
	name string
	cfg  LossConfig
} {
	base := DefaultLossConfig()
	with := func(f func(*LossConfig)) LossConfig { c := base; f(&c); return c }
	return []struct {
		name string
		cfg  LossConfig
	}{
		{"default (ProRL)", base},
		{"clip-high 0.2", with(func(c *LossConfig) { c.ClipHigh = 0.2 })},
		{"clip-high 0.28", with(func(c *LossConfig) { c.ClipHigh = 0.28 })},
		{"clip-low 0.1 clip-high 1", with(func(c *LossConfig) { c.ClipLow, c.ClipHigh = 0.1, 1 })},
		{"no dual clip", with(func(c *LossConfig) { c.DualClip = 0 })},
		{"kl off", with(func(c *LossConfig) { c.KLCoef = 0 })},
		{"kl k1", with(func(c *LossConfig) { c.KL, c.KLCoef = KLK1, 0.05 })},
		{"kl k2", with(func(c *LossConfig) { c.KL, c.KLCoef = KLK2, 0.05 })},
		{"kl k3", with(func(c *LossConfig) { c.KL, c.KLCoef = KLK3, 0.05 })},
		{"entropy 0.01", with(func(c *LossConfig) { c.EntropyCoef = 0.01 })},
		{"entropy -0.003", with(func(c *LossConfig) { c.EntropyCoef = -0.003 })},
		{"tis 2", with(func(c *LossConfig) { c.TISCap = 2 })},
		{"tis 1.2 kl k2 entropy", with(func(c *LossConfig) { c.TISCap, c.KL, c.KLCoef, c.EntropyCoef = 1.2, KLK2, 0.1, 0.01 })},
		{"seq-mean-token-sum", with(func(c *LossConfig) { c.Agg = AggSeqMeanTokenSum })},
		{"seq-mean-token-mean", with(func(c *LossConfig) { c.Agg = AggSeqMeanTokenMean })},
		{"seq-mean-token-mean seq norm 11", with(func(c *LossConfig) { c.Agg, c.SeqNorm = AggSeqMeanTokenMean, 11 })},
		{"token-mean token norm 77", with(func(c *LossConfig) { c.TokenNorm = 77 })},
		{"everything", with(func(c *LossConfig) {
			c.ClipHigh, c.KL, c.KLCoef, c.EntropyCoef, c.TISCap, c.Agg, c.SeqNorm = 0.28, KLK1, 0.02, 0.005, 3, AggSeqMeanTokenSum, 9
		})},
	}
}

// The per-token loss gives PolicyLoss's loss, derivatives, metrics and per-sequence sums under
// every option of the GRPO loss, with and without a mask.
func TestTokenPolicyLossMatchesPolicyLoss(t *testing.T) {
	for _, c := range lossOptionCases() {
		for _, mask := range []bool{false, true} {
			name := c.name
			if mask {
				name += " masked"
			}
			in := raggedLossInput(3, mask)
			if c.cfg.KLCoef == 0 {
				in.RefLogProbs = nil
			}
			want, err := PolicyLoss(in, c.cfg)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			m := want.Metrics
			if m.ClipFracLow == 0 || m.ClipFracHigh == 0 || (c.cfg.DualClip > 0 && m.DualClipFrac == 0) {
				t.Fatalf("%s: the input does not reach every clip (low %v high %v dual %v)", name, m.ClipFracLow, m.ClipFracHigh, m.DualClipFrac)
			}
			got, err := tokenLossOutput(in, c.cfg)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			compareLossOutputs(t, name, got, want, 1e-6)
		}
	}
}

func TestTokenPolicyLossErrors(t *testing.T) {
	in := raggedLossInput(1, false)
	noLogp := in
	noLogp.LogProbs, noLogp.Entropy = nil, nil
	short := noLogp
	short.Advantages = append([][]float64{in.Advantages[0][:2]}, in.Advantages[1:]...)
	cases := []struct {
		name string
		in   LossInput
		cfg  LossConfig
		want string
	}{
		{"gspo", noLogp, LossConfig{Mode: PolicyGSPO, GSPOClipLow: 3e-4, GSPOClipHigh: 4e-4}, "not a sum of per-token terms"},
		{"clip-cov", noLogp, LossConfig{Mode: PolicyClipCov, ClipCovRatio: 0.1, ClipCovLow: 1, ClipCovHigh: 5}, "not a sum of per-token terms"},
		{"kl-cov", noLogp, LossConfig{Mode: PolicyKLCov, KLCovRatio: 0.1}, "not a sum of per-token terms"},
		{"log-probs given", in, DefaultLossConfig(), "must be nil"},
		{"no old log-probs", LossInput{Advantages: in.Advantages}, DefaultLossConfig(), "OldLogProbs is nil"},
		{"short advantages", short, DefaultLossConfig(), "LossInput.Advantages sequence 0 has 2 tokens, LogProbs 5"},
		{"bad config", noLogp, LossConfig{ClipLow: 2}, "clip-low"},
	}
	for _, c := range cases {
		if _, err := NewTokenPolicyLoss(c.in, c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want it to contain %q", c.name, err, c.want)
		}
	}
	for _, c := range []LossConfig{{Mode: PolicyGSPO}, {Mode: PolicyClipCov}, {Mode: PolicyKLCov}} {
		if c.PerToken() {
			t.Errorf("%s: PerToken", c.Mode)
		}
	}

	// The engine scoring more or fewer tokens than the input has is an error, not a panic.
	l, err := NewTokenPolicyLoss(noLogp, DefaultLossConfig())
	if err != nil {
		t.Fatal(err)
	}
	if v, _, _ := l.TokenLoss().Term(0, 5, -1, 1); !math.IsNaN(v) {
		t.Errorf("token outside the shape: term %v, want NaN", v)
	}
	if _, err := l.Output(); err == nil || !strings.Contains(err.Error(), "outside the loss input's shape") {
		t.Errorf("token outside the shape: %v", err)
	}
	l, _ = NewTokenPolicyLoss(noLogp, DefaultLossConfig())
	l.TokenLoss().Term(0, 0, -1, 1)
	if _, err := l.Output(); err == nil || !strings.Contains(err.Error(), "gave 1 of the loss input's 25 valid tokens") {
		t.Errorf("tokens missing: %v", err)
	}
}
