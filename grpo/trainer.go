// Package grpo runs the ProRL recipe: rollouts of n samples per prompt, verifiable rewards,
// group advantages, the clipped policy loss with KL to a reference policy, dynamic sampling
// and periodic reference resets, on top of the engine's generation and training paths.
package grpo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"time"

	"github.com/prolong-rl/prolong/engine"
)

// Prompt is one RL prompt, tokenized (chat template already applied), with what its reward
// needs.
type Prompt struct {
	Tokens      []int32
	Kind        string // task kind (data_source): routes the reward
	GroundTruth string
	Meta        map[string]any
}

// RewardFunc scores one response (its decoded text) to a prompt in [0, 1].
type RewardFunc func(ctx context.Context, p Prompt, response string) (float64, error)

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

// Config holds the knobs of a GRPO run; DefaultConfig gives the ProRL recipe scaled down.
type Config struct {
	PromptsPerStep    int     // B: groups per rollout step
	SamplesPerPrompt  int     // n: responses per prompt
	Temperature       float32 // rollout temperature (ProRL 1.2); log-probs are taken at it too
	TopP              float32
	MaxResponseTokens int
	StopTokens        []int32
	// MiniBatches is the number of policy updates per rollout step (the rollout batch is
	// split into this many mini-batches).
	MiniBatches int
	// MicroBatchTokens bounds the tokens of one forward/backward; gradients accumulate.
	MicroBatchTokens int
	Loss             LossConfig
	Advantage        AdvantageConfig
	// DynamicSampling drops groups whose rewards are all equal and samples more prompts until
	// PromptsPerStep informative groups are found or MaxSamplingRounds rounds are spent.
	DynamicSampling   bool
	MaxSamplingRounds int
	// OverlongPenalty is subtracted from the reward of a response cut at MaxResponseTokens.
	OverlongPenalty float64
	// RefResetEvery resets the reference policy to the current policy and zeroes the
	// optimizer state every so many steps (0: never).
	RefResetEvery int
	// RefResetOnPlateau resets the reference when the validation accuracy has not improved on
	// its best for this many evaluations in a row (reported through AfterEval); 0: never.
	RefResetOnPlateau int
	Seed              uint64
}

// DefaultConfig is the ProRL recipe (clip 0.2/0.4, k3 KL 1e-4, token-mean, dynamic sampling,
// temperature 1.2, 4 updates per rollout step) at a size for small models.
func DefaultConfig() Config {
	return Config{
		PromptsPerStep: 16, SamplesPerPrompt: 8, Temperature: 1.2, TopP: 1, MaxResponseTokens: 64,
		MiniBatches: 2, MicroBatchTokens: 4096, Loss: DefaultLossConfig(),
		DynamicSampling: true, MaxSamplingRounds: 4, RefResetEvery: 0, Seed: 1,
	}
}

func (c *Config) validate() error {
	switch {
	case c.PromptsPerStep < 1:
		return fmt.Errorf("grpo: PromptsPerStep = %d, want >= 1", c.PromptsPerStep)
	case c.SamplesPerPrompt < 2:
		return fmt.Errorf("grpo: SamplesPerPrompt = %d, want >= 2 (group advantages need a group)", c.SamplesPerPrompt)
	case !(c.Temperature > 0):
		return fmt.Errorf("grpo: Temperature = %v, want > 0", c.Temperature)
	case c.MaxResponseTokens < 1:
		return fmt.Errorf("grpo: MaxResponseTokens = %d, want >= 1", c.MaxResponseTokens)
	case c.MiniBatches < 1:
		return fmt.Errorf("grpo: MiniBatches = %d, want >= 1", c.MiniBatches)
	case c.MicroBatchTokens < 1:
		return fmt.Errorf("grpo: MicroBatchTokens = %d, want >= 1", c.MicroBatchTokens)
	case c.DynamicSampling && c.MaxSamplingRounds < 1:
		return fmt.Errorf("grpo: MaxSamplingRounds = %d, want >= 1 with dynamic sampling", c.MaxSamplingRounds)
	}
	return c.Loss.Validate()
}

