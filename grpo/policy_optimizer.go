package grpo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/dist"
	"github.com/prolong-rl/prolong/grpo/knob"
)

// Prompt is one RL prompt, tokenized (chat template already applied), with what its reward
// needs.
type Prompt struct {
	Tokens      []int32
	Kind        string // task kind (data_source): routes the reward
	GroundTruth string
	Meta        map[string]any
	// Text is the prompt as text (chat template applied), for rewards that read it (reward
	// programs get it as "prompt"); it may be empty.
	Text string
}

// RewardFunc scores one response (its decoded text) to a prompt in [0, 1].
type RewardFunc func(ctx context.Context, p Prompt, response string) (float64, error)

// RewardRequest is one response (its decoded text) to score, with its prompt.
type RewardRequest struct {
	Prompt   Prompt
	Response string
}

// BatchRewardFunc scores many responses in one call: one reward in [0, 1] per request, in
// order. A reward program or server scores a whole rollout round this way.
type BatchRewardFunc func(ctx context.Context, reqs []RewardRequest) ([]float64, error)

// PromptSource hands out training prompts in a reproducible order.
type PromptSource interface {
	// Next returns the next n prompts.
	Next(n int) ([]Prompt, error)
}

// RolloutSource generates n samples for each prompt: the in-process engine (EngineRollouts)
// or rollout servers.
type RolloutSource interface {
	Rollout(ctx context.Context, prompts []Prompt, p engine.SamplingParams) ([][]engine.Sample, error)
}

// EngineRollouts generates with the engine's continuous-batching generator on the policy
// model itself, so rollouts always see the latest weights.
type EngineRollouts struct{ Gen *engine.Generator }

// Rollout implements RolloutSource: one request per prompt, n samples forked from its cache,
// sample j of request i seeded with p.Seed + i.
func (e EngineRollouts) Rollout(ctx context.Context, prompts []Prompt, p engine.SamplingParams) ([][]engine.Sample, error) {
	reqs := make([]engine.Request, len(prompts))
	for i, pr := range prompts {
		sp := p
		sp.Seed = p.Seed + uint64(i)
		reqs[i] = engine.Request{Prompt: pr.Tokens, Params: sp}
	}
	res, err := e.Gen.Generate(ctx, reqs)
	if err != nil {
		return nil, err
	}
	out := make([][]engine.Sample, len(res))
	for i, r := range res {
		out[i] = r.Samples
	}
	return out, nil
}

// SnapshotRollouts generates with the engine's continuous-batching generator on its own copy
// of the policy's weights, replaced by each SyncWeights: the in-process rollout source that
// can generate while the policy trains (Config.Overlap). Close frees its generator.
type SnapshotRollouts struct {
	// Options are the generator's (its KV cache's dtype and budget).
	Options engine.GeneratorOptions

	gen    *engine.Generator
	logged bool
}

// Rollout implements RolloutSource as EngineRollouts does, on the weights of the last
// SyncWeights.
func (s *SnapshotRollouts) Rollout(ctx context.Context, prompts []Prompt, p engine.SamplingParams) ([][]engine.Sample, error) {
	if s.gen == nil {
		return nil, errors.New("grpo: snapshot rollouts: no weights yet (SyncWeights first)")
	}
	return EngineRollouts{Gen: s.gen}.Rollout(ctx, prompts, p)
}

// SyncWeights implements WeightSync: the generator moves to a copy of the policy's weights.
func (s *SnapshotRollouts) SyncWeights(_ context.Context, policy *engine.Model) error {
	m, err := policy.Snapshot(engine.F32)
	if err != nil {
		return fmt.Errorf("grpo: snapshot rollouts: %w", err)
	}
	gen, err := engine.NewGenerator(m, s.Options)
	if err != nil {
		return fmt.Errorf("grpo: snapshot rollouts: %w", err)
	}
	if !s.logged { // once: a generator is made for every weight sync
		slog.Info(gen.KVChoice().String())
		s.logged = true
	}
	s.Close()
	s.gen = gen
	return nil
}

// Close frees the generator.
func (s *SnapshotRollouts) Close() {
	if s.gen != nil {
		s.gen.Close()
		s.gen = nil
	}
}

