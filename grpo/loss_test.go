package grpo

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
)

type lossGolden struct {
	Name         string         `json:"name"`
	PolicyLoss   PolicyLossMode `json:"policy_loss"`
	GSPOClipLow  float64        `json:"gspo_clip_low"`
	GSPOClipHigh float64        `json:"gspo_clip_high"`
	TISCap       float64        `json:"tis_cap"`
	RolloutLogP  [][]float64    `json:"rollout_logp"`
	Agg          AggMode        `json:"agg"`
	KL           KLEstimator    `json:"kl"`
	KLCoef       float64        `json:"kl_coef"`
	DualClip     float64        `json:"dual_clip"`
	EntropyCoef  float64        `json:"entropy_coef"`
	ClipLow      float64        `json:"clip_low"`
	ClipHigh     float64        `json:"clip_high"`
	LogP         [][]float64    `json:"logp"`
	OldLogP      [][]float64    `json:"old_logp"`
	RefLogP      [][]float64    `json:"ref_logp"`
	Adv          [][]float64    `json:"adv"`
	Entropy      [][]float64    `json:"entropy"`
	Mask         [][]bool       `json:"mask"`
	Loss         float64        `json:"loss"`
	PGLoss       float64        `json:"pg_loss"`
	KLLoss       float64        `json:"kl_loss"`
	EntropyLoss  float64        `json:"entropy_loss"`
	ClipFracLow  float64        `json:"clip_frac_low"`
	ClipFracHigh float64        `json:"clip_frac_high"`
	DualClipFrac float64        `json:"dual_clip_frac"`
	ApproxKL     float64        `json:"approx_kl"`
	RatioMax     float64        `json:"ratio_max"`
	DLogP        [][]float64    `json:"dlogp"`
	DEntropy     [][]float64    `json:"dentropy"`
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
	if len(f.Cases) < 27 {
		t.Fatalf("testdata/loss_golden.json has %d cases, want >= 27", len(f.Cases))
	}
	return f.Cases
}

func (g lossGolden) input() (LossInput, LossConfig) {
	return LossInput{
			LogProbs: g.LogP, OldLogProbs: g.OldLogP, RefLogProbs: g.RefLogP, RolloutLogProbs: g.RolloutLogP,
			Advantages: g.Adv, Entropy: g.Entropy, Mask: g.Mask,
		}, LossConfig{
			Mode: g.PolicyLoss, ClipLow: g.ClipLow, ClipHigh: g.ClipHigh, DualClip: g.DualClip, Agg: g.Agg,
			GSPOClipLow: g.GSPOClipLow, GSPOClipHigh: g.GSPOClipHigh, TISCap: g.TISCap,
			KLCoef: g.KLCoef, KL: g.KL, EntropyCoef: g.EntropyCoef,
		}
}

// PolicyLoss must match verl's formulas as implemented with PyTorch autograd, value and
// gradients, in every aggregation mode and KL estimator, with and without dual clip and entropy,
// GSPO and TIS.
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
		checkFiniteDifferences(t, g.Name, in, cfg)
	}
}