// Trainer is a GRPO run in progress: the policy being trained, the frozen reference, and the
// rollout source, reward and prompts.
type Trainer struct {
	Policy    *engine.Trainer
	Reference *engine.Model // nil when the KL coefficient is 0
	Rollouts  RolloutSource
	Prompts   PromptSource
	Reward    RewardFunc
	Decode    func([]int32) string
	Config    Config
	// OnReset is called after each reference reset (export a checkpoint there).
	OnReset func(step int) error

	step       int
	lastResets []int
	bestEval   float64
	stale      int // evaluations since the best one
	evals      int
}

// NewTrainer checks the configuration and takes the first reference snapshot.
func NewTrainer(policy *engine.Trainer, rollouts RolloutSource, prompts PromptSource, reward RewardFunc, decode func([]int32) string, cfg Config) (*Trainer, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if policy == nil || rollouts == nil || prompts == nil || reward == nil || decode == nil {
		return nil, errors.New("grpo: policy, rollouts, prompts, reward and decode are all required")
	}
	// The loss compares log-probs of the same distribution: the policy's, the rollout's and the
	// reference's, all at the rollout temperature.
	if err := policy.SetTemperature(cfg.Temperature); err != nil {
		return nil, err
	}
	t := &Trainer{Policy: policy, Rollouts: rollouts, Prompts: prompts, Reward: reward, Decode: decode, Config: cfg}
	if cfg.Loss.KLCoef > 0 {
		ref, err := policy.Model.Snapshot(engine.F32)
		if err != nil {
			return nil, fmt.Errorf("grpo: reference snapshot: %w", err)
		}
		t.Reference = ref
	}
	return t, nil
}

// State is what a Trainer carries from step to step besides the weights, the optimizer state
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
func (t *Trainer) State() State {
	return State{Step: t.step, BestEval: t.bestEval, Stale: t.stale, Evals: t.evals, Resets: append([]int(nil), t.lastResets...)}
}

// Restore puts back a state saved by State and, when the run has a reference policy, the
// reference weights saved with it (a reset may have moved the reference away from the start).
func (t *Trainer) Restore(s State, reference map[string]engine.HostTensor) error {
	if t.Reference != nil {
		if reference == nil {
			return errors.New("grpo: restore: the run has a reference policy (KL coefficient > 0) but no reference weights were given")
		}
		ref, err := engine.NewModel(t.Policy.Model.Config, t.Policy.Model.Backend, reference, engine.F32)
		if err != nil {
			return fmt.Errorf("grpo: restore reference: %w", err)
		}
		t.Reference = ref
	}
	t.step, t.bestEval, t.stale, t.evals = s.Step, s.BestEval, s.Stale, s.Evals
	t.lastResets = append([]int(nil), s.Resets...)
	return nil
}

// StepNumber is the number of completed steps.
func (t *Trainer) StepNumber() int { return t.step }

// SetStep restores the step counter (when resuming).
func (t *Trainer) SetStep(s int) { t.step = s }

// Metrics of one GRPO step (what a run logs and plots).
type Metrics struct {
	Step             int                `json:"step"`
	RewardMean       float64            `json:"reward_mean"`
	Accuracy         float64            `json:"accuracy"` // fraction of responses with reward 1
	RewardByKind     map[string]float64 `json:"reward_by_kind,omitempty"`
	AccuracyByKind   map[string]float64 `json:"accuracy_by_kind,omitempty"`
	ResponseLenMean  float64            `json:"response_len_mean"`
	ResponseLenMax   int                `json:"response_len_max"`
	TruncatedFrac    float64            `json:"truncated_frac"`
	GroupsKept       int                `json:"groups_kept"`
	GroupsDropped    int                `json:"groups_dropped"`
	SamplingRounds   int                `json:"sampling_rounds"`
	Loss             float64            `json:"loss"`
	PGLoss           float64            `json:"pg_loss"`
	KL               float64            `json:"kl"`
	Entropy          float64            `json:"entropy"`
	ClipFracLow      float64            `json:"clip_frac_low"`
	ClipFracHigh     float64            `json:"clip_frac_high"`
	ApproxKL         float64            `json:"approx_kl"`
	GradNorm         float64            `json:"grad_norm"`
	LR               float64            `json:"lr"`
	RefReset         bool               `json:"ref_reset,omitempty"`
	RolloutSeconds   float64            `json:"rollout_s"`
	TrainSeconds     float64            `json:"train_s"`
	RolloutTokensPS  float64            `json:"rollout_tok_per_s"`
	TrainTokens      int                `json:"train_tokens"`
	TrainTokensPS    float64            `json:"train_tok_per_s"` // tokens through forward+backward per second, all updates of the step
	SkippedNoSignal  bool               `json:"skipped_no_signal,omitempty"`
	OptimizerUpdates int                `json:"optimizer_updates"`
}

