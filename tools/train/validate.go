package main

// Every flag is checked before the run does any work (opens the device, reads the model or the
// data, creates the run directory), and each error names its flag: the ranges are those that
// grpo.Run, grpo's trainer and loss, and the engine's AdamW would refuse later, after minutes
// of loading, in the words of their config fields ("adamw: lr must be >= 0", "Eval.Every = 0").
// TestFlagRangesCoverGRPO checks that whatever grpo and the engine refuse is refused here.

import (
	"errors"
	"fmt"
	"math"
	"regexp"

	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/grpo"
)

// flagError is a flag whose value is out of range: "--lr: must be >= 0, got -5e-05".
type flagError struct {
	flag string
	want string
	got  any
}

func (e *flagError) Error() string { return fmt.Sprintf("--%s: %s, got %v", e.flag, e.want, e.got) }

// usageError marks an error of the command line: main prints it with "(see --help)" and exits
// with status 2, as for a flag that does not parse.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// finite reports whether v is neither NaN nor infinite.
func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// flagRange is one rule: flag's value must satisfy ok, described by want.
type flagRange struct {
	flag string
	got  any
	ok   bool
	want string
}

// flagRanges are the rules of the numeric flags, in the order of --help.
func flagRanges(o *options) []flagRange {
	nonNeg := func(flag string, v float64) flagRange {
		return flagRange{flag, v, v >= 0 && finite(v), "must be a finite value >= 0"}
	}
	atLeast := func(flag string, v, min int) flagRange {
		return flagRange{flag, v, v >= min, fmt.Sprintf("must be >= %d", min)}
	}
	unit := func(flag string, v float64, what string) flagRange { // [0, 1)
		return flagRange{flag, v, v >= 0 && v < 1, "must be in [0, 1)" + what}
	}
	prob := func(flag string, v float64) flagRange { // [0, 1]
		return flagRange{flag, v, v >= 0 && v <= 1, "must be in [0, 1] (0: off)"}
	}
	ratio := func(flag string, v float64) flagRange { // (0, 1]
		return flagRange{flag, v, v > 0 && v <= 1, "must be in (0, 1]"}
	}
	r := []flagRange{
		unit("val-fraction", o.valFraction, ""),
		atLeast("max-prompt-tokens", o.maxPromptTokens, 1),
		{"reward-timeout", o.rewardTimeout, o.rewardTimeout > 0, "must be a positive duration"},
		atLeast("steps", o.steps, 0),
		{"resume-step", o.resumeStep, o.resumeStep >= -1, "must be a saved step (>= 0), or -1 for the latest"},
		atLeast("save-every", o.saveEvery, 0),
		atLeast("keep", o.keep, 0),
		atLeast("sft-steps", o.sftSteps, 1),
		{"sft-lr", o.sftLR, o.sftLR > 0 && finite(o.sftLR), "must be a finite value > 0"},
		{"sft-noise", o.sftNoise, o.sftNoise >= 0 && o.sftNoise <= 1, "must be in [0, 1]"},
		atLeast("train-problems", o.trainProblems, 1),
		atLeast("prompts", o.prompts, 1),
		{"n", o.samples, o.samples >= 2, "must be >= 2 (group advantages need a group)"},
		{"temperature", o.temperature, o.temperature > 0 && finite(o.temperature), "must be a finite value > 0"},
		prob("top-p", o.topP),
		atLeast("max-response", o.maxResponseLen, 1),
		nonNeg("overlong-penalty", o.overlongPenalty),
		{"overlong-buffer", o.overlongBuffer, o.overlongBuffer >= 0 && (o.overlongBuffer < o.maxResponseLen || o.maxResponseLen < 1),
			fmt.Sprintf("must be in [0, --max-response %d)", o.maxResponseLen)},
		atLeast("mini-batches", o.miniBatches, 1),
		atLeast("micro-batch-tokens", o.microBatchTokens, 1),
		{"max-sampling-rounds", o.maxRounds, o.maxRounds >= 1 || o.noDynamic, "must be >= 1 with dynamic sampling"},
		unit("clip-low", o.clipLow, " (the ratio is clipped at 1 - clip-low)"),
		nonNeg("clip-high", o.clipHigh),
		{"dual-clip", o.dualClip, o.dualClip == 0 || o.dualClip > 1 && finite(o.dualClip), "must be 0 (off) or a finite value > 1"},
		nonNeg("tis-cap", o.tisCap),
		nonNeg("kl-coef", o.klCoef),
		{"entropy-coef", o.entropyCoef, finite(o.entropyCoef), "must be a finite value"},
		nonNeg("lr", o.lr),
		atLeast("warmup", o.warmup, 0),
		unit("beta1", o.beta1, ""),
		unit("beta2", o.beta2, ""),
		nonNeg("weight-decay", o.weightDecay),
		nonNeg("clip-norm", o.clipNorm),
		atLeast("ref-reset-every", o.resetEvery, 0),
		atLeast("ref-reset-on-plateau", o.resetPlateau, 0),
		atLeast("eval-every", o.evalEvery, 1),
		atLeast("eval-size", o.evalSize, 1),
		nonNeg("eval-temperature", o.evalTemp),
		prob("eval-top-p", o.evalTopP),
		atLeast("eval-samples", o.evalSamples, 1),
	}
	// The knobs of the chosen policy loss (grpo checks only those).
	switch grpo.PolicyLossMode(o.policyLoss) {
	case grpo.PolicyGSPO:
		r = append(r, unit("gspo-clip-low", o.gspoClipLow, ""), nonNeg("gspo-clip-high", o.gspoClipHigh))
	case grpo.PolicyClipCov:
		r = append(r, ratio("clip-cov-ratio", o.clipCovRatio),
			flagRange{"clip-cov-lb", o.clipCovLB, finite(o.clipCovLB), "must be a finite value"},
			flagRange{"clip-cov-ub", o.clipCovUB, finite(o.clipCovUB) && o.clipCovUB > o.clipCovLB,
				fmt.Sprintf("must be a finite value above --clip-cov-lb %v", o.clipCovLB)})
	case grpo.PolicyKLCov:
		r = append(r, ratio("kl-cov-ratio", o.klCovRatio), nonNeg("kl-cov-coef", o.klCovCoef))
	}
	return r
}