// Config holds the knobs of a GRPO run; DefaultConfig gives the ProRL recipe. Each knob's
// flag name (tools/train), default, range and help are its tags (package grpo/knob).
type Config struct {
	// Seed seeds everything: model init, data order, sampling.
	Seed uint64 `flag:"seed" default:"1" help:"seed of everything: model init, data order, sampling"`
	// PromptsPerStep (B) is the number of groups per rollout step.
	PromptsPerStep int `flag:"prompts" default:"256" check:">=1" help:"prompts (groups) per rollout step"`
	// SamplesPerPrompt (n) is the number of responses per prompt.
	SamplesPerPrompt int `flag:"n" default:"16" check:">=2" want:"must be >= 2 (group advantages need a group)" help:"samples per prompt"`
	// Temperature is the rollout temperature (ProRL 1.2); log-probs are taken at it too.
	Temperature float32 `flag:"temperature" default:"1.2" check:">0" help:"rollout temperature; the loss sees log-probs at it too"`
	// TopP is the rollout top-p.
	TopP float32 `flag:"top-p" default:"1" check:"[0,1]" want:"must be in [0, 1] (0: off)" help:"rollout top-p"`
	// MaxResponseTokens bounds a response.
	MaxResponseTokens int `flag:"max-response" default:"8192" check:">=1" help:"maximum response tokens"`
	StopTokens        []int32
	// OverlongPenalty is the overlong shaping's penalty factor: with OverlongBuffer > 0, DAPO's
	// soft overlong punishment, OverlongPenalty * reward.OverlongPenalty(length,
	// MaxResponseTokens, OverlongBuffer) added to the reward (0 up to MaxResponseTokens -
	// OverlongBuffer tokens, falling linearly to -OverlongPenalty at MaxResponseTokens); with
	// OverlongBuffer 0, subtracted from the reward of a response cut at MaxResponseTokens (the
	// flat penalty of runs saved before the buffer existed). 0: no shaping.
	OverlongPenalty float64 `flag:"overlong-penalty" check:">=0" help:"overlong penalty factor: with --overlong-buffer > 0, DAPO's soft overlong punishment (0 up to --max-response minus the buffer, then falling linearly to minus this at --max-response) added to the reward; with --overlong-buffer 0, subtracted from the reward of a response cut at --max-response; 0: none"`
	// OverlongBuffer is DAPO's L_cache, in tokens (< MaxResponseTokens); 0: the flat penalty.
	OverlongBuffer int `flag:"overlong-buffer" want:"must be in [0, --max-response)" help:"DAPO's overlong buffer L_cache in tokens (verl overlong_buffer.len), below --max-response; 0: the flat penalty of --overlong-penalty"`
	// MaskTruncated leaves the responses cut at MaxResponseTokens out of the loss (DAPO's
	// overlong filtering); they still count in their group's advantages.
	MaskTruncated bool `flag:"mask-truncated" help:"leave responses cut at --max-response out of the loss (DAPO's overlong filtering; they still count in their group's advantages)"`
	// MiniBatches is the number of policy updates per rollout step (the rollout batch is
	// split into this many mini-batches).
	MiniBatches int `flag:"mini-batches" default:"4" check:">=1" help:"policy updates per rollout step (the rollout batch is split into this many)"`
	// MicroBatchTokens bounds the tokens of one forward/backward; gradients accumulate.
	MicroBatchTokens int `flag:"micro-batch-tokens" default:"4096" check:">=1" help:"tokens per forward/backward; gradients accumulate over micro-batches"`
	// DynamicSampling drops groups whose rewards are all equal and samples more prompts until
	// PromptsPerStep informative groups are found or MaxSamplingRounds rounds are spent.
	DynamicSampling   bool `flag:"no-dynamic-sampling,negate" default:"false" help:"keep groups whose rewards are all equal (ProRL drops them and samples more)"`
	MaxSamplingRounds int  `flag:"max-sampling-rounds" default:"4" check:">=1" when:"DynamicSampling=true" want:"must be >= 1 with dynamic sampling" help:"dynamic sampling: most rollout rounds per step to fill the batch"`
	Loss              LossConfig
	Advantage         AdvantageConfig
	// RefResetEvery resets the reference policy to the current policy and zeroes the
	// optimizer state every so many steps (0: never).
	RefResetEvery int `flag:"ref-reset-every" default:"100" check:">=0" help:"reference reset (reference := policy, optimizer state zeroed) every so many steps; 0: never"`
	// RefResetOnPlateau resets the reference when the validation accuracy has not improved on
	// its best for this many evaluations in a row (reported through AfterEval); 0: never.
	RefResetOnPlateau int `flag:"ref-reset-on-plateau" check:">=0" help:"also reset the reference when held-out accuracy has not improved for this many evaluations; 0: never"`
	// Overlap generates the rollouts of step s+1 while step s trains, on the weights the
	// rollout source held when step s started: one step stale, which the trainer's old
	// log-probs (recomputed at update time) and TIS (Loss.TISCap) correct for. The rollout
	// source must generate from its own copy of the weights (a WeightSync: rollout servers, or
	// SnapshotRollouts, which Run uses for the in-process engine). Needs MaxStaleness 1.
	Overlap bool
	// MaxStaleness bounds how many steps behind the policy a rollout batch's weights may be
	// when it is trained on: 0 or 1, since rollouts run at most one step ahead.
	MaxStaleness int `flag:"max-staleness" default:"1" want:"must be 0 or 1" help:"most steps the rollouts' weights may be behind the policy's: 1 allows --overlap, 0 forbids it"`
}