// rollout is one sampled response with what the update needs.
type rollout struct {
	prompt    *Prompt
	tokens    []int32 // response tokens
	truncated bool
	reward    float64
	adv       float64
	old, ref  []float64 // per response token
}

// Step runs one GRPO step: rollouts (with dynamic sampling), rewards, advantages, old and
// reference log-probs, MiniBatches policy updates, and a reference reset when one is due.
func (t *Trainer) Step(ctx context.Context) (*Metrics, error) {
	cfg := t.Config
	m := &Metrics{Step: t.step + 1, RewardByKind: map[string]float64{}, AccuracyByKind: map[string]float64{}}
	t0 := time.Now()
	var groups [][]*rollout
	var rewardsAll []float64
	kindN := map[string]int{}
	var genTokens, lenMax, truncated, nResp, correct int
	var lenSum float64
	for round := 0; ; round++ {
		need := cfg.PromptsPerStep - len(groups)
		prompts, err := t.Prompts.Next(need)
		if err != nil {
			return nil, fmt.Errorf("grpo: step %d: prompts: %w", m.Step, err)
		}
		sp := engine.SamplingParams{N: cfg.SamplesPerPrompt, Temperature: cfg.Temperature, TopP: cfg.TopP,
			MaxNewTokens: cfg.MaxResponseTokens, StopTokens: cfg.StopTokens,
			Seed: cfg.Seed*1_000_003 + uint64(t.step)*10_007 + uint64(round)*101}
		samples, err := t.Rollouts.Rollout(ctx, prompts, sp)
		if err != nil {
			return nil, fmt.Errorf("grpo: step %d: rollout: %w", m.Step, err)
		}
		m.SamplingRounds++
		for i := range prompts {
			p := &prompts[i]
			g := make([]*rollout, len(samples[i]))
			rs := make([]float64, len(g))
			for j, s := range samples[i] {
				text := t.Decode(s.Tokens)
				r, err := t.Reward(ctx, *p, text)
				if err != nil {
					return nil, fmt.Errorf("grpo: step %d: reward of prompt %d sample %d (%s): %w", m.Step, i, j, p.Kind, err)
				}
				trunc := s.Finish == engine.FinishLength
				if r == 1 {
					correct++
					m.AccuracyByKind[p.Kind]++
				}
				rewardsAll = append(rewardsAll, r)
				m.RewardByKind[p.Kind] += r
				kindN[p.Kind]++
				if trunc {
					truncated++
					r -= cfg.OverlongPenalty
				}
				g[j] = &rollout{prompt: p, tokens: s.Tokens, truncated: trunc, reward: r}
				rs[j] = r
				genTokens += len(s.Tokens)
				lenSum += float64(len(s.Tokens))
				lenMax = max(lenMax, len(s.Tokens))
				nResp++
			}
			if cfg.DynamicSampling && UniformGroups([][]float64{rs}, 1e-9)[0] {
				m.GroupsDropped++
				continue
			}
			groups = append(groups, g)
		}
		if !cfg.DynamicSampling || len(groups) >= cfg.PromptsPerStep || round+1 >= cfg.MaxSamplingRounds {
			break
		}
	}
	m.RolloutSeconds = time.Since(t0).Seconds()
	m.RolloutTokensPS = float64(genTokens) / m.RolloutSeconds
	m.RewardMean = mean(rewardsAll)
	m.Accuracy = float64(correct) / float64(max(1, nResp))
	for k, n := range kindN {
		m.RewardByKind[k] /= float64(n)
		m.AccuracyByKind[k] /= float64(n)
	}
	m.ResponseLenMean = lenSum / float64(max(1, nResp))
	m.ResponseLenMax = lenMax
	m.TruncatedFrac = float64(truncated) / float64(max(1, nResp))
	m.GroupsKept = len(groups)
	t.step++
	if len(groups) == 0 {
		m.SkippedNoSignal = true
		slog.Info("grpo: no group with a reward signal; update skipped", "step", m.Step)
		return m, t.maybeReset(m)
	}

	// Advantages per group.
	rewards := make([][]float64, len(groups))
	for i, g := range groups {
		for _, r := range g {
			rewards[i] = append(rewards[i], r.reward)
		}
	}
	advCfg := cfg.Advantage
	if advCfg.Estimator == EstimatorReinforcePPBaseline {
		advCfg.TokenCounts = make([][]int, len(groups))
		for i, g := range groups {
			for _, r := range g {
				advCfg.TokenCounts[i] = append(advCfg.TokenCounts[i], len(r.tokens))
			}
		}
	}
	adv, err := Advantages(rewards, advCfg)
	if err != nil {
		return nil, fmt.Errorf("grpo: step %d: advantages: %w", m.Step, err)
	}
	var all []*rollout
	for i, g := range groups {
		for j, r := range g {
			r.adv = adv[i][j]
			if len(r.tokens) > 0 {
				all = append(all, r)
			}
		}
	}

	// Old and reference log-probs, recomputed with the training forward's numerics.
	t1 := time.Now()
	reqs := make([]engine.ScoreRequest, len(all))
	for i, r := range all {
		reqs[i] = engine.ScoreRequest{Tokens: append(append([]int32(nil), r.prompt.Tokens...), r.tokens...), Start: len(r.prompt.Tokens)}
	}
	old, err := t.Policy.Model.Score(ctx, reqs, cfg.Temperature)
	if err != nil {
		return nil, fmt.Errorf("grpo: step %d: old log-probs: %w", m.Step, err)
	}
	var ref []engine.ScoreResult
	if t.Reference != nil {
		if ref, err = t.Reference.Score(ctx, reqs, cfg.Temperature); err != nil {
			return nil, fmt.Errorf("grpo: step %d: reference log-probs: %w", m.Step, err)
		}
	}
	for i, r := range all {
		r.old = f64(old[i].LogProbs)
		if ref != nil {
			r.ref = f64(ref[i].LogProbs)
		}
	}

	// Policy updates: shuffle, split into mini-batches, each into micro-batches.
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(t.step)))
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	var agg lossAgg
	for mb := 0; mb < cfg.MiniBatches; mb++ {
		part := all[mb*len(all)/cfg.MiniBatches : (mb+1)*len(all)/cfg.MiniBatches]
		if len(part) == 0 {
			continue
		}
		lc := cfg.Loss
		for _, r := range part {
			lc.TokenNorm += float64(len(r.tokens))
		}
		lc.SeqNorm = float64(len(part))
		for lo := 0; lo < len(part); {
			hi, toks := lo, 0
			for hi < len(part) && (hi == lo || toks+len(part[hi].prompt.Tokens)+len(part[hi].tokens) <= cfg.MicroBatchTokens) {
				toks += len(part[hi].prompt.Tokens) + len(part[hi].tokens)
				hi++
			}
			if err := t.microStep(ctx, part[lo:hi], lc, &agg); err != nil {
				return nil, fmt.Errorf("grpo: step %d: update: %w", m.Step, err)
			}
			m.TrainTokens += toks
			lo = hi
		}
		st, err := t.Policy.Step()
		if err != nil {
			return nil, fmt.Errorf("grpo: step %d: optimizer: %w", m.Step, err)
		}
		m.GradNorm, m.LR = st.GradNorm, st.LR
		m.OptimizerUpdates++
	}
	agg.fill(m)
	m.TrainSeconds = time.Since(t1).Seconds()
	if m.TrainSeconds > 0 {
		m.TrainTokensPS = float64(m.TrainTokens) / m.TrainSeconds
	}
	return m, t.maybeReset(m)
}

