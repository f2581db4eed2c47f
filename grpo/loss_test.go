package grpo

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
)

type lossGolden struct {
	Name         string      `json:"name"`
	Agg          AggMode     `json:"agg"`
	KL           KLEstimator `json:"kl"`
	KLCoef       float64     `json:"kl_coef"`
	DualClip     float64     `json:"dual_clip"`
	EntropyCoef  float64     `json:"entropy_coef"`
	ClipLow      float64     `json:"clip_low"`
	ClipHigh     float64     `json:"clip_high"`
	LogP         [][]float64 `json:"logp"`
	OldLogP      [][]float64 `json:"old_logp"`
	RefLogP      [][]float64 `json:"ref_logp"`
	Adv          [][]float64 `json:"adv"`
	Entropy      [][]float64 `json:"entropy"`
	Mask         [][]bool    `json:"mask"`
	Loss         float64     `json:"loss"`
	PGLoss       float64     `json:"pg_loss"`
	KLLoss       float64     `json:"kl_loss"`
	EntropyLoss  float64     `json:"entropy_loss"`
	ClipFracLow  float64     `json:"clip_frac_low"`
	ClipFracHigh float64     `json:"clip_frac_high"`
	DualClipFrac float64     `json:"dual_clip_frac"`
	ApproxKL     float64     `json:"approx_kl"`
	RatioMax     float64     `json:"ratio_max"`
	DLogP        [][]float64 `json:"dlogp"`
	DEntropy     [][]float64 `json:"dentropy"`
}

