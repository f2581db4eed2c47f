package grpo

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"

	"github.com/prolong-rl/prolong/grpo/knob"
)

// The policy loss of GRPO with the ProRL changes, as a pure function of per-token log-probs.
// The engine computes the per-token quantities (log-prob of the sampled token under the current
// policy, its entropy), calls PolicyLoss, and backpropagates the returned per-token gradients
// dLoss/dLogp and dLoss/dEntropy through the model. The formulas follow verl's core_algos.py
// (compute_policy_loss_vanilla / _gspo / _clip_cov / _kl_cov, agg_loss, kl_penalty, and the
// truncated importance-sampling weights of its rollout correction) so that a run here is
// comparable with a verl run; scripts/make_loss_goldens.py implements them with PyTorch autograd
// and grpo/testdata/loss_golden.json holds its values and gradients.
//
// Per token t of a sequence, with lr = clamp(logp - oldLogp, -20, 20), rho = exp(lr) and
// advantage A, the policy-gradient term of the default mode (PolicyGRPO) is
//
//	pg    = max(-A*rho, -A*clip(rho, 1-ClipLow, 1+ClipHigh))   (clipped surrogate, clip-higher)
//	pg    = min(pg, -A*DualClip)   when A < 0 and DualClip > 0 (dual clip)
//
// PolicyGSPO, PolicyClipCov and PolicyKLCov replace it (see PolicyLossMode). With TISCap > 0
// each token's pg is weighted by min(exp(clamp(oldLogp - rolloutLogp, -20, 20)), TISCap), a
// constant (truncated importance sampling: the rollout engine's distribution differs from the
// trainer's). Then
//
//	kl    = estimator(logp, refLogp)                           (k1, k2 or k3)
//	token = pg + KLCoef*kl - EntropyCoef*entropy
//
// and the loss aggregates token over the valid (masked-in) tokens with AggMode (the pg term of
// GSPO always with AggSeqMeanTokenMean, as verl does).

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

// PolicyLossMode chooses the policy-gradient term; the names follow verl's
// actor.policy_loss.loss_mode (ParsePolicyLossMode accepts verl's spellings too).
type PolicyLossMode string

// The policy-gradient terms.
const (
	// PolicyGRPO is the token-level clipped surrogate with clip-higher and dual clip (verl
	// "vanilla"; the default).
	PolicyGRPO PolicyLossMode = "grpo"
	// PolicyGSPO is GSPO-token (Zheng et al. 2025, arXiv 2507.18071): the ratio of every token
	// of a sequence is the sequence's length-normalised ratio
	// s = exp(mean_t(logp - oldLogp)) in value, with the gradient of s*logp (s_t = sg[s] *
	// pi(y_t)/sg[pi(y_t)]); it is clipped to [1-GSPOClipLow, 1+GSPOClipHigh] and the pg term
	// is aggregated seq-mean-token-mean. verl bounds log s at 10; dual clip does not apply.
	PolicyGSPO PolicyLossMode = "gspo"
	// PolicyClipCov is PolicyGRPO with Clip-Cov (Cui et al. 2025, arXiv 2505.22617): of the
	// tokens not already clipped whose covariance term cov = (A - mean A)*(logp - mean logp)
	// (means over the call's valid tokens) lies in (ClipCovLow, ClipCovHigh), a random
	// max(1, floor(ClipCovRatio * tokens)) are dropped from the pg term (value and gradient),
	// chosen with LossInput.Seed.
	PolicyClipCov PolicyLossMode = "clip-cov"
	// PolicyKLCov is KL-Cov (the same paper): the unclipped surrogate -A*rho for every token,
	// plus KLCovCoef*|logp - oldLogp| for the max(1, floor(KLCovRatio * tokens)) tokens of
	// largest cov.
	PolicyKLCov PolicyLossMode = "kl-cov"
)