// lossAgg sums loss metrics over micro-batches (weighted by tokens).
type lossAgg struct {
	loss, pg, kl, ent, clo, chi, akl float64
	tokens                           float64
}

func (a *lossAgg) add(out LossOutput) {
	n := float64(out.Metrics.Tokens)
	a.loss += out.Loss
	a.pg += out.Metrics.PGLoss
	a.kl += out.Metrics.RefKL * n
	a.ent += out.Metrics.EntropyMean * n
	a.clo += out.Metrics.ClipFracLow * n
	a.chi += out.Metrics.ClipFracHigh * n
	a.akl += out.Metrics.ApproxKL * n
	a.tokens += n
}

func (a *lossAgg) fill(m *Metrics) {
	n := math.Max(1, a.tokens)
	m.Loss, m.PGLoss = a.loss, a.pg
	m.KL, m.Entropy = a.kl/n, a.ent/n
	m.ClipFracLow, m.ClipFracHigh, m.ApproxKL = a.clo/n, a.chi/n, a.akl/n
}

// microStep runs forward+backward of the policy loss on one micro-batch.
func (t *Trainer) microStep(ctx context.Context, part []*rollout, lc LossConfig, agg *lossAgg) error {
	reqs := make([]engine.ScoreRequest, len(part))
	for i, r := range part {
		reqs[i] = engine.ScoreRequest{Tokens: append(append([]int32(nil), r.prompt.Tokens...), r.tokens...), Start: len(r.prompt.Tokens)}
	}
	loss := func(logp, ent [][]float64) (float64, [][]float64, [][]float64, error) {
		in := LossInput{LogProbs: logp, Entropy: ent, OldLogProbs: make([][]float64, len(part)), Advantages: make([][]float64, len(part))}
		if t.Reference != nil {
			in.RefLogProbs = make([][]float64, len(part))
		}
		for i, r := range part {
			in.OldLogProbs[i] = r.old
			if in.RefLogProbs != nil {
				in.RefLogProbs[i] = r.ref
			}
			in.Advantages[i] = make([]float64, len(r.tokens))
			for j := range in.Advantages[i] {
				in.Advantages[i][j] = r.adv
			}
		}
		out, err := PolicyLoss(in, lc)
		if err != nil {
			return 0, nil, nil, err
		}
		agg.add(out)
		return out.Loss, out.DLogProbs, out.DEntropy, nil
	}
	_, err := t.Policy.ForwardBackward(ctx, reqs, loss)
	return err
}