// DefaultConfig is the ProRL recipe (the default tags of Config): 256 prompts x 16 samples per
// step, temperature 1.2, top-p 1, responses up to 8192 tokens, 4 updates per rollout step, clip
// 0.2/0.4, k3 KL 1e-4, token-mean, dynamic sampling over at most 4 rounds, a reference reset
// every 100 steps (ProRL resets when validation stagnates, every few hundred steps; 100 is
// the default job's, which resets twice in its 200 steps). tools/train's flags take their
// defaults from it (through DefaultRunConfig).
func DefaultConfig() Config {
	var c Config
	knob.Defaults(&c)
	return c
}

// CheckKnobs checks every knob of c (its range tags, and the rules between knobs) and returns
// all those out of range, each error naming its flag (knob.Checker).
func (c *Config) CheckKnobs() error {
	var errs []error
	if c.OverlongBuffer < 0 || c.OverlongBuffer >= c.MaxResponseTokens && c.MaxResponseTokens >= 1 {
		errs = append(errs, &knob.Error{Flag: "overlong-buffer", Want: fmt.Sprintf("must be in [0, --max-response %d)", c.MaxResponseTokens), Got: c.OverlongBuffer})
	}
	if c.MaxStaleness < 0 || c.MaxStaleness > 1 {
		errs = append(errs, fmt.Errorf("--max-staleness %d: want 0 or 1 (rollouts run at most one step ahead)", c.MaxStaleness))
	} else if c.Overlap && c.MaxStaleness < 1 {
		errs = append(errs, errors.New("--overlap needs --max-staleness 1: overlapped rollouts are one step stale"))
	}
	return errors.Join(append([]error{knob.Check(c)}, errs...)...)
}

func (c *Config) validate() error {
	if err := c.CheckKnobs(); err != nil {
		return fmt.Errorf("grpo: %w", err)
	}
	return nil
}

// PolicyOptimizer is a GRPO run in progress: the policy being trained, the frozen reference, and the
// rollout source, reward and prompts.
type PolicyOptimizer struct {
	Policy    *engine.Trainer
	Reference *engine.Model // nil when the KL coefficient is 0
	Rollouts  RolloutSource
	Prompts   PromptSource
	Reward    RewardFunc
	// BatchReward, when set, scores all the responses of a rollout round (or an evaluation) in
	// one call, instead of Reward one by one.
	BatchReward BatchRewardFunc
	Decode      func([]int32) string
	Config      Config
	// OnReset is called after each reference reset (export a checkpoint there).
	OnReset func(step int) error

	dp         *dataParallel // the other ranks of a data-parallel run; nil for one process
	step       int
	ahead      *RolloutBatch // the batch StepAhead generated for the next step
	lastResets []int
	bestEval   float64
	stale      int // evaluations since the best one
	evals      int
	// twoPassLoss sends every policy loss through ForwardBackward and PolicyLoss, as before
	// the one-pass LM head (tests compare the two paths).
	twoPassLoss bool
}