// ParsePolicyLossMode maps a user's name for a policy loss (grpo/vanilla, gspo,
// clip-cov/clip_cov, kl-cov/kl_cov) to a PolicyLossMode.
func ParsePolicyLossMode(name string) (PolicyLossMode, error) {
	switch name {
	case "grpo", "vanilla":
		return PolicyGRPO, nil
	case "gspo":
		return PolicyGSPO, nil
	case "clip-cov", "clip_cov":
		return PolicyClipCov, nil
	case "kl-cov", "kl_cov":
		return PolicyKLCov, nil
	}
	return "", fmt.Errorf("grpo: unknown policy loss %q (want grpo, gspo, clip-cov or kl-cov)", name)
}

// LossConfig holds the knobs of PolicyLoss. Start from DefaultLossConfig. Each knob's flag
// name (tools/train), default, range and help are its tags (package grpo/knob); the knobs of
// one policy loss are checked only in its Mode.
type LossConfig struct {
	// Mode is the policy-gradient term; empty means PolicyGRPO.
	Mode PolicyLossMode `flag:"policy-loss" default:"grpo" help:"policy loss (verl policy_loss.loss_mode): grpo (token-level clipped surrogate), gspo (sequence-level ratio, arXiv 2507.18071; its policy term is seq-mean-token-mean whatever --loss-agg), clip-cov or kl-cov (grpo's loss with the entropy-preserving Clip-Cov / KL-Cov updates, arXiv 2505.22617)"`
	// ClipLow and ClipHigh are the decoupled clip bounds of the token-level modes: rho is
	// clipped to [1-ClipLow, 1+ClipHigh] (ProRL: 0.2, 0.4).
	ClipLow  float64 `flag:"clip-low" default:"0.2" check:"[0,1)" want:"must be in [0, 1) (the ratio is clipped at 1 - clip-low)" help:"lower clip bound eps_low: the ratio is clipped at 1-eps_low"`
	ClipHigh float64 `flag:"clip-high" default:"0.4" check:">=0" help:"upper clip bound eps_high (clip-higher; 0.2 is plain PPO/GRPO)"`
	// DualClip, when > 0, bounds the loss of a token with negative advantage by -A*DualClip
	// (dual-clip PPO; verl's clip_ratio_c, 3 by default, which verl always applies). It must be
	// > 1. 0 turns it off. It applies to PolicyGRPO and PolicyClipCov.
	DualClip float64 `flag:"dual-clip" default:"3" check:"0|>1" help:"dual-clip constant c > 1 bounding the loss of negative-advantage tokens (verl clip_ratio_c); with --policy-loss grpo and clip-cov; 0: off"`
	// GSPOClipLow and GSPOClipHigh clip GSPO's sequence ratio to [1-GSPOClipLow,
	// 1+GSPOClipHigh]; the defaults are verl's GSPO recipe's clip_ratio_low/high (the paper
	// uses 3e-4 and 4e-4).
	GSPOClipLow  float64 `flag:"gspo-clip-low" default:"3e-4" check:"[0,1)" when:"Mode=gspo" help:"--policy-loss gspo: the sequence ratio is clipped at 1 minus this"`
	GSPOClipHigh float64 `flag:"gspo-clip-high" default:"4e-4" check:">=0" when:"Mode=gspo" help:"--policy-loss gspo: the sequence ratio is clipped at 1 plus this"`
	// ClipCovRatio, ClipCovLow and ClipCovHigh are Clip-Cov's fraction of tokens and
	// covariance window (PolicyClipCov); the defaults are verl's and the paper's clip_cov_ratio,
	// clip_cov_lb and clip_cov_ub.
	ClipCovRatio float64 `flag:"clip-cov-ratio" default:"2e-4" check:"(0,1]" when:"Mode=clip-cov" help:"--policy-loss clip-cov: fraction of tokens whose gradient is dropped (at least one per micro-batch)"`
	ClipCovLow   float64 `flag:"clip-cov-lb" default:"1" check:"finite" when:"Mode=clip-cov" help:"--policy-loss clip-cov: the dropped tokens are drawn from those whose covariance (A - mean A)(logp - mean logp) is above this"`
	ClipCovHigh  float64 `flag:"clip-cov-ub" default:"5" want:"must be a finite value above --clip-cov-lb" when:"Mode=clip-cov" help:"--policy-loss clip-cov: ... and below this"`
	// KLCovRatio and KLCovCoef are KL-Cov's fraction of tokens and penalty weight
	// (PolicyKLCov); the ratio's default is the paper's k for its 7B runs (verl's default is
	// 2e-4, the paper's 32B value), the weight's verl's ppo_kl_coef.
	KLCovRatio float64 `flag:"kl-cov-ratio" default:"2e-3" check:"(0,1]" when:"Mode=kl-cov" help:"--policy-loss kl-cov: fraction of tokens (those of largest covariance; at least one per micro-batch) penalised by --kl-cov-coef * |logp - old logp|"`
	KLCovCoef  float64 `flag:"kl-cov-coef" default:"1" check:">=0" when:"Mode=kl-cov" help:"--policy-loss kl-cov: weight of its penalty (verl ppo_kl_coef)"`
	// TISCap, when > 0, weights each token's pg term by the truncated importance ratio
	// min(pi_old/pi_rollout, TISCap); LossInput.RolloutLogProbs is then required. 0: off.
	TISCap float64 `flag:"tis-cap" check:">=0" help:"truncated importance sampling: the policy term of each token is weighted by min(p_trainer / p_rollout, this), correcting for the rollout engine's other numbers (verl rollout_is_threshold, e.g. 2); 0: off"`
	// KLCoef is beta, the weight of the KL penalty to the reference policy; 0 turns it off
	// (and RefLogProbs may then be nil).
	KLCoef float64 `flag:"kl-coef" default:"1e-4" check:">=0" help:"beta, the weight of the KL penalty to the reference in the loss; 0: no reference"`
	// KL is the estimator; empty means KLK3.
	KL KLEstimator `flag:"kl-estimator" default:"k3" help:"KL estimator: k1, k2 (mse) or k3 (low-variance)"`
	// EntropyCoef weights an entropy bonus (loss -= EntropyCoef * aggregated entropy); ProRL
	// uses 0. When it is not 0 the input must carry Entropy.
	EntropyCoef float64 `flag:"entropy-coef" check:"finite" help:"weight of an entropy bonus (ProRL: none)"`
	// Agg is the aggregation mode; empty means AggTokenMean.
	Agg AggMode `flag:"loss-agg" default:"token-mean" help:"loss aggregation: token-mean, seq-mean-token-sum or seq-mean-token-mean"`
	// TokenNorm, when > 0, replaces the number of valid tokens as the divisor of AggTokenMean,
	// and SeqNorm, when > 0, replaces the number of sequences in the seq-mean modes. Set them to
	// the counts of the whole mini-batch when it is processed as several micro-batches whose
	// gradients are summed, so that the sum equals the loss of the whole mini-batch.
	TokenNorm, SeqNorm float64
}