// maybeReset performs the scheduled reference reset.
func (t *Trainer) maybeReset(m *Metrics) error {
	if t.Config.RefResetEvery <= 0 || t.step%t.Config.RefResetEvery != 0 {
		return nil
	}
	return t.ResetReference(m)
}

// ResetReference makes the current policy the new reference and zeroes the optimizer state
// (ProRL's hard reset), then calls OnReset.
func (t *Trainer) ResetReference(m *Metrics) error {
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
func (t *Trainer) AfterEval(res *EvalResult, m *Metrics) (bool, error) {
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
func (t *Trainer) Evaluate(ctx context.Context, prompts []Prompt, n int, temperature, topP float32) (*EvalResult, error) {
	samples, err := t.Rollouts.Rollout(ctx, prompts, engine.SamplingParams{N: n, Temperature: temperature, TopP: topP,
		MaxNewTokens: t.Config.MaxResponseTokens, StopTokens: t.Config.StopTokens, Seed: t.Config.Seed + 7})
	if err != nil {
		return nil, fmt.Errorf("grpo: evaluation: %w", err)
	}
	res := &EvalResult{ByKind: map[string]float64{}, PassAtK: map[int]float64{}}
	kindN := map[string]int{}
	var total, length float64
	var count int
	for i, ss := range samples {
		correct := 0
		for _, s := range ss {
			r, err := t.Reward(ctx, prompts[i], t.Decode(s.Tokens))
			if err != nil {
				return nil, fmt.Errorf("grpo: evaluation reward of prompt %d: %w", i, err)
			}
			if r == 1 {
				res.Accuracy++
				res.ByKind[prompts[i].Kind]++
				correct++
			}
			kindN[prompts[i].Kind]++
			total += r
			length += float64(len(s.Tokens))
			count++
		}
		if len(ss) > 0 {
			for _, k := range passKs(len(ss)) {
				res.PassAtK[k] += PassAtK(len(ss), correct, k) / float64(len(samples))
			}
		}
	}
	if count > 0 {
		res.Accuracy /= float64(count)
		res.Reward = total / float64(count)
		res.MeanLength = length / float64(count)
	}
	for k, n := range kindN {
		res.ByKind[k] /= float64(n)
	}
	return res, nil
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
