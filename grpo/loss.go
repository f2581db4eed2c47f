package grpo

import (
	"fmt"
	"math"
)

// The policy loss of GRPO with the ProRL changes, as a pure function of per-token log-probs.
// The engine computes the per-token quantities (log-prob of the sampled token under the current
// policy, its entropy), calls PolicyLoss, and backpropagates the returned per-token gradients
// dLoss/dLogp and dLoss/dEntropy through the model. The formulas follow verl's core_algos.py
// (compute_policy_loss with clip_ratio_low/high and clip_ratio_c, agg_loss, kl_penalty) so that a
// run here is comparable with a verl run; scripts/make_loss_goldens.py implements them with
// PyTorch autograd and grpo/testdata/loss_golden.json holds its values and gradients.
//
// Per token t of a sequence, with rho = exp(clamp(logp - oldLogp, -20, 20)) and advantage A:
//
//	pg    = max(-A*rho, -A*clip(rho, 1-ClipLow, 1+ClipHigh))   (clipped surrogate, clip-higher)
//	pg    = min(pg, -A*DualClip)   when A < 0 and DualClip > 0 (dual clip)
//	kl    = estimator(logp, refLogp)                           (k1, k2 or k3)
//	token = pg + KLCoef*kl - EntropyCoef*entropy
//
// and the loss aggregates token over the valid (masked-in) tokens with AggMode.

// AggMode is how per-token losses are reduced to one scalar; the names are verl's
// loss_agg_mode values.
type AggMode string

// The aggregation modes.
const (
	// AggTokenMean averages over every valid token of the batch (DAPO, ProRL; the default).
	AggTokenMean AggMode = "token-mean"
	// AggSeqMeanTokenSum sums the tokens of each sequence and averages over sequences.
	AggSeqMeanTokenSum AggMode = "seq-mean-token-sum"
	// AggSeqMeanTokenMean averages the tokens of each sequence, then over sequences
	// (the original GRPO objective).
	AggSeqMeanTokenMean AggMode = "seq-mean-token-mean"
)

// KLEstimator names an estimator of KL(pi || pi_ref) from the log-probs of the sampled token.
type KLEstimator string

// The KL estimators (Schulman's k1, k2, k3); verl calls them "kl", "mse" and "low_var_kl",
// and ParseKLEstimator accepts those names too.
const (
	// KLK1 is logp - refLogp (unbiased, high variance, can be negative).
	KLK1 KLEstimator = "k1"
	// KLK2 is 0.5*(logp - refLogp)^2 (verl "mse").
	KLK2 KLEstimator = "k2"
	// KLK3 is exp(ref-logp) - (ref-logp) - 1, clamped to [-10, 10] (verl "low_var_kl"; ProRL).
	KLK3 KLEstimator = "k3"
)

// ParseKLEstimator maps a user's name for a KL estimator (k1/kl, k2/mse, k3/low_var_kl) to a
// KLEstimator.
func ParseKLEstimator(name string) (KLEstimator, error) {
	switch name {
	case "k1", "kl":
		return KLK1, nil
	case "k2", "mse":
		return KLK2, nil
	case "k3", "low_var_kl":
		return KLK3, nil
	}
	return "", fmt.Errorf("grpo: unknown KL estimator %q (want k1/kl, k2/mse or k3/low_var_kl)", name)
}

// ProRL defaults for LossConfig.
const (
	DefaultClipLow  = 0.2
	DefaultClipHigh = 0.4
	DefaultKLCoef   = 1e-4
	// DefaultDualClip is verl's clip_ratio_c, used when a user turns dual clip on.
	DefaultDualClip = 3.0
)