// NewPolicyOptimizer checks the configuration and takes the first reference snapshot. reward may be
// nil when a BatchReward is set on the trainer before its first step.
func NewPolicyOptimizer(policy *engine.Trainer, rollouts RolloutSource, prompts PromptSource, reward RewardFunc, decode func([]int32) string, cfg Config) (*PolicyOptimizer, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if policy == nil || rollouts == nil || prompts == nil || decode == nil {
		return nil, errors.New("grpo: policy, rollouts, prompts and decode are all required")
	}
	// The loss compares log-probs of the same distribution: the policy's, the rollout's and the
	// reference's, all at the rollout temperature.
	if err := policy.SetTemperature(cfg.Temperature); err != nil {
		return nil, err
	}
	t := &PolicyOptimizer{Policy: policy, Rollouts: rollouts, Prompts: prompts, Reward: reward, Decode: decode, Config: cfg}
	if cfg.Loss.KLCoef > 0 {
		ref, err := policy.Model.Snapshot(engine.F32)
		if err != nil {
			return nil, fmt.Errorf("grpo: reference snapshot: %w", err)
		}
		t.Reference = ref
	}
	return t, nil
}

// SetComm makes the optimizer one rank of a data-parallel run over c (nil or one rank: a single
// process): it generates, scores and trains its share of each step's prompts and sums its
// gradients with the other ranks', which must run the same configuration on the same prompts
// and weights. Overlapped rollouts (StepAhead) are not available then.
func (t *PolicyOptimizer) SetComm(c dist.Comm) { t.dp = newDataParallel(c, nil) }

// State is what a PolicyOptimizer carries from step to step besides the weights, the optimizer state
// and the data position: enough, with those, to resume a run exactly (rollout seeds derive
// from Config.Seed and the step).
type State struct {
	Step     int     `json:"step"`
	BestEval float64 `json:"best_eval"` // best validation accuracy so far
	Stale    int     `json:"stale"`     // evaluations since the best one
	Evals    int     `json:"evals"`     // evaluations reported through AfterEval
	Resets   []int   `json:"resets"`    // steps at which the reference was reset
}

// State returns the trainer's state for a checkpoint.
func (t *PolicyOptimizer) State() State {
	return State{Step: t.step, BestEval: t.bestEval, Stale: t.stale, Evals: t.evals, Resets: append([]int(nil), t.lastResets...)}
}

// Restore puts back a state saved by State and, when the run has a reference policy, the
// reference weights saved with it (a reset may have moved the reference away from the start).
// For a LoRA policy, reference holds the reference's adapters (engine.LoRASpecs names): its
// base is the policy's.
func (t *PolicyOptimizer) Restore(s State, reference map[string]engine.HostTensor) error {
	if t.Reference != nil {
		if reference == nil {
			return errors.New("grpo: restore: the run has a reference policy (KL coefficient > 0) but no reference weights were given")
		}
		if t.Reference.Adapters != nil {
			if err := t.Reference.SetAdapterWeights(reference); err != nil {
				return fmt.Errorf("grpo: restore reference adapters: %w", err)
			}
		} else {
			ref, err := engine.NewModel(t.Policy.Model.Config, t.Policy.Model.Backend, reference, engine.F32)
			if err != nil {
				return fmt.Errorf("grpo: restore reference: %w", err)
			}
			t.Reference = ref
		}
	}
	t.step, t.bestEval, t.stale, t.evals = s.Step, s.BestEval, s.Stale, s.Evals
	t.lastResets = append([]int(nil), s.Resets...)
	return nil
}

// StepNumber is the number of completed steps.
func (t *PolicyOptimizer) StepNumber() int { return t.step }

// SetStep restores the step counter (when resuming).
func (t *PolicyOptimizer) SetStep(s int) { t.step = s }