// DefaultLossConfig returns the ProRL recipe (the default tags of LossConfig): the GRPO
// token-level loss, clip bounds 0.2/0.4, dual clip at 3 (as verl), token-mean, k3 KL with beta
// 1e-4, no entropy bonus, no TIS; the other modes' knobs at their papers' values.
func DefaultLossConfig() LossConfig {
	var c LossConfig
	knob.Defaults(&c)
	return c
}

// finite reports whether v is neither NaN nor infinite.
func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// UnmarshalText sets m from a user's name for a policy loss (ParsePolicyLossMode).
func (m *PolicyLossMode) UnmarshalText(b []byte) error {
	v, err := ParsePolicyLossMode(string(b))
	if err == nil {
		*m = v
	}
	return err
}

// UnmarshalText sets e from a user's name for a KL estimator (ParseKLEstimator).
func (e *KLEstimator) UnmarshalText(b []byte) error {
	v, err := ParseKLEstimator(string(b))
	if err == nil {
		*e = v
	}
	return err
}

// UnmarshalText sets a from an aggregation mode's name.
func (a *AggMode) UnmarshalText(b []byte) error {
	switch v := AggMode(b); v {
	case AggTokenMean, AggSeqMeanTokenSum, AggSeqMeanTokenMean:
		*a = v
		return nil
	}
	return fmt.Errorf("grpo: unknown loss aggregation %q (want token-mean, seq-mean-token-sum or seq-mean-token-mean)", b)
}