// LossConfig holds the knobs of PolicyLoss. Start from DefaultLossConfig.
type LossConfig struct {
	// ClipLow and ClipHigh are the decoupled clip bounds: rho is clipped to
	// [1-ClipLow, 1+ClipHigh].
	ClipLow, ClipHigh float64
	// DualClip, when > 0, bounds the loss of a token with negative advantage by -A*DualClip
	// (dual-clip PPO; verl's clip_ratio_c, usually 3). It must be > 1. 0 turns it off.
	DualClip float64
	// Agg is the aggregation mode; empty means AggTokenMean.
	Agg AggMode
	// KLCoef is beta, the weight of the KL penalty to the reference policy; 0 turns it off
	// (and RefLogProbs may then be nil).
	KLCoef float64
	// KL is the estimator; empty means KLK3.
	KL KLEstimator
	// EntropyCoef weights an entropy bonus (loss -= EntropyCoef * aggregated entropy); ProRL
	// uses 0. When it is not 0 the input must carry Entropy.
	EntropyCoef float64
	// TokenNorm, when > 0, replaces the number of valid tokens as the divisor of AggTokenMean,
	// and SeqNorm, when > 0, replaces the number of sequences in the seq-mean modes. Set them to
	// the counts of the whole mini-batch when it is processed as several micro-batches whose
	// gradients are summed, so that the sum equals the loss of the whole mini-batch.
	TokenNorm, SeqNorm float64
}

// DefaultLossConfig returns the ProRL recipe: clip bounds 0.2/0.4, no dual clip, token-mean,
// k3 KL with beta 1e-4, no entropy bonus.
func DefaultLossConfig() LossConfig {
	return LossConfig{
		ClipLow:  DefaultClipLow,
		ClipHigh: DefaultClipHigh,
		Agg:      AggTokenMean,
		KLCoef:   DefaultKLCoef,
		KL:       KLK3,
	}
}

// Validate reports the first knob of c that is out of range.
func (c LossConfig) Validate() error {
	switch {
	case !(c.ClipLow >= 0 && c.ClipLow < 1):
		return fmt.Errorf("grpo: LossConfig.ClipLow = %v, want 0 <= ClipLow < 1", c.ClipLow)
	case !(c.ClipHigh >= 0) || math.IsInf(c.ClipHigh, 0):
		return fmt.Errorf("grpo: LossConfig.ClipHigh = %v, want a finite value >= 0", c.ClipHigh)
	case c.DualClip != 0 && !(c.DualClip > 1) || math.IsInf(c.DualClip, 0):
		return fmt.Errorf("grpo: LossConfig.DualClip = %v, want 0 (off) or a finite value > 1", c.DualClip)
	case !(c.KLCoef >= 0) || math.IsInf(c.KLCoef, 0):
		return fmt.Errorf("grpo: LossConfig.KLCoef = %v, want a finite value >= 0", c.KLCoef)
	case math.IsNaN(c.EntropyCoef) || math.IsInf(c.EntropyCoef, 0):
		return fmt.Errorf("grpo: LossConfig.EntropyCoef = %v, want a finite value", c.EntropyCoef)
	case !(c.TokenNorm >= 0) || !(c.SeqNorm >= 0):
		return fmt.Errorf("grpo: LossConfig.TokenNorm/SeqNorm = %v/%v, want values >= 0", c.TokenNorm, c.SeqNorm)
	}
	switch c.Agg {
	case "", AggTokenMean, AggSeqMeanTokenSum, AggSeqMeanTokenMean:
	default:
		return fmt.Errorf("grpo: LossConfig.Agg = %q, want %q, %q or %q", c.Agg, AggTokenMean, AggSeqMeanTokenSum, AggSeqMeanTokenMean)
	}
	switch c.KL {
	case "", KLK1, KLK2, KLK3:
	default:
		return fmt.Errorf("grpo: LossConfig.KL = %q, want %q, %q or %q", c.KL, KLK1, KLK2, KLK3)
	}
	return nil
}