// Metrics of one GRPO step (what a run logs and plots). The JSON names are verl's where the
// quantity is the same (docs/train.md lists them); ReadMetrics also reads the names of runs
// logged before (legacyMetricNames).
type Metrics struct {
	Step int `json:"step"`
	// RewardMean is the mean reward of the step's responses before the overlong shaping,
	// ShapedRewardMean after it.
	RewardMean       float64            `json:"critic/score/mean"`
	ShapedRewardMean float64            `json:"critic/rewards/mean"`
	Accuracy         float64            `json:"accuracy"` // fraction of responses with reward 1
	RewardByKind     map[string]float64 `json:"reward_by_kind,omitempty"`
	AccuracyByKind   map[string]float64 `json:"accuracy_by_kind,omitempty"`
	ResponseLenMean  float64            `json:"response_length/mean"`
	ResponseLenMax   int                `json:"response_length/max"`
	TruncatedFrac    float64            `json:"response_length/clip_ratio"` // responses cut at MaxResponseTokens
	GroupsKept       int                `json:"groups_kept"`
	GroupsDropped    int                `json:"groups_dropped"`
	SamplingRounds   int                `json:"sampling_rounds"`
	Loss             float64            `json:"loss"`
	PGLoss           float64            `json:"actor/pg_loss"`
	KL               float64            `json:"actor/kl_loss"` // the KL estimator to the reference, mean over the step's tokens
	Entropy          float64            `json:"actor/entropy"`
	// EntropyByKind, KLByKind and ResponseLenByKind are Entropy, KL and ResponseLenMean per
	// prompt kind (a suite's families): the means over the kind's response tokens of the
	// step's updates, and over its sampled responses. KLByKind is absent without a reference.
	EntropyByKind     map[string]float64 `json:"actor/entropy_by_kind,omitempty"`
	KLByKind          map[string]float64 `json:"actor/kl_loss_by_kind,omitempty"`
	ResponseLenByKind map[string]float64 `json:"response_length/mean_by_kind,omitempty"`
	// ClipFrac is the fraction of tokens clipped by the ratio's bounds, ClipFracLow and
	// ClipFracHigh its parts at the low and the high bound; DualClipFrac is the fraction
	// bounded by the dual clip (verl's pg_clipfrac_lower).
	ClipFrac     float64 `json:"actor/pg_clipfrac"`
	ClipFracLow  float64 `json:"actor/pg_clipfrac_clip_low"`
	ClipFracHigh float64 `json:"actor/pg_clipfrac_clip_high"`
	DualClipFrac float64 `json:"actor/pg_clipfrac_lower"`
	// ClipCovFrac and KLCovFrac are the fractions of tokens Clip-Cov dropped and KL-Cov
	// penalised (absent in the other modes).
	ClipCovFrac float64 `json:"actor/clip_cov_frac,omitempty"`
	KLCovFrac   float64 `json:"actor/kl_cov_frac,omitempty"`
	ApproxKL    float64 `json:"actor/ppo_kl"`
	GradNorm    float64 `json:"actor/grad_norm"` // mean over the step's optimizer steps
	LR          float64 `json:"actor/lr"`
	// RolloutKL and RolloutK3KL estimate KL(rollout || trainer) from the log-probs the rollout
	// source reported and the trainer's (k1 and k3), RolloutProbsDiffMean and
	// RolloutProbsDiffMax the mean and largest |p_trainer - p_rollout| of the sampled tokens;
	// 0 when the rollout source reports no log-probs.
	RolloutKL            float64 `json:"rollout_corr/kl"`
	RolloutK3KL          float64 `json:"rollout_corr/k3_kl"`
	RolloutProbsDiffMean float64 `json:"training/rollout_probs_diff_mean"`
	RolloutProbsDiffMax  float64 `json:"training/rollout_probs_diff_max"`
	// TISWeightMean is the mean of the TIS weights before their truncation, TISFracTruncated
	// the fraction truncated at the cap (absent without TIS).
	TISWeightMean    float64 `json:"rollout_corr/rollout_is_mean,omitempty"`
	TISFracTruncated float64 `json:"rollout_corr/rollout_is_ratio_fraction_high,omitempty"`
	// Staleness is how many steps behind the policy the weights that generated the step's
	// rollouts were (0, or 1 with Config.Overlap).
	Staleness      int     `json:"rollout/staleness"`
	RefReset       bool    `json:"ref_reset,omitempty"`
	RolloutSeconds float64 `json:"timing_s/gen"`
	// StepSeconds is the step's wall time in Run: its rollouts (with Config.Overlap: the wait
	// for those of the next step, generated during the update), its update and the weights
	// sent to the rollout source; not the evaluation.
	StepSeconds      float64 `json:"timing_s/step"`
	TrainSeconds     float64 `json:"train_s"`
	RolloutTokensPS  float64 `json:"rollout_tok_per_s"`
	TrainTokens      int     `json:"train_tokens"`
	TrainTokensPS    float64 `json:"train_tok_per_s"` // tokens through forward+backward per second, all updates of the step
	SkippedNoSignal  bool    `json:"skipped_no_signal,omitempty"`
	OptimizerUpdates int     `json:"optimizer_updates"`
	// GradWaitSeconds, GradAllReduceSeconds and GradAllReduceBytes are, for a data-parallel
	// run, the time this rank waited after its own backward before each optimizer step (for
	// the others' backward and, with the all-reduce overlapped, for the sums the backward did
	// not hide), the time spent in the collectives that sum its gradients with theirs (hidden
	// or not), and the bytes of those sums (fp32 values, each all-reduce's buffer once); absent
	// for a single process.
	GradWaitSeconds      float64 `json:"timing_s/grad_wait,omitempty"`
	GradAllReduceSeconds float64 `json:"timing_s/grad_allreduce,omitempty"`
	GradAllReduceBytes   int     `json:"perf/grad_allreduce_bytes,omitempty"`
}