func loadLossGoldens(t *testing.T) []lossGolden {
	t.Helper()
	b, err := os.ReadFile("testdata/loss_golden.json")
	if err != nil {
		t.Fatalf("%v (regenerate with /usr/bin/python3 scripts/make_loss_goldens.py)", err)
	}
	var f struct {
		Cases []lossGolden `json:"cases"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("testdata/loss_golden.json: %v", err)
	}
	if len(f.Cases) < 18 {
		t.Fatalf("testdata/loss_golden.json has %d cases, want >= 18", len(f.Cases))
	}
	return f.Cases
}

func (g lossGolden) input() (LossInput, LossConfig) {
	return LossInput{
			LogProbs: g.LogP, OldLogProbs: g.OldLogP, RefLogProbs: g.RefLogP,
			Advantages: g.Adv, Entropy: g.Entropy, Mask: g.Mask,
		}, LossConfig{
			ClipLow: g.ClipLow, ClipHigh: g.ClipHigh, DualClip: g.DualClip, Agg: g.Agg,
			KLCoef: g.KLCoef, KL: g.KL, EntropyCoef: g.EntropyCoef,
		}
}

// PolicyLoss must match verl's formulas as implemented with PyTorch autograd, value and
// gradients, in every aggregation mode and KL estimator, with and without dual clip and entropy.
func TestPolicyLossGolden(t *testing.T) {
	for _, g := range loadLossGoldens(t) {
		in, cfg := g.input()
		out, err := PolicyLoss(in, cfg)
		if err != nil {
			t.Fatalf("%s: %v", g.Name, err)
		}
		const tol = 1e-12
		scalars := []struct {
			name      string
			got, want float64
		}{
			{"loss", out.Loss, g.Loss},
			{"pg_loss", out.Metrics.PGLoss, g.PGLoss},
			{"kl_loss", out.Metrics.KLLoss, g.KLLoss},
			{"entropy_loss", out.Metrics.EntropyLoss, g.EntropyLoss},
			{"clip_frac_low", out.Metrics.ClipFracLow, g.ClipFracLow},
			{"clip_frac_high", out.Metrics.ClipFracHigh, g.ClipFracHigh},
			{"dual_clip_frac", out.Metrics.DualClipFrac, g.DualClipFrac},
			{"approx_kl", out.Metrics.ApproxKL, g.ApproxKL},
			{"ratio_max", out.Metrics.RatioMax, g.RatioMax},
		}
		for _, s := range scalars {
			if !near(s.got, s.want, tol) {
				t.Errorf("%s: %s = %.15g, torch %.15g", g.Name, s.name, s.got, s.want)
			}
		}
		for s := range g.DLogP {
			for tk := range g.DLogP[s] {
				if !near(out.DLogProbs[s][tk], g.DLogP[s][tk], 1e-10) {
					t.Errorf("%s: dlogp[%d][%d] = %.15g, torch %.15g", g.Name, s, tk, out.DLogProbs[s][tk], g.DLogP[s][tk])
				}
				var de float64
				if out.DEntropy != nil {
					de = out.DEntropy[s][tk]
				}
				if !near(de, g.DEntropy[s][tk], 1e-12) {
					t.Errorf("%s: dentropy[%d][%d] = %.15g, torch %.15g", g.Name, s, tk, de, g.DEntropy[s][tk])
				}
			}
		}
	}
}

// Central finite differences of the loss agree with the analytic gradients.
func TestPolicyLossFiniteDifferences(t *testing.T) {
	for _, g := range loadLossGoldens(t) {
		in, cfg := g.input()
		out, err := PolicyLoss(in, cfg)
		if err != nil {
			t.Fatal(err)
		}
		lossAt := func() float64 {
			o, err := PolicyLoss(in, cfg)
			if err != nil {
				t.Fatal(err)
			}
			return o.Loss
		}
		const h = 1e-6
		for s := range in.LogProbs {
			for tk := range in.LogProbs[s] {
				for _, which := range []string{"logp", "entropy"} {
					row := in.LogProbs[s]
					if which == "entropy" {
						row = in.Entropy[s]
					}
					x := row[tk]
					row[tk] = x + h
					up := lossAt()
					row[tk] = x - h
					down := lossAt()
					row[tk] = x
					fd := (up - down) / (2 * h)
					an := out.DLogProbs[s][tk]
					if which == "entropy" {
						an = 0
						if out.DEntropy != nil {
							an = out.DEntropy[s][tk]
						}
					}
					// The loss is piecewise smooth; a kink within h of x (a clip bound) would show
					// as a jump, so compare with an absolute tolerance well above FD noise.
					if math.Abs(fd-an) > 1e-6*(1+math.Abs(an)) {
						t.Errorf("%s: d/d%s[%d][%d]: finite difference %.10g, analytic %.10g", g.Name, which, s, tk, fd, an)
					}
				}
			}
		}
	}
}

// Which tokens are clipped on which side, worked by hand with eps_low 0.2, eps_high 0.4.
func TestPolicyLossClipBoundsByHand(t *testing.T) {
	lr := math.Log
	// One token per sequence; the old log-prob is 0 so rho = exp(logp).
	cases := []struct {
		name             string
		rho, adv         float64
		dual             float64
		wantLoss, wantD  float64 // per-token loss and dLoss/dlogp (one token: weight 1)
		low, high, dualC bool
	}{
		{"A>0 inside", 1.1, 2, 0, -2.2, -2.2, false, false, false},
		{"A>0 above 1+hi clipped", 1.5, 2, 0, -2.8, 0, false, true, false},
		{"A>0 below 1-lo not clipped", 0.5, 2, 0, -1.0, -1.0, false, false, false},
		{"A<0 below 1-lo clipped", 0.5, -2, 0, 1.6, 0, true, false, false},
		{"A<0 above 1+hi not clipped", 1.5, -2, 0, 3.0, 3.0, false, false, false},
		{"A<0 rho 1.3 inside", 1.3, -1, 0, 1.3, 1.3, false, false, false},
		{"A<0 rho 5 dual clip at 3", 5, -1, 3, 3, 0, false, false, true},
		{"A<0 rho 2 under dual clip", 2, -1, 3, 2, 2, false, false, false},
		{"A>0 rho 5 dual clip inactive", 5, 1, 3, -1.4, 0, false, true, false},
		{"A=0", 3, 0, 0, 0, 0, false, false, false},
	}
	for _, c := range cases {
		in := LossInput{
			LogProbs:    [][]float64{{lr(c.rho)}},
			OldLogProbs: [][]float64{{0}},
			Advantages:  [][]float64{{c.adv}},
		}
		cfg := LossConfig{ClipLow: 0.2, ClipHigh: 0.4, DualClip: c.dual}
		out, err := PolicyLoss(in, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if !near(out.Loss, c.wantLoss, 1e-12) || !near(out.DLogProbs[0][0], c.wantD, 1e-12) {
			t.Errorf("%s: loss %v grad %v, want %v %v", c.name, out.Loss, out.DLogProbs[0][0], c.wantLoss, c.wantD)
		}
		m := out.Metrics
		if (m.ClipFracLow == 1) != c.low || (m.ClipFracHigh == 1) != c.high || (m.DualClipFrac == 1) != c.dualC {
			t.Errorf("%s: clip fractions low %v high %v dual %v, want %v %v %v", c.name, m.ClipFracLow, m.ClipFracHigh, m.DualClipFrac, c.low, c.high, c.dualC)
		}
	}
}

// The three KL estimators at logp = log 0.5, ref = log 0.25, worked by hand:
// k1 = log 2, k2 = (log 2)^2 / 2, k3 = 0.5 - log(0.5) - 1 = log 2 - 0.5;
// gradients: k1 1, k2 log 2, k3 1 - exp(ref-logp) = 0.5.
func TestKLEstimatorsByHand(t *testing.T) {
	ln2 := math.Ln2
	cases := []struct {
		est       KLEstimator
		val, grad float64
	}{
		{KLK1, ln2, 1},
		{KLK2, ln2 * ln2 / 2, ln2},
		{KLK3, ln2 - 0.5, 0.5},
	}
	for _, c := range cases {
		in := LossInput{
			LogProbs: [][]float64{{math.Log(0.5)}}, OldLogProbs: [][]float64{{math.Log(0.5)}},
			RefLogProbs: [][]float64{{math.Log(0.25)}}, Advantages: [][]float64{{0}},
		}
		out, err := PolicyLoss(in, LossConfig{ClipLow: 0.2, ClipHigh: 0.4, KLCoef: 0.1, KL: c.est})
		if err != nil {
			t.Fatal(err)
		}
		if !near(out.Metrics.KLLoss, c.val, 1e-12) || !near(out.Loss, 0.1*c.val, 1e-12) || !near(out.DLogProbs[0][0], 0.1*c.grad, 1e-12) {
			t.Errorf("%s: kl %v loss %v grad %v, want %v %v %v", c.est, out.Metrics.KLLoss, out.Loss, out.DLogProbs[0][0], c.val, 0.1*c.val, 0.1*c.grad)
		}
	}
	// k3 is clamped at 10 (gradient 0) and its log ratio at 20.
	v, d := klValueGrad(KLK3, -20, 0)
	if v != 10 || d != 0 {
		t.Errorf("k3 far from ref: %v %v, want 10 0", v, d)
	}
	if _, err := ParseKLEstimator("low_var_kl"); err != nil {
		t.Error(err)
	}
	if e, _ := ParseKLEstimator("mse"); e != KLK2 {
		t.Errorf("mse -> %q", e)
	}
	if _, err := ParseKLEstimator("k4"); err == nil || !strings.Contains(err.Error(), `"k4"`) {
		t.Errorf("ParseKLEstimator(k4) error = %v", err)
	}
}

// Aggregation modes worked by hand: two sequences, losses per token -A*rho with rho = 1:
// seq 0 has 1 token with A = 1 (token loss -1), seq 1 has 3 tokens with A = -1 (loss +1 each).
func TestAggregationByHand(t *testing.T) {
	in := LossInput{
		LogProbs:    [][]float64{{-1}, {-2, -3, -4}},
		OldLogProbs: [][]float64{{-1}, {-2, -3, -4}},
		Advantages:  [][]float64{{1}, {-1, -1, -1}},
	}
	cases := []struct {
		agg      AggMode
		loss     float64
		d0, d1   float64 // gradient of the token of seq 0 and of each token of seq 1
		tokens   int
		seqNorm  float64
		tokNorm  float64
		wantSeqs int
	}{
		{AggTokenMean, (-1 + 3) / 4.0, -1.0 / 4, 1.0 / 4, 4, 0, 0, 2},
		{AggSeqMeanTokenSum, (-1 + 3) / 2.0, -1.0 / 2, 1.0 / 2, 4, 0, 0, 2},
		{AggSeqMeanTokenMean, (-1 + 1) / 2.0, -1.0 / 2, 1.0 / 6, 4, 0, 0, 2},
		{AggTokenMean, (-1 + 3) / 8.0, -1.0 / 8, 1.0 / 8, 4, 0, 8, 2},
		{AggSeqMeanTokenSum, (-1 + 3) / 4.0, -1.0 / 4, 1.0 / 4, 4, 4, 0, 2},
	}
	for _, c := range cases {
		cfg := LossConfig{ClipLow: 0.2, ClipHigh: 0.4, Agg: c.agg, SeqNorm: c.seqNorm, TokenNorm: c.tokNorm}
		out, err := PolicyLoss(in, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if !near(out.Loss, c.loss, 1e-15) || !near(out.DLogProbs[0][0], c.d0, 1e-15) || !near(out.DLogProbs[1][2], c.d1, 1e-15) {
			t.Errorf("%s (norms %v/%v): loss %v d %v %v, want %v %v %v", c.agg, c.tokNorm, c.seqNorm, out.Loss, out.DLogProbs[0][0], out.DLogProbs[1][2], c.loss, c.d0, c.d1)
		}
		if out.Metrics.Tokens != c.tokens || out.Metrics.Seqs != c.wantSeqs {
			t.Errorf("%s: tokens %d seqs %d", c.agg, out.Metrics.Tokens, out.Metrics.Seqs)
		}
	}
}

// Ragged sequences equal padded ones with a mask; splitting a batch into micro-batches with
// TokenNorm/SeqNorm set to the whole batch's counts sums to the whole batch's loss and gradient.
func TestPolicyLossRaggedAndMicroBatches(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	lengths := []int{3, 1, 5, 2}
	T := 5
	mk := func(n int, f func() float64) []float64 {
		r := make([]float64, n)
		for i := range r {
			r[i] = f()
		}
		return r
	}
	var ragged, padded LossInput
	for _, n := range lengths {
		lp := mk(T, func() float64 { return -rng.Float64() * 3 })
		old := mk(T, func() float64 { return 0 })
		ref := mk(T, func() float64 { return 0 })
		for i := range old {
			old[i] = lp[i] + rng.NormFloat64()*0.3
			ref[i] = lp[i] + rng.NormFloat64()*0.3
		}
		a := rng.NormFloat64()
		adv := mk(T, func() float64 { return a })
		mask := make([]bool, T)
		for i := 0; i < n; i++ {
			mask[i] = true
		}
		padded.LogProbs = append(padded.LogProbs, lp)
		padded.OldLogProbs = append(padded.OldLogProbs, old)
		padded.RefLogProbs = append(padded.RefLogProbs, ref)
		padded.Advantages = append(padded.Advantages, adv)
		padded.Mask = append(padded.Mask, mask)
		ragged.LogProbs = append(ragged.LogProbs, lp[:n])
		ragged.OldLogProbs = append(ragged.OldLogProbs, old[:n])
		ragged.RefLogProbs = append(ragged.RefLogProbs, ref[:n])
		ragged.Advantages = append(ragged.Advantages, adv[:n])
	}
	for _, agg := range []AggMode{AggTokenMean, AggSeqMeanTokenSum, AggSeqMeanTokenMean} {
		cfg := DefaultLossConfig()
		cfg.Agg = agg
		cfg.KLCoef = 0.1
		p, err1 := PolicyLoss(padded, cfg)
		r, err2 := PolicyLoss(ragged, cfg)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if !near(p.Loss, r.Loss, 1e-14) {
			t.Errorf("%s: padded %v ragged %v", agg, p.Loss, r.Loss)
		}
		// Micro-batches {0,1} and {2,3}.
		cfgMB := cfg
		cfgMB.TokenNorm = float64(r.Metrics.Tokens)
		cfgMB.SeqNorm = float64(r.Metrics.Seqs)
		sub := func(lo, hi int) LossInput {
			return LossInput{LogProbs: ragged.LogProbs[lo:hi], OldLogProbs: ragged.OldLogProbs[lo:hi],
				RefLogProbs: ragged.RefLogProbs[lo:hi], Advantages: ragged.Advantages[lo:hi]}
		}
		a, _ := PolicyLoss(sub(0, 2), cfgMB)
		b, _ := PolicyLoss(sub(2, 4), cfgMB)
		if !near(a.Loss+b.Loss, r.Loss, 1e-14) {
			t.Errorf("%s: micro-batches sum %v, whole %v", agg, a.Loss+b.Loss, r.Loss)
		}
		if !near(b.DLogProbs[1][1], r.DLogProbs[3][1], 1e-14) {
			t.Errorf("%s: micro-batch gradient %v, whole %v", agg, b.DLogProbs[1][1], r.DLogProbs[3][1])
		}
	}
}

func TestPolicyLossEdgeCases(t *testing.T) {
	// No valid token: loss 0, zero gradients, no NaN.
	in := LossInput{
		LogProbs: [][]float64{{-1, -2}, {}}, OldLogProbs: [][]float64{{-1, -2}, {}},
		Advantages: [][]float64{{1, 1}, {}}, Mask: [][]bool{{false, false}, {}},
	}
	out, err := PolicyLoss(in, DefaultLossConfig().withKL(0))
	if err != nil || out.Loss != 0 || out.DLogProbs[0][0] != 0 || out.Metrics.Tokens != 0 {
		t.Errorf("empty batch: %+v %v", out, err)
	}
	// Log ratio clamped at 20: gradient 0 beyond it (verl's clamp), loss uses exp(20).
	in = LossInput{LogProbs: [][]float64{{0}}, OldLogProbs: [][]float64{{-25}}, Advantages: [][]float64{{-1}}}
	out, err = PolicyLoss(in, LossConfig{ClipLow: 0.2, ClipHigh: 0.4})
	if err != nil || !near(out.Loss, math.Exp(20), 1e-15) || out.DLogProbs[0][0] != 0 {
		t.Errorf("clamped log ratio: loss %v grad %v err %v", out.Loss, out.DLogProbs[0][0], err)
	}
	// Masked-out tokens may hold anything, even NaN, and get zero gradient.
	in = LossInput{
		LogProbs: [][]float64{{-1, math.NaN()}}, OldLogProbs: [][]float64{{-1, 0}},
		Advantages: [][]float64{{1, 1}}, Mask: [][]bool{{true, false}},
	}
	out, err = PolicyLoss(in, LossConfig{ClipLow: 0.2, ClipHigh: 0.4})
	if err != nil || out.Loss != -1 || out.DLogProbs[0][1] != 0 {
		t.Errorf("masked NaN: %v %v %v", out.Loss, out.DLogProbs, err)
	}
}

func (c LossConfig) withKL(beta float64) LossConfig { c.KLCoef = beta; return c }

func TestPolicyLossErrors(t *testing.T) {
	ok := LossInput{LogProbs: [][]float64{{-1, -2}}, OldLogProbs: [][]float64{{-1, -2}}, Advantages: [][]float64{{1, 1}}, RefLogProbs: [][]float64{{-1, -1}}}
	cases := []struct {
		name    string
		mod     func(*LossInput, *LossConfig)
		wantErr string
	}{
		{"clip low", func(_ *LossInput, c *LossConfig) { c.ClipLow = 1 }, "ClipLow = 1"},
		{"clip high", func(_ *LossInput, c *LossConfig) { c.ClipHigh = -0.1 }, "ClipHigh = -0.1"},
		{"dual", func(_ *LossInput, c *LossConfig) { c.DualClip = 0.5 }, "DualClip = 0.5"},
		{"agg", func(_ *LossInput, c *LossConfig) { c.Agg = "token-sum" }, `Agg = "token-sum"`},
		{"kl", func(_ *LossInput, c *LossConfig) { c.KL = "kl" }, `KL = "kl"`},
		{"kl coef", func(_ *LossInput, c *LossConfig) { c.KLCoef = math.NaN() }, "KLCoef = NaN"},
		{"ref missing", func(in *LossInput, _ *LossConfig) { in.RefLogProbs = nil }, "RefLogProbs is nil"},
		{"entropy missing", func(_ *LossInput, c *LossConfig) { c.EntropyCoef = 0.01 }, "Entropy is nil"},
		{"old short", func(in *LossInput, _ *LossConfig) { in.OldLogProbs = [][]float64{{-1}} }, "OldLogProbs sequence 0 has 1 tokens, LogProbs 2"},
		{"adv seqs", func(in *LossInput, _ *LossConfig) { in.Advantages = nil }, "Advantages is nil"},
		{"mask", func(in *LossInput, _ *LossConfig) { in.Mask = [][]bool{{true}} }, "Mask sequence 0 has 1 tokens"},
		{"nan", func(in *LossInput, _ *LossConfig) { in.OldLogProbs = [][]float64{{-1, math.Inf(-1)}} }, "OldLogProbs[0][1] is -Inf"},
	}
	for _, c := range cases {
		in := ok
		cfg := DefaultLossConfig()
		c.mod(&in, &cfg)
		_, err := PolicyLoss(in, cfg)
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.wantErr)
		}
	}
	if _, err := BroadcastAdvantages([]float64{1}, []int{1, 2}); err == nil {
		t.Error("BroadcastAdvantages with mismatched lengths: no error")
	}
	adv, err := BroadcastAdvantages([]float64{0.5, -1}, []int{2, 1})
	if err != nil || len(adv) != 2 || adv[0][1] != 0.5 || adv[1][0] != -1 {
		t.Errorf("BroadcastAdvantages = %v, %v", adv, err)
	}
}

func BenchmarkPolicyLoss(b *testing.B) {
	// 64 sequences x 512 tokens, the size of a ProRL-like mini-batch slice.
	rng := rand.New(rand.NewPCG(3, 4))
	var in LossInput
	for s := 0; s < 64; s++ {
		n := 512
		lp, old, ref, adv := make([]float64, n), make([]float64, n), make([]float64, n), make([]float64, n)
		a := rng.NormFloat64()
		for i := range lp {
			lp[i] = -rng.Float64() * 3
			old[i] = lp[i] + rng.NormFloat64()*0.1
			ref[i] = lp[i] + rng.NormFloat64()*0.1
			adv[i] = a
		}
		in.LogProbs = append(in.LogProbs, lp)
		in.OldLogProbs = append(in.OldLogProbs, old)
		in.RefLogProbs = append(in.RefLogProbs, ref)
		in.Advantages = append(in.Advantages, adv)
	}
	cfg := DefaultLossConfig()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := PolicyLoss(in, cfg); err != nil {
			b.Fatal(err)
		}
	}
}