// LossInput holds the per-token inputs of one (micro-)batch. Every field is indexed
// [sequence][token] over the response tokens only and all present fields have the same shape;
// sequences may have different lengths (no padding needed).
type LossInput struct {
	// LogProbs [seq][tok]: log-prob of the sampled token under the policy being trained.
	LogProbs [][]float64
	// OldLogProbs [seq][tok]: the same under the policy that generated the rollout.
	OldLogProbs [][]float64
	// RefLogProbs [seq][tok]: the same under the reference policy; may be nil when KLCoef is 0.
	RefLogProbs [][]float64
	// Advantages [seq][tok]: the advantage of each token (the response's advantage repeated;
	// see BroadcastAdvantages).
	Advantages [][]float64
	// Entropy [seq][tok]: the policy's entropy at each position; optional unless EntropyCoef
	// is not 0. When present it is reported in LossMetrics.EntropyMean.
	Entropy [][]float64
	// Mask [seq][tok]: true for tokens that count; nil means every token counts.
	Mask [][]bool
}

// LossMetrics are the diagnostics of one PolicyLoss call. The fractions and means are over the
// valid tokens, whatever the aggregation mode (as verl reports them).
type LossMetrics struct {
	// PGLoss, KLLoss and EntropyLoss are the aggregated policy-gradient term, KL estimator
	// (before KLCoef) and entropy (before EntropyCoef). Loss = PGLoss + KLCoef*KLLoss -
	// EntropyCoef*EntropyLoss.
	PGLoss, KLLoss, EntropyLoss float64
	// ClipFracLow is the fraction of tokens clipped at the low bound (A < 0, rho < 1-ClipLow),
	// ClipFracHigh at the high bound (A > 0, rho > 1+ClipHigh); their gradient is zero.
	ClipFracLow, ClipFracHigh float64
	// DualClipFrac is the fraction of tokens bounded by the dual clip (A < 0, rho > DualClip).
	DualClipFrac float64
	// ApproxKL is the mean of oldLogp - logp: how far the update has moved the policy
	// (verl's ppo_kl).
	ApproxKL float64
	// RefKL is the mean of the KL estimator against the reference policy (0 without
	// RefLogProbs).
	RefKL float64
	// EntropyMean is the mean entropy (0 without Entropy).
	EntropyMean float64
	// RatioMax is the largest rho over the valid tokens.
	RatioMax float64
	// Tokens and Seqs count the valid tokens and the sequences with at least one of them.
	Tokens, Seqs int
}

// LossOutput is what PolicyLoss returns.
type LossOutput struct {
	// Loss is the scalar loss to minimise.
	Loss float64
	// DLogProbs [seq][tok] is dLoss/dLogProbs; 0 at masked-out tokens.
	DLogProbs [][]float64
	// DEntropy [seq][tok] is dLoss/dEntropy; nil when EntropyCoef is 0.
	DEntropy [][]float64
	// Metrics are the diagnostics.
	Metrics LossMetrics
}

// BroadcastAdvantages repeats each sequence's advantage over its tokens: the result has
// len(lengths) rows, row s of length lengths[s] filled with perSeq[s].
func BroadcastAdvantages(perSeq []float64, lengths []int) ([][]float64, error) {
	if len(perSeq) != len(lengths) {
		return nil, fmt.Errorf("grpo: BroadcastAdvantages: %d advantages for %d sequences", len(perSeq), len(lengths))
	}
	out := make([][]float64, len(perSeq))
	for s, n := range lengths {
		if n < 0 {
			return nil, fmt.Errorf("grpo: BroadcastAdvantages: sequence %d has length %d", s, n)
		}
		out[s] = make([]float64, n)
		for t := range out[s] {
			out[s][t] = perSeq[s]
		}
	}
	return out, nil
}