// maybeReset performs the scheduled reference reset.
func (t *PolicyOptimizer) maybeReset(m *Metrics) error {
	if t.Config.RefResetEvery <= 0 || t.step%t.Config.RefResetEvery != 0 {
		return nil
	}
	return t.ResetReference(m)
}

// ResetReference makes the current policy the new reference and zeroes the optimizer state
// (ProRL's hard reset), then calls OnReset.
func (t *PolicyOptimizer) ResetReference(m *Metrics) error {
	if t.Reference != nil {
		ref, err := t.Policy.Model.Snapshot(engine.F32)
		if err != nil {
			return fmt.Errorf("grpo: reference reset: %w", err)
		}
		t.Reference = ref
	}
	t.Policy.ResetOptimizer()
	t.lastResets = append(t.lastResets, t.step)
	if m != nil {
		m.RefReset = true
	}
	slog.Info("grpo: reference reset", "step", t.step)
	if t.OnReset != nil {
		return t.OnReset(t.step)
	}
	return nil
}

// AfterEval records a validation result; when the accuracy has stagnated for
// RefResetOnPlateau evaluations it resets the reference (marking m, which may be nil) and
// reports true.
func (t *PolicyOptimizer) AfterEval(res *EvalResult, m *Metrics) (bool, error) {
	t.evals++
	if t.evals == 1 || res.Accuracy > t.bestEval {
		t.bestEval, t.stale = res.Accuracy, 0
		return false, nil
	}
	t.stale++
	if p := t.Config.RefResetOnPlateau; p > 0 && t.stale >= p {
		t.stale = 0
		slog.Info("grpo: validation stagnated; resetting the reference", "step", t.step, "best", t.bestEval, "now", res.Accuracy)
		return true, t.ResetReference(m)
	}
	return false, nil
}

// EvalResult is a held-out evaluation.
type EvalResult struct {
	Accuracy   float64            `json:"accuracy"` // pass@1 averaged over samples (reward == 1)
	Reward     float64            `json:"reward"`
	ByKind     map[string]float64 `json:"by_kind,omitempty"`
	MeanLength float64            `json:"mean_length"`
	// PassAtK is the unbiased pass@k estimate (Chen et al. 2021) for k = 1, 2, 4, ... up to
	// the samples per prompt (and that number itself), averaged over prompts.
	PassAtK map[int]float64 `json:"pass_at_k,omitempty"`
	// PassAtKByKind is PassAtK per prompt kind (a suite's "arith/in", "arith/above", ...),
	// averaged over that kind's prompts.
	PassAtKByKind map[string]map[int]float64 `json:"pass_at_k_by_kind,omitempty"`
	// LengthByKind is the mean response length (tokens) per prompt kind.
	LengthByKind map[string]float64 `json:"length_by_kind,omitempty"`
}