// CheckKnobs checks every knob of c (its range tags, and the rules between knobs) and returns
// all those out of range, each error naming its flag (knob.Checker).
func (c *LossConfig) CheckKnobs() error {
	errs := []error{knob.Check(c)}
	if c.Mode == PolicyClipCov && !(finite(c.ClipCovHigh) && c.ClipCovHigh > c.ClipCovLow) {
		errs = append(errs, &knob.Error{Flag: "clip-cov-ub", Want: fmt.Sprintf("must be a finite value above --clip-cov-lb %v", c.ClipCovLow), Got: c.ClipCovHigh})
	}
	if c.Mode != "" {
		if m, err := ParsePolicyLossMode(string(c.Mode)); err != nil {
			errs = append(errs, fmt.Errorf("--policy-loss: %w", err))
		} else if m != c.Mode {
			errs = append(errs, fmt.Errorf("--policy-loss %q: want its name %q", c.Mode, m))
		}
	}
	if c.KL != "" {
		if e, err := ParseKLEstimator(string(c.KL)); err != nil {
			errs = append(errs, fmt.Errorf("--kl-estimator: %w", err))
		} else if e != c.KL {
			errs = append(errs, fmt.Errorf("--kl-estimator %q: want its name %q", c.KL, e))
		}
	}
	if c.Agg != "" {
		if err := new(AggMode).UnmarshalText([]byte(c.Agg)); err != nil {
			errs = append(errs, fmt.Errorf("--loss-agg %q: want token-mean, seq-mean-token-sum or seq-mean-token-mean", c.Agg))
		}
	}
	return errors.Join(errs...)
}

// Validate reports the knobs of c that are out of range (CheckKnobs) and negative
// TokenNorm/SeqNorm.
func (c LossConfig) Validate() error {
	err := c.CheckKnobs()
	if !(c.TokenNorm >= 0) || !(c.SeqNorm >= 0) {
		err = errors.Join(err, fmt.Errorf("LossConfig.TokenNorm/SeqNorm = %v/%v, want values >= 0", c.TokenNorm, c.SeqNorm))
	}
	if err != nil {
		return fmt.Errorf("grpo: %w", err)
	}
	return nil
}

// LossInput holds the per-token inputs of one (micro-)batch. Every field is indexed
// [sequence][token] over the response tokens only and all present fields have the same shape;
// sequences may have different lengths (no padding needed).
type LossInput struct {
	// LogProbs [seq][tok]: log-prob of the sampled token under the policy being trained.
	LogProbs [][]float64
	// OldLogProbs [seq][tok]: the same under the policy that generated the rollout, as the
	// trainer computes it.
	OldLogProbs [][]float64
	// RolloutLogProbs [seq][tok]: the same as the rollout engine reported it while sampling;
	// required when TISCap > 0, else unused.
	RolloutLogProbs [][]float64
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
	// Seed seeds the random choices of PolicyClipCov: the same seed gives the same choice.
	Seed uint64
}