func (in *LossInput) check(cfg LossConfig) error {
	n := len(in.LogProbs)
	fields := []struct {
		name     string
		v        [][]float64
		required bool
	}{
		{"OldLogProbs", in.OldLogProbs, true},
		{"Advantages", in.Advantages, true},
		{"RefLogProbs", in.RefLogProbs, cfg.KLCoef != 0},
		{"Entropy", in.Entropy, cfg.EntropyCoef != 0},
	}
	for _, f := range fields {
		if f.v == nil {
			if f.required {
				return fmt.Errorf("grpo: LossInput.%s is nil but required by the config", f.name)
			}
			continue
		}
		if len(f.v) != n {
			return fmt.Errorf("grpo: LossInput.%s has %d sequences, LogProbs %d", f.name, len(f.v), n)
		}
		for s := range f.v {
			if len(f.v[s]) != len(in.LogProbs[s]) {
				return fmt.Errorf("grpo: LossInput.%s sequence %d has %d tokens, LogProbs %d",
					f.name, s, len(f.v[s]), len(in.LogProbs[s]))
			}
		}
	}
	if in.Mask != nil {
		if len(in.Mask) != n {
			return fmt.Errorf("grpo: LossInput.Mask has %d sequences, LogProbs %d", len(in.Mask), n)
		}
		for s := range in.Mask {
			if len(in.Mask[s]) != len(in.LogProbs[s]) {
				return fmt.Errorf("grpo: LossInput.Mask sequence %d has %d tokens, LogProbs %d",
					s, len(in.Mask[s]), len(in.LogProbs[s]))
			}
		}
	}
	// Non-finite values at valid tokens would silently poison the update.
	for s := range in.LogProbs {
		for t := range in.LogProbs[s] {
			if in.Mask != nil && !in.Mask[s][t] {
				continue
			}
			vals := [...]float64{in.LogProbs[s][t], in.OldLogProbs[s][t], in.Advantages[s][t]}
			for k, v := range vals {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					return fmt.Errorf("grpo: LossInput.%s[%d][%d] is %v", [...]string{"LogProbs", "OldLogProbs", "Advantages"}[k], s, t, v)
				}
			}
			if in.RefLogProbs != nil && (math.IsNaN(in.RefLogProbs[s][t]) || math.IsInf(in.RefLogProbs[s][t], 0)) {
				return fmt.Errorf("grpo: LossInput.RefLogProbs[%d][%d] is %v", s, t, in.RefLogProbs[s][t])
			}
			if in.Entropy != nil && (math.IsNaN(in.Entropy[s][t]) || math.IsInf(in.Entropy[s][t], 0)) {
				return fmt.Errorf("grpo: LossInput.Entropy[%d][%d] is %v", s, t, in.Entropy[s][t])
			}
		}
	}
	return nil
}

// clampLogRatio is verl's bound on log(rho) (and on ref-logp in k3) before exponentiation.
const clampLogRatio = 20

// k3Clamp is verl's bound on the k3 value.
const k3Clamp = 10

// klValueGrad returns the KL estimator at a token and its derivative with respect to logp.
func klValueGrad(est KLEstimator, logp, ref float64) (v, d float64) {
	switch est {
	case KLK1:
		return logp - ref, 1
	case KLK2:
		diff := logp - ref
		return 0.5 * diff * diff, diff
	default: // KLK3
		x := ref - logp
		dx := -1.0 // dx/dlogp
		if x > clampLogRatio || x < -clampLogRatio {
			x = math.Max(-clampLogRatio, math.Min(clampLogRatio, x))
			dx = 0
		}
		e := math.Exp(x)
		v = e - x - 1
		d = (e - 1) * dx
		if v > k3Clamp || v < -k3Clamp {
			v = math.Max(-k3Clamp, math.Min(k3Clamp, v))
			d = 0
		}
		return v, d
	}
}