// PassAtK is the unbiased estimate of the chance that at least one of k samples drawn without
// replacement from n, of which c are correct, is correct: 1 - C(n-c, k) / C(n, k), computed
// as a product so that large n does not overflow.
func PassAtK(n, c, k int) float64 {
	if k < 1 || k > n || c < 0 || c > n {
		return math.NaN()
	}
	if n-c < k {
		return 1
	}
	fail := 1.0 // C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i)
	for i := n - c + 1; i <= n; i++ {
		fail *= 1 - float64(k)/float64(i)
	}
	return 1 - fail
}

// passKs are the k of pass@k reported for n samples per prompt.
func passKs(n int) []int {
	var ks []int
	for k := 1; k < n; k *= 2 {
		ks = append(ks, k)
	}
	return append(ks, n)
}

// Evaluate samples n responses per prompt (ProRL evaluates at temperature 0.6, top-p 0.95;
// temperature 0 is greedy) and reports pass@1 and the mean reward.
func (t *PolicyOptimizer) Evaluate(ctx context.Context, prompts []Prompt, n int, temperature, topP float32) (*EvalResult, error) {
	p := engine.SamplingParams{N: n, Temperature: temperature, TopP: topP,
		MaxNewTokens: t.Config.MaxResponseTokens, StopTokens: t.Config.StopTokens, Seed: t.Config.Seed + 7}
	if t.dp != nil {
		return t.evaluateDP(ctx, prompts, p)
	}
	samples, err := t.Rollouts.Rollout(ctx, prompts, p)
	if err != nil {
		return nil, fmt.Errorf("grpo: evaluation: %w", err)
	}
	rewards, err := t.rewards(ctx, prompts, samples)
	if err != nil {
		return nil, fmt.Errorf("grpo: evaluation %w", err)
	}
	return evalResult(prompts, samples, rewards), nil
}

// evalResult summarises an evaluation's samples and rewards: accuracy, reward, length and
// pass@k, overall and per prompt kind.
func evalResult(prompts []Prompt, samples [][]engine.Sample, rewards [][]float64) *EvalResult {
	res := &EvalResult{ByKind: map[string]float64{}, PassAtK: map[int]float64{},
		PassAtKByKind: map[string]map[int]float64{}, LengthByKind: map[string]float64{}}
	kindN, kindPrompts := map[string]int{}, map[string]int{}
	var total, length float64
	var count int
	for i, ss := range samples {
		kind := prompts[i].Kind
		correct := 0
		for j, s := range ss {
			r := rewards[i][j]
			if r == 1 {
				res.Accuracy++
				res.ByKind[kind]++
				correct++
			}
			kindN[kind]++
			total += r
			length += float64(len(s.Tokens))
			res.LengthByKind[kind] += float64(len(s.Tokens))
			count++
		}
		if len(ss) == 0 {
			continue
		}
		kindPrompts[kind]++
		if res.PassAtKByKind[kind] == nil {
			res.PassAtKByKind[kind] = map[int]float64{}
		}
		for _, k := range passKs(len(ss)) {
			p := PassAtK(len(ss), correct, k)
			res.PassAtK[k] += p / float64(len(samples))
			res.PassAtKByKind[kind][k] += p
		}
	}
	if count > 0 {
		res.Accuracy /= float64(count)
		res.Reward = total / float64(count)
		res.MeanLength = length / float64(count)
	}
	for k, n := range kindN {
		res.ByKind[k] /= float64(n)
		res.LengthByKind[k] /= float64(n)
	}
	for kind, byK := range res.PassAtKByKind {
		for k := range byK {
			byK[k] /= float64(kindPrompts[kind])
		}
	}
	return res
}

func mean(s []float64) float64 {
	if len(s) == 0 {
		return 0
	}
	var t float64
	for _, v := range s {
		t += v
	}
	return t / float64(len(s))
}

func f64(s []float32) []float64 {
	out := make([]float64, len(s))
	for i, v := range s {
		out[i] = float64(v)
	}
	return out
}