// LossMetrics are the diagnostics of one PolicyLoss call. The fractions and means are over the
// valid tokens, whatever the aggregation mode (as verl reports them).
type LossMetrics struct {
	// PGLoss, KLLoss and EntropyLoss are the aggregated policy-gradient term, KL estimator
	// (before KLCoef) and entropy (before EntropyCoef). Loss = PGLoss + KLCoef*KLLoss -
	// EntropyCoef*EntropyLoss.
	PGLoss, KLLoss, EntropyLoss float64
	// ClipFracLow is the fraction of tokens clipped at the low bound (A < 0, ratio below
	// 1-ClipLow), ClipFracHigh at the high bound (A > 0, ratio above 1+ClipHigh); their
	// gradient is zero. Their sum is verl's pg_clipfrac.
	ClipFracLow, ClipFracHigh float64
	// DualClipFrac is the fraction of tokens bounded by the dual clip (A < 0, rho > DualClip):
	// verl's pg_clipfrac_lower.
	DualClipFrac float64
	// ClipCovFrac is the fraction of tokens Clip-Cov dropped, KLCovFrac the fraction KL-Cov
	// penalised.
	ClipCovFrac, KLCovFrac float64
	// ApproxKL is the mean of -lr = oldLogp - logp with the log ratio clamped to [-20, 20] as
	// in the loss: how far the update has moved the policy (verl's ppo_kl).
	ApproxKL float64
	// RefKL is the mean of the KL estimator against the reference policy (0 without
	// RefLogProbs).
	RefKL float64
	// EntropyMean is the mean entropy (0 without Entropy).
	EntropyMean float64
	// RatioMax is the largest importance ratio over the valid tokens (rho; GSPO: the
	// sequence ratio).
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
	// SeqTokens, SeqRefKL and SeqEntropy are per-sequence sums over the tokens in the loss
	// (those the mask keeps): their count, the reference KL by the config's estimator (nil
	// without RefLogProbs) and the entropy (nil without Entropy), for metrics by group.
	SeqTokens            []int
	SeqRefKL, SeqEntropy []float64
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
		{"RolloutLogProbs", in.RolloutLogProbs, cfg.TISCap > 0},
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
			if !finite(in.LogProbs[s][t]) {
				return fmt.Errorf("grpo: LossInput.LogProbs[%d][%d] is %v", s, t, in.LogProbs[s][t])
			}
			for _, f := range fields {
				if f.v != nil && !finite(f.v[s][t]) {
					return fmt.Errorf("grpo: LossInput.%s[%d][%d] is %v", f.name, s, t, f.v[s][t])
				}
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

// gspoLogRatioMax is verl's bound on GSPO's sequence log ratio.
const gspoLogRatioMax = 10

// clampedLogRatio is lr = clamp(logp - old, -20, 20) and d lr / d logp.
func clampedLogRatio(logp, old float64) (lr, dlr float64) {
	lr = logp - old
	if lr > clampLogRatio || lr < -clampLogRatio {
		return math.Max(-clampLogRatio, math.Min(clampLogRatio, lr)), 0
	}
	return lr, 1
}

// clipKind says how a token's pg term was clipped.
type clipKind uint8

const (
	notClipped  clipKind = iota
	clippedLow           // A < 0, ratio below the low bound
	clippedHigh          // A > 0, ratio above the high bound
	clippedDual          // A < 0, bounded by the dual clip
)

// tokenPG is one token's policy-gradient term before the TIS weight: its value v, dv/dlogp,
// its importance ratio and how it was clipped.
type tokenPG struct {
	v, d, ratio float64
	clip        clipKind
}

// clippedSurrogate is max(-A*r, -A*clip(r, 1-lo, 1+hi)) and its derivative with respect to
// logp, given dr, the derivative of r in its unclipped branch.
func clippedSurrogate(adv, r, dr, lo, hi float64) tokenPG {
	l1 := -adv * r
	l2 := -adv * math.Max(1-lo, math.Min(1+hi, r))
	if l2 > l1 {
		k := clippedHigh
		if adv < 0 {
			k = clippedLow
		}
		return tokenPG{v: l2, ratio: r, clip: k}
	}
	return tokenPG{v: l1, d: -adv * dr, ratio: r}
}

// grpoToken is the PolicyGRPO term of one token: the clipped surrogate, then the dual clip.
func grpoToken(logp, old, adv float64, cfg LossConfig) tokenPG {
	lr, dlr := clampedLogRatio(logp, old)
	rho := math.Exp(lr)
	p := clippedSurrogate(adv, rho, rho*dlr, cfg.ClipLow, cfg.ClipHigh)
	if l3 := -adv * cfg.DualClip; cfg.DualClip > 0 && adv < 0 && p.v > l3 {
		return tokenPG{v: l3, ratio: rho, clip: clippedDual}
	}
	return p
}

// gspoToken is the GSPO-token term of a token of a sequence whose mean log ratio is seqLR:
// the value uses s = exp(seqLR) and the gradient is s (d s_t/d logp_t with s_t = sg[s] *
// pi/sg[pi]), 0 where log s is bounded at 10.
func gspoToken(seqLR, adv float64, cfg LossConfig) tokenPG {
	ds := 1.0
	if seqLR > gspoLogRatioMax {
		seqLR, ds = gspoLogRatioMax, 0
	}
	s := math.Exp(seqLR)
	return clippedSurrogate(adv, s, s*ds, cfg.GSPOClipLow, cfg.GSPOClipHigh)
}

// policyTerms computes every valid token's pg term in the chosen mode (Clip-Cov and KL-Cov
// then adjust some of them).
func policyTerms(in *LossInput, cfg LossConfig, mode PolicyLossMode, valid func(s, t int) bool) [][]tokenPG {
	out := make([][]tokenPG, len(in.LogProbs))
	for s := range in.LogProbs {
		out[s] = make([]tokenPG, len(in.LogProbs[s]))
		var seqLR float64 // GSPO: mean log ratio of the sequence (verl does not clamp tokens)
		if mode == PolicyGSPO {
			n := 0
			for t := range in.LogProbs[s] {
				if valid(s, t) {
					seqLR += in.LogProbs[s][t] - in.OldLogProbs[s][t]
					n++
				}
			}
			seqLR /= float64(max(n, 1))
		}
		for t := range in.LogProbs[s] {
			if !valid(s, t) {
				continue
			}
			logp, old, adv := in.LogProbs[s][t], in.OldLogProbs[s][t], in.Advantages[s][t]
			switch mode {
			case PolicyGSPO:
				out[s][t] = gspoToken(seqLR, adv, cfg)
			case PolicyKLCov: // no clipping at all
				lr, dlr := clampedLogRatio(logp, old)
				rho := math.Exp(lr)
				out[s][t] = tokenPG{v: -adv * rho, d: -adv * rho * dlr, ratio: rho}
			default:
				out[s][t] = grpoToken(logp, old, adv, cfg)
			}
		}
	}
	return out
}

// tokenIndex is the position of a token: sequence s, token t.
type tokenIndex struct{ s, t int }

// covariances returns the valid tokens and, for each, Clip-Cov's and KL-Cov's
// cov = (A - mean A) * (logp - mean logp), the means over the valid tokens.
func covariances(in *LossInput, valid func(s, t int) bool) ([]tokenIndex, []float64) {
	var idx []tokenIndex
	var sumA, sumL float64
	for s := range in.LogProbs {
		for t := range in.LogProbs[s] {
			if valid(s, t) {
				idx = append(idx, tokenIndex{s, t})
				sumA += in.Advantages[s][t]
				sumL += in.LogProbs[s][t]
			}
		}
	}
	n := float64(len(idx))
	cov := make([]float64, len(idx))
	for i, k := range idx {
		cov[i] = (in.Advantages[k.s][k.t] - sumA/n) * (in.LogProbs[k.s][k.t] - sumL/n)
	}
	return idx, cov
}

// covCount is Clip-Cov's and KL-Cov's number of tokens: max(1, floor(ratio * tokens)).
func covCount(ratio float64, tokens int) int { return max(1, int(ratio*float64(tokens))) }

// clipCovStream is the PCG stream of Clip-Cov's random choice ("clipcov").
const clipCovStream = 0x636c6970636f76

// clipCov drops from the pg term (value and gradient) a random choice, seeded by in.Seed, of
// covCount(ClipCovRatio) tokens among the unclipped ones whose cov lies in (ClipCovLow,
// ClipCovHigh), and returns how many it dropped.
func clipCov(in *LossInput, cfg LossConfig, pg [][]tokenPG, valid func(s, t int) bool) int {
	idx, cov := covariances(in, valid)
	var cand []tokenIndex
	for i, k := range idx {
		if pg[k.s][k.t].clip == notClipped && cov[i] > cfg.ClipCovLow && cov[i] < cfg.ClipCovHigh {
			cand = append(cand, k)
		}
	}
	n := min(covCount(cfg.ClipCovRatio, len(idx)), len(cand))
	rng := rand.New(rand.NewPCG(in.Seed, clipCovStream))
	for _, i := range rng.Perm(len(cand))[:n] {
		k := cand[i]
		pg[k.s][k.t] = tokenPG{ratio: pg[k.s][k.t].ratio}
	}
	return n
}

// klCov adds KLCovCoef*|lr| (lr the clamped log ratio) to the pg term of the covCount(KLCovRatio)
// tokens of largest cov (ties: the earlier token first) and returns how many it penalised.
func klCov(in *LossInput, cfg LossConfig, pg [][]tokenPG, valid func(s, t int) bool) int {
	idx, cov := covariances(in, valid)
	order := make([]int, len(idx))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return cov[order[a]] > cov[order[b]] })
	n := min(covCount(cfg.KLCovRatio, len(idx)), len(idx))
	for _, i := range order[:n] {
		k := idx[i]
		lr, dlr := clampedLogRatio(in.LogProbs[k.s][k.t], in.OldLogProbs[k.s][k.t])
		sign := 0.0 // d|x|/dx, 0 at 0 as in torch
		if lr > 0 {
			sign = 1
		} else if lr < 0 {
			sign = -1
		}
		pg[k.s][k.t].v += cfg.KLCovCoef * math.Abs(lr)
		pg[k.s][k.t].d += cfg.KLCovCoef * sign * dlr
	}
	return n
}