// PolicyLoss computes the GRPO/ProRL policy loss of one (micro-)batch, its gradient with respect
// to every token's log-prob and entropy, and the metrics a run logs. It returns an error when
// the config is out of range or the inputs' shapes disagree. A batch with no valid token has
// loss 0 and zero gradients.
func PolicyLoss(in LossInput, cfg LossConfig) (LossOutput, error) {
	if err := cfg.Validate(); err != nil {
		return LossOutput{}, err
	}
	if err := in.check(cfg); err != nil {
		return LossOutput{}, err
	}
	agg := cfg.Agg
	if agg == "" {
		agg = AggTokenMean
	}
	est := cfg.KL
	if est == "" {
		est = KLK3
	}
	valid := func(s, t int) bool { return in.Mask == nil || in.Mask[s][t] }

	// Count valid tokens per sequence to get each token's aggregation weight.
	seqTokens := make([]int, len(in.LogProbs))
	var out LossOutput
	m := &out.Metrics
	for s := range in.LogProbs {
		for t := range in.LogProbs[s] {
			if valid(s, t) {
				seqTokens[s]++
			}
		}
		m.Tokens += seqTokens[s]
		if seqTokens[s] > 0 {
			m.Seqs++
		}
	}
	out.DLogProbs = make([][]float64, len(in.LogProbs))
	if cfg.EntropyCoef != 0 {
		out.DEntropy = make([][]float64, len(in.LogProbs))
	}
	for s := range in.LogProbs {
		out.DLogProbs[s] = make([]float64, len(in.LogProbs[s]))
		if out.DEntropy != nil {
			out.DEntropy[s] = make([]float64, len(in.LogProbs[s]))
		}
	}
	if m.Tokens == 0 {
		return out, nil
	}
	tokenNorm := float64(m.Tokens)
	if cfg.TokenNorm > 0 {
		tokenNorm = cfg.TokenNorm
	}
	seqNorm := float64(m.Seqs)
	if cfg.SeqNorm > 0 {
		seqNorm = cfg.SeqNorm
	}
	weight := func(s int) float64 {
		switch agg {
		case AggSeqMeanTokenSum:
			return 1 / seqNorm
		case AggSeqMeanTokenMean:
			return 1 / (seqNorm * float64(seqTokens[s]))
		default:
			return 1 / tokenNorm
		}
	}

	var nLow, nHigh, nDual int
	var sumApproxKL, sumRefKL, sumEnt float64
	m.RatioMax = math.Inf(-1)
	for s := range in.LogProbs {
		if seqTokens[s] == 0 {
			continue
		}
		w := weight(s)
		for t := range in.LogProbs[s] {
			if !valid(s, t) {
				continue
			}
			logp, old, adv := in.LogProbs[s][t], in.OldLogProbs[s][t], in.Advantages[s][t]
			lr := logp - old
			dlr := 1.0 // d lr / d logp
			if lr > clampLogRatio || lr < -clampLogRatio {
				lr = math.Max(-clampLogRatio, math.Min(clampLogRatio, lr))
				dlr = 0
			}
			rho := math.Exp(lr)
			m.RatioMax = math.Max(m.RatioMax, rho)
			sumApproxKL += old - logp

			// Clipped surrogate. The unclipped branch carries the gradient -A*rho; the clipped
			// branch is constant in logp.
			l1 := -adv * rho
			l2 := -adv * math.Max(1-cfg.ClipLow, math.Min(1+cfg.ClipHigh, rho))
			pg, dpg := l1, -adv*rho*dlr
			if l2 > l1 {
				pg, dpg = l2, 0
				if adv < 0 {
					nLow++
				} else {
					nHigh++
				}
			}
			if cfg.DualClip > 0 && adv < 0 {
				if l3 := -adv * cfg.DualClip; pg > l3 {
					pg, dpg = l3, 0
					nDual++
				}
			}
			m.PGLoss += w * pg
			out.DLogProbs[s][t] = w * dpg

			if in.RefLogProbs != nil {
				kl, dkl := klValueGrad(est, logp, in.RefLogProbs[s][t])
				sumRefKL += kl
				m.KLLoss += w * kl
				out.DLogProbs[s][t] += w * cfg.KLCoef * dkl
			}
			if in.Entropy != nil {
				h := in.Entropy[s][t]
				sumEnt += h
				m.EntropyLoss += w * h
			}
			if out.DEntropy != nil {
				out.DEntropy[s][t] = -cfg.EntropyCoef * w
			}
		}
	}
	n := float64(m.Tokens)
	m.ClipFracLow = float64(nLow) / n
	m.ClipFracHigh = float64(nHigh) / n
	m.DualClipFrac = float64(nDual) / n
	m.ApproxKL = sumApproxKL / n
	m.RefKL = sumRefKL / n
	m.EntropyMean = sumEnt / n
	out.Loss = m.PGLoss + cfg.KLCoef*m.KLLoss - cfg.EntropyCoef*m.EntropyLoss
	return out, nil
}