// validate checks every flag of o: the numeric ranges (flagRanges), the names of the choice
// flags, the --freeze patterns and the flags that go together. It reads no file and opens no
// device. All the errors found are returned together, one line each.
func validate(o *options) error {
	var errs []error
	for _, r := range flagRanges(o) {
		if !r.ok {
			errs = append(errs, &flagError{r.flag, r.want, r.got})
		}
	}
	if _, err := grpo.ParsePolicyLossMode(o.policyLoss); err != nil {
		errs = append(errs, fmt.Errorf("--policy-loss: %w", err))
	}
	if _, err := grpo.ParseKLEstimator(o.klEstimator); err != nil {
		errs = append(errs, fmt.Errorf("--kl-estimator: %w", err))
	}
	switch grpo.AggMode(o.agg) {
	case grpo.AggTokenMean, grpo.AggSeqMeanTokenSum, grpo.AggSeqMeanTokenMean:
	default:
		errs = append(errs, fmt.Errorf("--loss-agg %q: want token-mean, seq-mean-token-sum or seq-mean-token-mean", o.agg))
	}
	switch grpo.Estimator(o.advEstimator) {
	case grpo.EstimatorGRPO, grpo.EstimatorRLOO, grpo.EstimatorReinforcePPBaseline:
	default:
		errs = append(errs, fmt.Errorf("--adv-estimator %q: want grpo, rloo or reinforce_plus_plus_baseline", o.advEstimator))
	}
	if _, err := overlapOn(*o); err != nil {
		errs = append(errs, err)
	}
	if _, err := cpu.ParsePrecision(o.matmulPrecision); err != nil {
		errs = append(errs, fmt.Errorf("--matmul-precision: %w", err))
	}
	for _, f := range o.freeze {
		if _, err := regexp.Compile(f); err != nil {
			errs = append(errs, fmt.Errorf("--freeze %q: %w", f, err))
		}
	}
	switch {
	case (o.model == "") != (o.data == ""):
		errs = append(errs, errors.New("--model and --data go together: give both (or neither, for the default job)"))
	case o.model != "" && o.sftOnly:
		errs = append(errs, errors.New("--sft builds the default job's model; it does not apply with --model"))
	}
	switch {
	case o.rewardCmd != "" && o.rewardURL != "":
		errs = append(errs, errors.New("--reward-cmd and --reward-url: give one"))
	case len(o.rewardFor) > 0 && o.rewardCmd == "" && o.rewardURL == "":
		errs = append(errs, errors.New("--reward-for names the data_sources of --reward-cmd or --reward-url: give one of them"))
	}
	if err := errors.Join(errs...); err != nil {
		return usageError{err}
	}
	return nil
}