// tisWeight is the truncated importance weight min(exp(clamp(old - rollout, -20, 20)), cap).
func tisWeight(old, rollout, cap float64) float64 {
	lr := math.Max(-clampLogRatio, math.Min(clampLogRatio, old-rollout))
	return math.Min(math.Exp(lr), cap)
}

// PolicyLoss computes the policy loss of one (micro-)batch, its gradient with respect to every
// token's log-prob and entropy, and the metrics a run logs. It returns an error when the config
// is out of range or the inputs' shapes disagree. A batch with no valid token has loss 0 and
// zero gradients.
func PolicyLoss(in LossInput, cfg LossConfig) (LossOutput, error) {
	if err := cfg.Validate(); err != nil {
		return LossOutput{}, err
	}
	if err := in.check(cfg); err != nil {
		return LossOutput{}, err
	}
	mode := cmp.Or(cfg.Mode, PolicyGRPO)
	valid := in.valid
	a := newLossAcc(&in, cfg, in.Entropy != nil)
	out := &a.out
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
	if out.Metrics.Tokens == 0 {
		return *out, nil
	}

	pg := policyTerms(&in, cfg, mode, valid)
	n := float64(out.Metrics.Tokens)
	switch mode {
	case PolicyClipCov:
		out.Metrics.ClipCovFrac = float64(clipCov(&in, cfg, pg, valid)) / n
	case PolicyKLCov:
		out.Metrics.KLCovFrac = float64(klCov(&in, cfg, pg, valid)) / n
	}
	for s := range in.LogProbs {
		if out.SeqTokens[s] == 0 {
			continue
		}
		for t := range in.LogProbs[s] {
			if !valid(s, t) {
				continue
			}
			var h float64
			if in.Entropy != nil {
				h = in.Entropy[s][t]
			}
			dl, de, _ := a.token(&in, s, t, in.LogProbs[s][t], h, pg[s][t])
			out.DLogProbs[s][t] = dl
			if out.DEntropy != nil {
				out.DEntropy[s][t] = de
			}
		}
	}
	a.finish()
	return *out, nil
}

// valid reports whether token t of sequence s is in the loss (the mask keeps it).
func (in *LossInput) valid(s, t int) bool { return in.Mask == nil || in.Mask[s][t] }