// checkFiniteDifferences compares PolicyLoss's gradients with central finite differences of
// its loss: per token, for logp and entropy. GSPO-token with TIS is the exception: its
// gradient is defined through stop-gradients (s_t = sg[s] * pi_t/sg[pi_t]), and with per-token
// TIS weights it is not the gradient of the loss's value token by token; only its sum over a
// sequence is (the derivative along moving every token of the sequence together), which is
// checked instead (the golden checks it token by token against autograd).
func checkFiniteDifferences(t *testing.T, name string, in LossInput, cfg LossConfig) {
	t.Helper()
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
	// fd moves the entries at idx of rows by +h and -h and returns the slope of the loss.
	fd := func(rows [][]float64, idx [][2]int) float64 {
		move := func(d float64) {
			for _, k := range idx {
				rows[k[0]][k[1]] += d
			}
		}
		move(h)
		up := lossAt()
		move(-2 * h)
		down := lossAt()
		move(h)
		return (up - down) / (2 * h)
	}
	// The loss is piecewise smooth; a kink within h of x (a clip bound) would show as a jump,
	// so compare with an absolute tolerance well above FD noise.
	check := func(what string, fd, an float64) {
		if math.Abs(fd-an) > 1e-6*(1+math.Abs(an)) {
			t.Errorf("%s: d/d%s: finite difference %.10g, analytic %.10g", name, what, fd, an)
		}
	}
	perSeq := cfg.Mode == PolicyGSPO && cfg.TISCap > 0
	for s := range in.LogProbs {
		var seqIdx [][2]int
		var seqAn float64
		for tk := range in.LogProbs[s] {
			idx := [][2]int{{s, tk}}
			seqIdx = append(seqIdx, idx[0])
			seqAn += out.DLogProbs[s][tk]
			if !perSeq {
				check(fmt.Sprintf("logp[%d][%d]", s, tk), fd(in.LogProbs, idx), out.DLogProbs[s][tk])
			}
			if in.Entropy != nil {
				var an float64
				if out.DEntropy != nil {
					an = out.DEntropy[s][tk]
				}
				check(fmt.Sprintf("entropy[%d][%d]", s, tk), fd(in.Entropy, idx), an)
			}
		}
		if perSeq {
			check(fmt.Sprintf("logp[%d][*]", s), fd(in.LogProbs, seqIdx), seqAn)
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

// TestSeqSumsByHand: the per-sequence sums PolicyLoss returns for metrics by group count only
// the tokens the mask keeps. k1 KL = logp - ref: sequence 0 has tokens (ln 0.5 vs ln 0.25, kept)
// and (ln 0.5 vs ln 0.125, masked), so 1 token, KL ln 2, entropy 0.3; sequence 1 has two kept
// tokens at ln 0.25 vs ln 0.5 (KL -ln 2 each) with entropies 0.1 and 0.2.
func TestSeqSumsByHand(t *testing.T) {
	l := math.Log
	in := LossInput{
		LogProbs:    [][]float64{{l(0.5), l(0.5)}, {l(0.25), l(0.25)}},
		OldLogProbs: [][]float64{{l(0.5), l(0.5)}, {l(0.25), l(0.25)}},
		RefLogProbs: [][]float64{{l(0.25), l(0.125)}, {l(0.5), l(0.5)}},
		Entropy:     [][]float64{{0.3, 9}, {0.1, 0.2}},
		Advantages:  [][]float64{{1, 1}, {-1, -1}},
		Mask:        [][]bool{{true, false}, {true, true}},
	}
	out, err := PolicyLoss(in, LossConfig{ClipLow: 0.2, ClipHigh: 0.2, KLCoef: 0.1, KL: KLK1})
	if err != nil {
		t.Fatal(err)
	}
	want := struct {
		tok     []int
		kl, ent []float64
	}{[]int{1, 2}, []float64{math.Ln2, -2 * math.Ln2}, []float64{0.3, 0.3}}
	for s := range 2 {
		if out.SeqTokens[s] != want.tok[s] || !near(out.SeqRefKL[s], want.kl[s], 1e-12) || !near(out.SeqEntropy[s], want.ent[s], 1e-12) {
			t.Errorf("sequence %d: tokens %d, KL %v, entropy %v; want %d, %v, %v", s, out.SeqTokens[s], out.SeqRefKL[s], out.SeqEntropy[s], want.tok[s], want.kl[s], want.ent[s])
		}
	}
	in.RefLogProbs, in.Entropy = nil, nil
	if out, _ := PolicyLoss(in, LossConfig{ClipLow: 0.2, ClipHigh: 0.2}); out.SeqRefKL != nil || out.SeqEntropy != nil {
		t.Errorf("without reference and entropy: sums %v %v, want nil", out.SeqRefKL, out.SeqEntropy)
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
		{"clip low", func(_ *LossInput, c *LossConfig) { c.ClipLow = 1 }, "--clip-low: must be in [0, 1) (the ratio is clipped at 1 - clip-low), got 1"},
		{"clip high", func(_ *LossInput, c *LossConfig) { c.ClipHigh = -0.1 }, "--clip-high: must be a finite value >= 0, got -0.1"},
		{"dual", func(_ *LossInput, c *LossConfig) { c.DualClip = 0.5 }, "--dual-clip: must be 0 (off) or a finite value > 1, got 0.5"},
		{"agg", func(_ *LossInput, c *LossConfig) { c.Agg = "token-sum" }, `--loss-agg "token-sum": want token-mean, seq-mean-token-sum or seq-mean-token-mean`},
		{"kl", func(_ *LossInput, c *LossConfig) { c.KL = "kl" }, `--kl-estimator "kl": want its name "k1"`},
		{"kl coef", func(_ *LossInput, c *LossConfig) { c.KLCoef = math.NaN() }, "--kl-coef: must be a finite value >= 0, got NaN"},
		{"ref missing", func(in *LossInput, _ *LossConfig) { in.RefLogProbs = nil }, "RefLogProbs is nil"},
		{"entropy missing", func(_ *LossInput, c *LossConfig) { c.EntropyCoef = 0.01 }, "Entropy is nil"},
		{"old short", func(in *LossInput, _ *LossConfig) { in.OldLogProbs = [][]float64{{-1}} }, "OldLogProbs sequence 0 has 1 tokens, LogProbs 2"},
		{"adv seqs", func(in *LossInput, _ *LossConfig) { in.Advantages = nil }, "Advantages is nil"},
		{"mask", func(in *LossInput, _ *LossConfig) { in.Mask = [][]bool{{true}} }, "Mask sequence 0 has 1 tokens"},
		{"nan", func(in *LossInput, _ *LossConfig) { in.OldLogProbs = [][]float64{{-1, math.Inf(-1)}} }, "OldLogProbs[0][1] is -Inf"},
		{"mode", func(_ *LossInput, c *LossConfig) { c.Mode = "ppo" }, `--policy-loss: grpo: unknown policy loss "ppo"`},
		{"tis cap", func(_ *LossInput, c *LossConfig) { c.TISCap = -1 }, "--tis-cap: must be a finite value >= 0, got -1"},
		{"rollout missing", func(_ *LossInput, c *LossConfig) { c.TISCap = 2 }, "RolloutLogProbs is nil"},
		{"rollout nan", func(in *LossInput, c *LossConfig) {
			c.TISCap, in.RolloutLogProbs = 2, [][]float64{{math.NaN(), -1}}
		}, "RolloutLogProbs[0][0] is NaN"},
		{"gspo clip", func(_ *LossInput, c *LossConfig) { c.Mode, c.GSPOClipLow = PolicyGSPO, 1 }, "--gspo-clip-low: must be in [0, 1), got 1"},
		{"clip-cov window", func(_ *LossInput, c *LossConfig) { c.Mode, c.ClipCovLow = PolicyClipCov, 9 }, "--clip-cov-ub: must be a finite value above --clip-cov-lb 9, got 5"},
		{"kl-cov ratio", func(_ *LossInput, c *LossConfig) { c.Mode, c.KLCovRatio = PolicyKLCov, 0 }, "--kl-cov-ratio: must be in (0, 1], got 0"},
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

// approx_kl (verl's ppo_kl) is the mean of -lr with lr clamped to [-20, 20], the log ratio the
// loss uses: a token whose log ratio logp - old is -30 counts 20, not 30.
func TestApproxKLUsesClampedLogRatio(t *testing.T) {
	cases := []struct {
		name string
		lr   []float64 // logp - old per token (old = 0)
		want float64
	}{
		{"-30 counts 20", []float64{-30}, 20},
		{"+30 counts -20", []float64{30}, -20},
		{"inside the clamp", []float64{0.5}, -0.5},
		{"mean of (20, -1)", []float64{-30, 1}, (20 - 1) / 2.0},
	}
	for _, c := range cases {
		in := LossInput{LogProbs: [][]float64{c.lr}, OldLogProbs: [][]float64{make([]float64, len(c.lr))},
			Advantages: [][]float64{make([]float64, len(c.lr))}}
		out, err := PolicyLoss(in, LossConfig{ClipLow: 0.2, ClipHigh: 0.4})
		if err != nil {
			t.Fatal(err)
		}
		if !near(out.Metrics.ApproxKL, c.want, 1e-12) {
			t.Errorf("%s: approx KL %v, want %v", c.name, out.Metrics.ApproxKL, c.want)
		}
	}
}

// The default loss has dual clip at 3 (verl's clip_ratio_c): a token with A = -1 and rho = 5
// costs 3 (not 5) with zero gradient, and counts in DualClipFrac (verl's pg_clipfrac_lower).
func TestDefaultLossDualClip(t *testing.T) {
	cfg := DefaultLossConfig()
	cfg.KLCoef = 0
	if cfg.DualClip != 3 {
		t.Fatalf("DefaultLossConfig().DualClip = %v, want 3", cfg.DualClip)
	}
	in := LossInput{LogProbs: [][]float64{{math.Log(5), math.Log(2)}}, OldLogProbs: [][]float64{{0, 0}}, Advantages: [][]float64{{-1, -1}}}
	out, err := PolicyLoss(in, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Token 0: min(max(5, 1.4), 3) = 3, gradient 0; token 1: rho 2 < 3, loss 2, gradient 2.
	// Token-mean: loss (3+2)/2, gradients 0 and 2/2.
	if !near(out.Loss, 2.5, 1e-12) || out.DLogProbs[0][0] != 0 || !near(out.DLogProbs[0][1], 1, 1e-12) || out.Metrics.DualClipFrac != 0.5 {
		t.Errorf("loss %v grads %v dual-clip fraction %v, want 2.5 [0 1] 0.5", out.Loss, out.DLogProbs[0], out.Metrics.DualClipFrac)
	}
}

// GSPO worked by hand from the paper's formulas: s = exp(mean_t(logp - old)), per-token loss
// max(-A*s, -A*clip(s, 1-lo, 1+hi)), gradient of each token -A*s (GSPO-token, s held by
// stop-gradient) in its unclipped branch, aggregated seq-mean-token-mean.
func TestGSPOByHand(t *testing.T) {
	ln := math.Log
	cases := []struct {
		name     string
		lr       [][]float64 // logp - old (old = -1)
		adv      []float64   // per sequence
		lo, hi   float64
		loss     float64
		grads    [][]float64
		low, hig float64 // clip fractions
	}{
		// s = exp((0.1+0.3)/2) = e^0.2 inside [0.7, 1.3]: each token -e^0.2, mean -e^0.2;
		// gradient (1/2)*(-e^0.2) per token.
		{"unclipped", [][]float64{{0.1, 0.3}}, []float64{1}, 0.3, 0.3,
			-math.Exp(0.2), [][]float64{{-math.Exp(0.2) / 2, -math.Exp(0.2) / 2}}, 0, 0},
		// Token ratios 2 and 1/2 (GRPO would clip the first) but s = exp(0) = 1: nothing
		// clipped, loss -1, gradient -1/2 each.
		{"sequence ratio, not token ratios", [][]float64{{ln(2), -ln(2)}}, []float64{1}, 0.2, 0.2,
			-1, [][]float64{{-0.5, -0.5}}, 0, 0},
		// s = 1.5 > 1.3 with A > 0: clipped high, loss -1.3, gradient 0.
		{"clipped high", [][]float64{{ln(1.5), ln(1.5)}}, []float64{1}, 0.3, 0.3,
			-1.3, [][]float64{{0, 0}}, 0, 1},
		// s = 0.5 < 0.7 with A < 0: clipped low, loss 0.7, gradient 0.
		{"clipped low", [][]float64{{ln(0.5)}}, []float64{-1}, 0.3, 0.3,
			0.7, [][]float64{{0}}, 1, 0},
		// Two sequences: s0 = 2 with A = -1 (not clipped: A < 0 only clips below; no dual
		// clip in GSPO): loss 2, gradient -A*s/(2 seqs * 1 token) = 1; s1 = 1 with A = 1 over 3
		// tokens: loss -1 each, gradient -1/(2*3). Seq-mean: (2 + -1)/2.
		{"seq-mean-token-mean", [][]float64{{ln(2)}, {0, 0, 0}}, []float64{-1, 1}, 0.3, 0.3,
			0.5, [][]float64{{1}, {-1.0 / 6, -1.0 / 6, -1.0 / 6}}, 0, 0},
		// log s = 11 is bounded at 10 (verl): loss -e^10 with A = 1 and a huge clip range,
		// gradient 0.
		{"log s bounded at 10", [][]float64{{11}}, []float64{1}, 0.3, 1e9,
			-math.Exp(10), [][]float64{{0}}, 0, 0},
	}
	for _, c := range cases {
		var in LossInput
		for s, row := range c.lr {
			lp, old, adv := make([]float64, len(row)), make([]float64, len(row)), make([]float64, len(row))
			for k, lr := range row {
				old[k], lp[k], adv[k] = -1, -1+lr, c.adv[s]
			}
			in.LogProbs, in.OldLogProbs, in.Advantages = append(in.LogProbs, lp), append(in.OldLogProbs, old), append(in.Advantages, adv)
		}
		// Agg token-mean on purpose: GSPO's pg term is seq-mean-token-mean whatever Agg says.
		cfg := LossConfig{Mode: PolicyGSPO, GSPOClipLow: c.lo, GSPOClipHigh: c.hi, Agg: AggTokenMean, DualClip: 3}
		out, err := PolicyLoss(in, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if !near(out.Loss, c.loss, 1e-12) {
			t.Errorf("%s: loss %.15g, want %.15g", c.name, out.Loss, c.loss)
		}
		for s := range c.grads {
			for k := range c.grads[s] {
				if !near(out.DLogProbs[s][k], c.grads[s][k], 1e-12) {
					t.Errorf("%s: grad[%d][%d] = %.15g, want %.15g", c.name, s, k, out.DLogProbs[s][k], c.grads[s][k])
				}
			}
		}
		if m := out.Metrics; m.ClipFracLow != c.low || m.ClipFracHigh != c.hig || m.DualClipFrac != 0 {
			t.Errorf("%s: clip fractions %v %v %v, want %v %v 0", c.name, m.ClipFracLow, m.ClipFracHigh, m.DualClipFrac, c.low, c.hig)
		}
	}
}

// TIS worked by hand: each token's pg is weighted by min(exp(old - rollout), cap), a constant;
// one token with rho = 1 (logp = old) and A = 1 has loss -w and gradient -w.
func TestTISByHand(t *testing.T) {
	cases := []struct {
		name         string
		old, rollout float64
		cap          float64
		w            float64
	}{
		{"trainer more likely: e^0.5 under the cap", -1, -1.5, 2, math.Exp(0.5)},
		{"e^2 truncated at 2", -1, -3, 2, 2},
		{"trainer less likely: e^-1", -2, -1, 2, math.Exp(-1)},
		{"log ratio 30 clamped at 20", 0, -30, 1e12, math.Exp(20)},
		{"same numbers: weight 1", -0.7, -0.7, 1.5, 1},
	}
	for _, c := range cases {
		in := LossInput{LogProbs: [][]float64{{c.old}}, OldLogProbs: [][]float64{{c.old}},
			RolloutLogProbs: [][]float64{{c.rollout}}, Advantages: [][]float64{{1}}}
		out, err := PolicyLoss(in, LossConfig{ClipLow: 0.2, ClipHigh: 0.4, TISCap: c.cap})
		if err != nil {
			t.Fatal(err)
		}
		if !near(out.Loss, -c.w, 1e-12) || !near(out.DLogProbs[0][0], -c.w, 1e-12) {
			t.Errorf("%s: loss %v grad %v, want %v %v", c.name, out.Loss, out.DLogProbs[0][0], -c.w, -c.w)
		}
	}
	// The weight multiplies the clipped value too: rho = 1.5 clipped at 1.4 with A = 1 and
	// weight 2 gives -2.8 and gradient 0.
	in := LossInput{LogProbs: [][]float64{{math.Log(1.5)}}, OldLogProbs: [][]float64{{0}},
		RolloutLogProbs: [][]float64{{-5}}, Advantages: [][]float64{{1}}}
	out, err := PolicyLoss(in, LossConfig{ClipLow: 0.2, ClipHigh: 0.4, TISCap: 2})
	if err != nil || !near(out.Loss, -2.8, 1e-12) || out.DLogProbs[0][0] != 0 {
		t.Errorf("clipped token with TIS: loss %v grad %v err %v, want -2.8 0", out.Loss, out.DLogProbs[0][0], err)
	}
}

// covBatch is four tokens, two sequences, whose covariance terms are worked by hand:
// A = (1, 1 | -1, -1), logp = (-0.5, -2.5 | -0.5, -2.5), means 0 and -1.5, so
// cov = (A - 0)*(logp + 1.5) = (1, -1 | -1, 1). oldShift is logp - old per token.
func covBatch(oldShift [2][2]float64) LossInput {
	in := LossInput{Advantages: [][]float64{{1, 1}, {-1, -1}}}
	for s := range 2 {
		lp := []float64{-0.5, -2.5}
		in.LogProbs = append(in.LogProbs, lp)
		in.OldLogProbs = append(in.OldLogProbs, []float64{lp[0] - oldShift[s][0], lp[1] - oldShift[s][1]})
	}
	return in
}

// Clip-Cov worked by hand on covBatch (rho = 1 everywhere, token-mean, per-token loss -A: -1,
// -1, +1, +1, loss 0): the tokens with cov in (0.5, 5) are [0][0] and [1][1]; a ratio of 1/4
// drops max(1, floor(4/4)) = 1 of them, chosen at random by the seed: dropping [0][0] gives
// loss (0 - 1 + 1 + 1)/4 = 1/4, dropping [1][1] gives -1/4; the dropped token's gradient is 0,
// the others keep -A/4.
func TestClipCovByHand(t *testing.T) {
	cfg := LossConfig{Mode: PolicyClipCov, ClipLow: 0.2, ClipHigh: 0.4, DualClip: 3, ClipCovRatio: 0.25, ClipCovLow: 0.5, ClipCovHigh: 5}
	dropped := map[[2]int]int{}
	for seed := range uint64(64) {
		in := covBatch([2][2]float64{})
		in.Seed = seed
		out, err := PolicyLoss(in, cfg)
		if err != nil {
			t.Fatal(err)
		}
		var d [2]int
		switch {
		case near(out.Loss, 0.25, 1e-15) && out.DLogProbs[0][0] == 0:
			d = [2]int{0, 0}
		case near(out.Loss, -0.25, 1e-15) && out.DLogProbs[1][1] == 0:
			d = [2]int{1, 1}
		default:
			t.Fatalf("seed %d: loss %v grads %v: neither candidate dropped alone", seed, out.Loss, out.DLogProbs)
		}
		dropped[d]++
		if out.Metrics.ClipCovFrac != 0.25 || !near(out.DLogProbs[0][1], -0.25, 1e-15) || !near(out.DLogProbs[1][0], 0.25, 1e-15) {
			t.Errorf("seed %d: clip-cov fraction %v grads %v", seed, out.Metrics.ClipCovFrac, out.DLogProbs)
		}
		again, _ := PolicyLoss(in, cfg)
		if again.Loss != out.Loss {
			t.Errorf("seed %d: two calls drop different tokens", seed)
		}
	}
	if dropped[[2]int{0, 0}] < 16 || dropped[[2]int{1, 1}] < 16 {
		t.Errorf("over 64 seeds the choice was %v: not random", dropped)
	}
	cases := []struct {
		name     string
		shift    [2][2]float64
		mod      func(*LossConfig)
		loss     float64
		fraction float64
	}{
		// floor(0.5*4) = 2 tokens: both candidates dropped, loss (-1 + 1)/4 = 0.
		{"ratio 1/2 drops both", [2][2]float64{}, func(c *LossConfig) { c.ClipCovRatio = 0.5 }, 0, 0.5},
		// The window is open: cov = 1 is not inside (1, 5); nothing dropped, loss 0.
		{"window (1, 5) excludes cov 1", [2][2]float64{}, func(c *LossConfig) { c.ClipCovLow = 1 }, 0, 0},
		// [0][0] is clipped high already (rho 1.5 > 1.4: loss -1.4): only [1][1] can be dropped;
		// loss (-1.4 - 1 + 1 + 0)/4.
		{"clipped tokens are not candidates", [2][2]float64{{math.Log(1.5), 0}, {0, 0}}, func(*LossConfig) {}, (-1.4 - 1 + 1) / 4, 0.25},
	}
	for _, c := range cases {
		cc := cfg
		c.mod(&cc)
		out, err := PolicyLoss(covBatch(c.shift), cc)
		if err != nil {
			t.Fatal(err)
		}
		if !near(out.Loss, c.loss, 1e-15) || out.Metrics.ClipCovFrac != c.fraction {
			t.Errorf("%s: loss %v fraction %v, want %v %v", c.name, out.Loss, out.Metrics.ClipCovFrac, c.loss, c.fraction)
		}
	}
}

// KL-Cov worked by hand on covBatch with logp - old = 0.1 everywhere (rho = e^0.1) except
// [0][1] (rho 2, which KL-Cov does not clip): per-token pg -A*rho = (-e^0.1, -2 | e^0.1, e^0.1);
// the top floor(ratio*4) tokens by cov (1 for [0][0] and [1][1]; the tie goes to the earlier)
// get + coef*|lr| = 0.1 and gradient + coef*sign(lr) = +1, token-mean over 4.
func TestKLCovByHand(t *testing.T) {
	e := math.Exp(0.1)
	shift := [2][2]float64{{0.1, math.Log(2)}, {0.1, 0.1}}
	cases := []struct {
		ratio    float64
		loss     float64
		grads    [2][2]float64
		fraction float64
	}{
		{0.25, (-e + 0.1 - 2 + e + e) / 4, [2][2]float64{{(-e + 1) / 4, -2.0 / 4}, {e / 4, e / 4}}, 0.25},
		{0.5, (-e + 0.1 - 2 + e + e + 0.1) / 4, [2][2]float64{{(-e + 1) / 4, -2.0 / 4}, {e / 4, (e + 1) / 4}}, 0.5},
		{1e-9, (-e + 0.1 - 2 + e + e) / 4, [2][2]float64{{(-e + 1) / 4, -2.0 / 4}, {e / 4, e / 4}}, 0.25}, // at least one token
	}
	for _, c := range cases {
		out, err := PolicyLoss(covBatch(shift), LossConfig{Mode: PolicyKLCov, ClipLow: 0.2, ClipHigh: 0.4, DualClip: 3, KLCovRatio: c.ratio, KLCovCoef: 1})
		if err != nil {
			t.Fatal(err)
		}
		if !near(out.Loss, c.loss, 1e-14) || out.Metrics.KLCovFrac != c.fraction || out.Metrics.ClipFracHigh != 0 {
			t.Errorf("ratio %v: loss %.15g fraction %v clip %v, want %.15g %v 0", c.ratio, out.Loss, out.Metrics.KLCovFrac, out.Metrics.ClipFracHigh, c.loss, c.fraction)
		}
		for s := range 2 {
			for k := range 2 {
				if !near(out.DLogProbs[s][k], c.grads[s][k], 1e-14) {
					t.Errorf("ratio %v: grad[%d][%d] = %.15g, want %.15g", c.ratio, s, k, out.DLogProbs[s][k], c.grads[s][k])
				}
			}
		}
	}
}

// randomLossInput is a ragged batch of nseq sequences with log-probs, old, rollout and
// reference log-probs near them, and one advantage per sequence.
func randomLossInput(rng *rand.Rand, nseq int, spread float64) LossInput {
	var in LossInput
	for range nseq {
		n := 1 + rng.IntN(6)
		lp, old, roll, ref, adv := make([]float64, n), make([]float64, n), make([]float64, n), make([]float64, n), make([]float64, n)
		a := rng.NormFloat64()
		for i := range lp {
			lp[i] = -rng.Float64()*3 - 0.05
			old[i] = lp[i] + rng.NormFloat64()*spread
			roll[i] = old[i] + rng.NormFloat64()*0.3
			ref[i] = lp[i] + rng.NormFloat64()*0.3
			adv[i] = a
		}
		in.LogProbs, in.OldLogProbs, in.RolloutLogProbs = append(in.LogProbs, lp), append(in.OldLogProbs, old), append(in.RolloutLogProbs, roll)
		in.RefLogProbs, in.Advantages = append(in.RefLogProbs, ref), append(in.Advantages, adv)
	}
	return in
}

// Clip-Cov, KL-Cov, GSPO and TIS on random batches: gradients against finite differences (the
// tokens Clip-Cov and KL-Cov choose do not move under a step of 1e-6).
func TestPolicyLossModesFiniteDifferences(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, mode := range []PolicyLossMode{PolicyGRPO, PolicyGSPO, PolicyClipCov, PolicyKLCov} {
		for _, agg := range []AggMode{AggTokenMean, AggSeqMeanTokenSum, AggSeqMeanTokenMean} {
			for _, tis := range []float64{0, 2} {
				cfg := DefaultLossConfig()
				cfg.Mode, cfg.Agg, cfg.TISCap, cfg.KLCoef = mode, agg, tis, 0.05
				cfg.ClipCovRatio, cfg.ClipCovLow, cfg.ClipCovHigh, cfg.KLCovRatio = 0.1, -1, 1, 0.1
				spread := 0.3
				if mode == PolicyGSPO {
					spread = 1e-3
				}
				in := randomLossInput(rng, 6, spread)
				in.Seed = rng.Uint64()
				checkFiniteDifferences(t, fmt.Sprintf("%s/%s/tis %v", mode, agg, tis), in, cfg)
			}
		}
	}
}

func TestParsePolicyLossMode(t *testing.T) {
	for name, want := range map[string]PolicyLossMode{"grpo": PolicyGRPO, "vanilla": PolicyGRPO, "gspo": PolicyGSPO,
		"clip-cov": PolicyClipCov, "clip_cov": PolicyClipCov, "kl-cov": PolicyKLCov, "kl_cov": PolicyKLCov} {
		if got, err := ParsePolicyLossMode(name); got != want || err != nil {
			t.Errorf("ParsePolicyLossMode(%q) = %q, %v, want %q", name, got, err, want)
		}
	}
	if _, err := ParsePolicyLossMode("ppo"); err == nil || !strings.Contains(err.Error(), `"ppo"`) {
		t.Errorf("ParsePolicyLossMode(ppo) error = %v", err)
	}
}
