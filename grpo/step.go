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
	"github.com/prolong-rl/prolong/grpo/reward"
)

// A GRPO step has two stages. The rollout stage (Rollout) samples and scores responses with
// the rollout source's weights; the update stage (Update) turns them into advantages,
// recomputes old and reference log-probs and updates the policy. Step runs one after the
// other; StepAhead also runs the next step's rollout stage during the update (overlapped
// rollouts, one step stale).

// rollout is one sampled response with what the update needs.
type rollout struct {
	prompt    *Prompt
	tokens    []int32 // response tokens
	truncated bool
	reward    float64 // after the overlong shaping
	adv       float64
	old, ref  []float64 // per response token
	rollout   []float64 // per response token, as the rollout source reported them; nil if it did not
	// remote marks another rank's response in a data-parallel run: its numbers (reward,
	// truncation, n tokens) without its tokens.
	remote bool
	n      int
}

// length is the response's token count.
func (r *rollout) length() int {
	if r.remote {
		return r.n
	}
	return len(r.tokens)
}

// RolloutBatch is what the rollout stage hands the update stage: the groups of scored
// responses kept for one step, and the step's metrics as far as the rollouts go.
type RolloutBatch struct {
	// Step is the step the batch is for (1-based).
	Step int
	// WeightsStep is the step whose weights generated the batch: the trainer's step count when
	// its rollout stage started (the rollout source holds the latest weights then: Run sends a
	// WeightSync source the policy's weights after every step).
	WeightsStep int
	// Metrics holds the rollout half of the step's metrics; Update fills in the rest.
	Metrics *Metrics
	groups  [][]*rollout // [group][sample]
}

// Step runs one GRPO step: Rollout, then Update.
func (t *PolicyOptimizer) Step(ctx context.Context) (*Metrics, error) {
	b, err := t.Rollout(ctx)
	if err != nil {
		return nil, err
	}
	return t.Update(ctx, b)
}

// StepAhead runs one GRPO step as Step does and, while its update runs, the rollout stage of
// the step after it, on the weights the rollout source holds now (those of the last completed
// step: one step stale when trained on). It returns once both are done, so that the caller
// can then send the source the new weights; the next Step, StepAhead or Rollout takes that
// batch. The rollout source must generate from its own copy of the weights (a WeightSync),
// not from the policy being trained, and Config.Overlap must be set.
func (t *PolicyOptimizer) StepAhead(ctx context.Context) (*Metrics, error) {
	if !t.Config.Overlap {
		return nil, errors.New("grpo: StepAhead needs Config.Overlap")
	}
	if _, ok := t.Rollouts.(WeightSync); !ok {
		return nil, fmt.Errorf("grpo: overlapped rollouts need a rollout source with its own weights (a WeightSync); %T generates on the policy being trained", t.Rollouts)
	}
	b, err := t.Rollout(ctx)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		b   *RolloutBatch
		err error
	}
	next := make(chan result, 1)
	go func(step, weights int) {
		nb, err := t.rollout(actx, step, weights)
		next <- result{nb, err}
	}(t.step+2, t.step)
	m, err := t.Update(ctx, b)
	if err != nil {
		cancel()
	}
	r := <-next
	if err != nil {
		return nil, err
	}
	if r.err != nil {
		return nil, r.err
	}
	t.ahead = r.b
	return m, nil
}

// Rollout runs the rollout stage of the next step (or hands out the batch StepAhead generated
// for it): SamplesPerPrompt responses to each of PromptsPerStep prompts, rewarded; with
// dynamic sampling, groups whose rewards are all equal are dropped and more prompts are
// sampled, for at most MaxSamplingRounds rounds. It changes neither the policy nor the step
// count.
func (t *PolicyOptimizer) Rollout(ctx context.Context) (*RolloutBatch, error) {
	if b := t.ahead; b != nil {
		t.ahead = nil
		return b, nil
	}
	return t.rollout(ctx, t.step+1, t.step)
}

// rollout runs the rollout stage of step on the rollout source's weights of step weights. It
// reads no state that Update changes, so it may run during an update.
func (t *PolicyOptimizer) rollout(ctx context.Context, step, weights int) (*RolloutBatch, error) {
	cfg := t.Config
	b := &RolloutBatch{Step: step, WeightsStep: weights, Metrics: &Metrics{Step: step, RewardByKind: map[string]float64{}, AccuracyByKind: map[string]float64{}}}
	st := rolloutStats{kindN: map[string]int{}, lenByKind: map[string]float64{}}
	t0 := time.Now()
	for round := 0; ; round++ {
		sample := t.sampleRound
		if t.dp != nil {
			sample = t.sampleRoundDP
		}
		if err := sample(ctx, b, round, &st); err != nil {
			return nil, err
		}
		if !cfg.DynamicSampling || len(b.groups) >= cfg.PromptsPerStep || round+1 >= cfg.MaxSamplingRounds {
			break
		}
	}
	st.fill(b.Metrics, time.Since(t0))
	b.Metrics.GroupsKept = len(b.groups)
	return b, nil
}

// rolloutParams are the sampling parameters of one rollout round of a step; the seed derives
// from Config.Seed, the step and the round, so a resumed run samples what it would have.
func (t *PolicyOptimizer) rolloutParams(step, round int) engine.SamplingParams {
	cfg := t.Config
	return engine.SamplingParams{N: cfg.SamplesPerPrompt, Temperature: cfg.Temperature, TopP: cfg.TopP,
		MaxNewTokens: cfg.MaxResponseTokens, StopTokens: cfg.StopTokens,
		Seed: cfg.Seed*1_000_003 + uint64(step-1)*10_007 + uint64(round)*101}
}

// sampleRound draws the prompts still missing from the batch, samples and scores their
// groups, and keeps those with a reward signal (all of them without dynamic sampling).
func (t *PolicyOptimizer) sampleRound(ctx context.Context, b *RolloutBatch, round int, st *rolloutStats) error {
	cfg, m := t.Config, b.Metrics
	prompts, err := t.Prompts.Next(cfg.PromptsPerStep - len(b.groups))
	if err != nil {
		return fmt.Errorf("grpo: step %d: prompts: %w", m.Step, err)
	}
	samples, err := t.Rollouts.Rollout(ctx, prompts, t.rolloutParams(b.Step, round))
	if err != nil {
		return fmt.Errorf("grpo: step %d: rollout: %w", m.Step, err)
	}
	m.SamplingRounds++
	rewards, err := t.rewards(ctx, prompts, samples)
	if err != nil {
		return fmt.Errorf("grpo: step %d: %w", m.Step, err)
	}
	for i := range prompts {
		g, rs, err := t.group(&prompts[i], samples[i], rewards[i], m, st)
		if err != nil {
			return fmt.Errorf("grpo: step %d: rollout of prompt %d: %w", m.Step, i, err)
		}
		if cfg.DynamicSampling && UniformGroups([][]float64{rs}, 1e-9)[0] {
			m.GroupsDropped++
			continue
		}
		b.groups = append(b.groups, g)
	}
	return nil
}

// rewards scores the samples of each prompt ([prompt][sample]): in one call of BatchReward
// when it is set, else one call of Reward per sample. An error names the prompt and sample.
func (t *PolicyOptimizer) rewards(ctx context.Context, prompts []Prompt, samples [][]engine.Sample) ([][]float64, error) {
	out := make([][]float64, len(samples))
	if t.BatchReward == nil && t.Reward == nil {
		return nil, errors.New("the trainer has neither a Reward nor a BatchReward")
	}
	if t.BatchReward == nil {
		for i, ss := range samples {
			out[i] = make([]float64, len(ss))
			for j, s := range ss {
				r, err := t.Reward(ctx, prompts[i], t.Decode(s.Tokens))
				if err != nil {
					return nil, fmt.Errorf("reward of prompt %d sample %d (%s): %w", i, j, prompts[i].Kind, err)
				}
				out[i][j] = r
			}
		}
		return out, nil
	}
	var reqs []RewardRequest
	for i, ss := range samples {
		for _, s := range ss {
			reqs = append(reqs, RewardRequest{Prompt: prompts[i], Response: t.Decode(s.Tokens)})
		}
	}
	rs, err := t.BatchReward(ctx, reqs)
	if err != nil {
		return nil, fmt.Errorf("rewards of %d responses to %d prompts (in order: prompt by prompt, sample by sample): %w", len(reqs), len(prompts), err)
	}
	if len(rs) != len(reqs) {
		return nil, fmt.Errorf("the batch reward gave %d rewards for %d responses", len(rs), len(reqs))
	}
	for i, ss := range samples {
		out[i], rs = rs[:len(ss):len(ss)], rs[len(ss):]
	}
	return out, nil
}

// group makes the group of prompt p from its samples and their rewards, and records them in
// the step's statistics (st nil: not recorded). It returns the group and its rewards after the
// overlong shaping; a sample whose log-probs do not match its tokens is an error.
func (t *PolicyOptimizer) group(p *Prompt, samples []engine.Sample, rewards []float64, m *Metrics, st *rolloutStats) ([]*rollout, []float64, error) {
	g := make([]*rollout, len(samples))
	rs := make([]float64, len(g))
	for j, s := range samples {
		trunc := s.Finish == engine.FinishLength
		r := rewards[j] + t.overlong(len(s.Tokens), trunc)
		if st != nil {
			st.add(m, p.Kind, rewards[j], r, len(s.Tokens), trunc)
		}
		g[j] = &rollout{prompt: p, tokens: s.Tokens, truncated: trunc, reward: r}
		switch len(s.LogProbs) {
		case len(s.Tokens):
			g[j].rollout = f64(s.LogProbs)
		case 0:
		default:
			return nil, nil, fmt.Errorf("sample %d has %d log-probs for %d tokens", j, len(s.LogProbs), len(s.Tokens))
		}
		rs[j] = r
	}
	return g, rs, nil
}

// overlong is the reward shaping of a response of length tokens (truncated: cut at
// MaxResponseTokens) with OverlongPenalty = p and OverlongBuffer = b. With b > 0 it is DAPO's
// soft overlong punishment, p * reward.OverlongPenalty(length, MaxResponseTokens, b): 0 up to
// MaxResponseTokens-b tokens, then falling linearly to -p at MaxResponseTokens. With b = 0 it
// is the flat penalty of runs before it: -p for a truncated response, 0 otherwise (a response
// whose stop token is its MaxResponseTokens-th token is not penalised).
func (t *PolicyOptimizer) overlong(length int, truncated bool) float64 {
	c := t.Config
	switch {
	case c.OverlongPenalty == 0:
		return 0
	case c.OverlongBuffer > 0:
		return c.OverlongPenalty * reward.OverlongPenalty(length, c.MaxResponseTokens, c.OverlongBuffer)
	case truncated:
		return -c.OverlongPenalty
	}
	return 0
}

// rolloutStats gathers a step's rollout metrics over its sampling rounds.
type rolloutStats struct {
	rewards                                  []float64 // every sampled response's reward, before the overlong shaping
	shapedSum                                float64   // the sum of the rewards after it
	kindN                                    map[string]int
	lenByKind                                map[string]float64
	genTokens, lenMax, truncated, n, correct int
	lenSum                                   float64
}

// add records one response: its reward r (before the overlong shaping) and shaped (after it),
// length and whether it was cut at the length limit.
func (st *rolloutStats) add(m *Metrics, kind string, r, shaped float64, length int, truncated bool) {
	if r == 1 {
		st.correct++
		m.AccuracyByKind[kind]++
	}
	st.rewards = append(st.rewards, r)
	st.shapedSum += shaped
	m.RewardByKind[kind] += r
	st.kindN[kind]++
	st.lenByKind[kind] += float64(length)
	if truncated {
		st.truncated++
	}
	st.genTokens += length
	st.lenSum += float64(length)
	st.lenMax = max(st.lenMax, length)
	st.n++
}

// fill writes the rollout metrics of a step whose rollouts took d.
func (st *rolloutStats) fill(m *Metrics, d time.Duration) {
	m.RolloutSeconds = d.Seconds()
	m.RolloutTokensPS = float64(st.genTokens) / m.RolloutSeconds
	m.RewardMean = mean(st.rewards)
	m.ShapedRewardMean = st.shapedSum / float64(max(1, st.n))
	m.Accuracy = float64(st.correct) / float64(max(1, st.n))
	m.ResponseLenByKind = map[string]float64{}
	for k, n := range st.kindN {
		m.RewardByKind[k] /= float64(n)
		m.AccuracyByKind[k] /= float64(n)
		m.ResponseLenByKind[k] = st.lenByKind[k] / float64(n)
	}
	m.ResponseLenMean = st.lenSum / float64(max(1, st.n))
	m.ResponseLenMax = st.lenMax
	m.TruncatedFrac = float64(st.truncated) / float64(max(1, st.n))
}

// Update runs the update stage of the step b was sampled for (the one after the last
// completed step): group advantages, old and reference log-probs recomputed with the training
// forward's numerics, MiniBatches policy updates, and the reference reset when one is due. A
// batch without any group is a step without an update (SkippedNoSignal). It returns the
// step's metrics, b.Metrics completed.
func (t *PolicyOptimizer) Update(ctx context.Context, b *RolloutBatch) (*Metrics, error) {
	if b == nil || b.Step != t.step+1 {
		return nil, fmt.Errorf("grpo: update: the batch is not for step %d, the next one", t.step+1)
	}
	m := b.Metrics
	if m.Staleness = t.step - b.WeightsStep; m.Staleness < 0 || m.Staleness > t.Config.MaxStaleness {
		return nil, fmt.Errorf("grpo: update: the batch for step %d was generated with the weights of step %d: %d steps stale, want 0 to MaxStaleness = %d", b.Step, b.WeightsStep, m.Staleness, t.Config.MaxStaleness)
	}
	t.step++
	if d := t.dp; d != nil {
		d.step, d.gradWait, d.gradSeconds, d.gradBytes = m.Step, 0, 0, 0
		defer func() {
			m.GradWaitSeconds, m.GradAllReduceSeconds, m.GradAllReduceBytes = d.gradWait, d.gradSeconds, d.gradBytes
		}()
	}
	if len(b.groups) == 0 {
		m.SkippedNoSignal = true
		slog.Info("grpo: no group with a reward signal; update skipped", "step", m.Step)
		return m, t.maybeReset(m)
	}
	all, err := t.advantages(b.groups)
	if err != nil {
		return nil, fmt.Errorf("grpo: step %d: advantages: %w", m.Step, err)
	}
	if len(all) == 0 {
		slog.Info("grpo: no response for the loss (all empty, or truncated and masked); update skipped", "step", m.Step)
		return m, t.maybeReset(m)
	}
	t1 := time.Now()
	local := all
	if t.dp != nil {
		local = localRollouts(all)
	}
	if len(local) > 0 {
		if err := t.logProbs(ctx, local); err != nil {
			return nil, fmt.Errorf("grpo: step %d: %w", m.Step, err)
		}
	}
	mis, err := mismatch(local, t.Config.Loss.TISCap)
	if err != nil {
		return nil, fmt.Errorf("grpo: step %d: %w", m.Step, err)
	}
	if t.dp != nil {
		if err := t.dp.combineMismatch(&mis); err != nil {
			return nil, fmt.Errorf("grpo: step %d: %w", m.Step, err)
		}
	}
	mis.fill(t.Config.Loss.TISCap, m)
	if err := t.policyUpdates(ctx, all, m); err != nil {
		return nil, err
	}
	m.TrainSeconds = time.Since(t1).Seconds()
	if m.TrainSeconds > 0 {
		m.TrainTokensPS = float64(m.TrainTokens) / m.TrainSeconds
	}
	return m, t.maybeReset(m)
}

// advantages sets each response's advantage within its group and returns the responses the
// loss sees, in group order: those with tokens, less the truncated ones with MaskTruncated
// (DAPO's overlong filtering: they count in their group's advantages, not in the loss).
func (t *PolicyOptimizer) advantages(groups [][]*rollout) ([]*rollout, error) {
	rewards := make([][]float64, len(groups))
	for i, g := range groups {
		for _, r := range g {
			rewards[i] = append(rewards[i], r.reward)
		}
	}
	advCfg := t.Config.Advantage
	if advCfg.Estimator == EstimatorReinforcePPBaseline {
		advCfg.TokenCounts = make([][]int, len(groups))
		for i, g := range groups {
			for _, r := range g {
				advCfg.TokenCounts[i] = append(advCfg.TokenCounts[i], r.length())
			}
		}
	}
	adv, err := Advantages(rewards, advCfg)
	if err != nil {
		return nil, err
	}
	var all []*rollout
	for i, g := range groups {
		for j, r := range g {
			r.adv = adv[i][j]
			if r.length() > 0 && !(t.Config.MaskTruncated && r.truncated) {
				all = append(all, r)
			}
		}
	}
	return all, nil
}

// scoreRequests are the sequences (prompt + response) of rs, scored from the response on.
func scoreRequests(rs []*rollout) []engine.ScoreRequest {
	reqs := make([]engine.ScoreRequest, len(rs))
	for i, r := range rs {
		reqs[i] = engine.ScoreRequest{Tokens: append(append([]int32(nil), r.prompt.Tokens...), r.tokens...), Start: len(r.prompt.Tokens)}
	}
	return reqs
}

// logProbs sets the old (current policy) and reference log-probs of each response, at the
// rollout temperature.
func (t *PolicyOptimizer) logProbs(ctx context.Context, all []*rollout) error {
	reqs := scoreRequests(all)
	old, err := t.Policy.Model.Score(ctx, reqs, t.Config.Temperature)
	if err != nil {
		return fmt.Errorf("old log-probs: %w", err)
	}
	var ref []engine.ScoreResult
	if t.Reference != nil {
		if ref, err = t.Reference.Score(ctx, reqs, t.Config.Temperature); err != nil {
			return fmt.Errorf("reference log-probs: %w", err)
		}
	}
	for i, r := range all {
		r.old = f64(old[i].LogProbs)
		if ref != nil {
			r.ref = f64(ref[i].LogProbs)
		}
	}
	return nil
}

// mismatchSums are the sums behind the rollout-mismatch metrics over some responses' tokens.
type mismatchSums struct {
	N, K1, K3, Diff, DiffMax, WSum float64
	Above                          int
}

// rolloutMismatch writes into m how far the trainer's log-probs are from the rollout source's
// over the responses all (mismatch, then fill).
func rolloutMismatch(all []*rollout, tisCap float64, m *Metrics) error {
	s, err := mismatch(all, tisCap)
	if err != nil {
		return err
	}
	s.fill(tisCap, m)
	return nil
}

// mismatch sums how far the trainer's log-probs (old) are from the rollout source's over
// the tokens of the responses that report them (for verl's rollout_corr/kl and k3_kl,
// training/rollout_probs_diff_mean and _max) and, with TIS (tisCap > 0), its weights before
// truncation and how many are truncated; TIS needs every response's rollout log-probs.
func mismatch(all []*rollout, tisCap float64) (mismatchSums, error) {
	var s mismatchSums
	for i, r := range all {
		if r.rollout == nil {
			if tisCap > 0 {
				return s, fmt.Errorf("TIS (cap %g) needs the rollout log-probs, and the rollout source gave none for response %d (prompt kind %q)", tisCap, i, r.prompt.Kind)
			}
			continue
		}
		for k, old := range r.old {
			lr := old - r.rollout[k] // log(pi_trainer / pi_rollout)
			w := math.Exp(math.Max(-clampLogRatio, math.Min(clampLogRatio, lr)))
			s.K1 -= lr
			s.K3 += w - math.Log(w) - 1
			d := math.Abs(math.Exp(old) - math.Exp(r.rollout[k]))
			s.Diff += d
			s.DiffMax = max(s.DiffMax, d)
			if tisCap > 0 {
				s.WSum += w
				if w > tisCap {
					s.Above++
				}
			}
			s.N++
		}
	}
	return s, nil
}

// fill writes the rollout-mismatch metrics: means over the tokens, the largest difference and,
// with TIS, its weights' mean before truncation and the fraction truncated.
func (s mismatchSums) fill(tisCap float64, m *Metrics) {
	if s.N == 0 {
		return
	}
	n := s.N
	m.RolloutKL, m.RolloutK3KL, m.RolloutProbsDiffMean, m.RolloutProbsDiffMax = s.K1/n, s.K3/n, s.Diff/n, s.DiffMax
	if tisCap > 0 {
		m.TISWeightMean, m.TISFracTruncated = s.WSum/n, float64(s.Above)/n
	}
}

// policyUpdates shuffles the responses (seeded by Config.Seed and the step) and makes one
// optimizer step per mini-batch.
func (t *PolicyOptimizer) policyUpdates(ctx context.Context, all []*rollout, m *Metrics) error {
	cfg := t.Config
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(m.Step)))
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	var agg lossAgg
	for mb := 0; mb < cfg.MiniBatches; mb++ {
		part := all[mb*len(all)/cfg.MiniBatches : (mb+1)*len(all)/cfg.MiniBatches]
		if len(part) == 0 {
			continue
		}
		if err := t.miniBatch(ctx, part, mb, m, &agg); err != nil {
			return err
		}
	}
	if t.dp != nil {
		if err := t.dp.combineLoss(&agg, m); err != nil {
			return fmt.Errorf("grpo: step %d: %w", m.Step, err)
		}
	}
	agg.fill(m)
	return nil
}

// miniBatch accumulates the gradient of mini-batch mb over micro-batches of at most
// MicroBatchTokens tokens (one sequence at least) and makes an optimizer step.
func (t *PolicyOptimizer) miniBatch(ctx context.Context, part []*rollout, mb int, m *Metrics, agg *lossAgg) error {
	cfg := t.Config
	lc := cfg.Loss
	for _, r := range part {
		lc.TokenNorm += float64(r.length())
	}
	lc.SeqNorm = float64(len(part))
	if t.dp != nil { // the loss is normalised over the whole mini-batch; this rank trains its share
		part = localRollouts(part)
	}
	var red *overlapReduce // the gradient all-reduce overlapped with the last backward
	if t.dp != nil && t.dp.overlap && !t.Policy.OptimizerSharded() {
		red = t.dp.startGradReduce(t.Policy)
	}
	for lo, micro := 0, 0; lo < len(part); micro++ {
		hi, toks := lo, 0
		for hi < len(part) && (hi == lo || toks+len(part[hi].prompt.Tokens)+len(part[hi].tokens) <= cfg.MicroBatchTokens) {
			toks += len(part[hi].prompt.Tokens) + len(part[hi].tokens)
			hi++
		}
		if red != nil && hi == len(part) {
			t.Policy.SetGradReady(red.ready)
		}
		// Clip-Cov's random choice: seeded by the run, the step, the mini- and micro-batch.
		seed := cfg.Seed*1_000_003 + uint64(m.Step)*10_007 + uint64(mb)*101 + uint64(micro)
		// LoRA dropout's masks: keyed by the run's optimizer update and this rank's micro-batch.
		if err := t.Policy.SetDropoutKey(dropoutKey(m.Step, mb, cfg.MiniBatches, micro, t.dp)); err != nil {
			return fmt.Errorf("grpo: step %d: %w", m.Step, err)
		}
		if err := t.microStep(ctx, part[lo:hi], lc, seed, agg); err != nil {
			t.Policy.SetGradReady(nil)
			if red != nil {
				red.abandon()
			}
			return fmt.Errorf("grpo: step %d: update: %w", m.Step, err)
		}
		m.TrainTokens += toks
		lo = hi
	}
	if red != nil {
		if err := red.finish(); err != nil {
			return fmt.Errorf("grpo: step %d: mini-batch %d: %w", m.Step, mb, err)
		}
	} else if t.dp != nil && t.Policy.OptimizerSharded() { // Step reduce-scatters the gradients
		if err := t.dp.waitGrads(); err != nil {
			return fmt.Errorf("grpo: step %d: mini-batch %d: %w", m.Step, mb, err)
		}
	} else if t.dp != nil {
		if err := t.dp.allReduceGrads(t.Policy); err != nil {
			return fmt.Errorf("grpo: step %d: mini-batch %d: %w", m.Step, mb, err)
		}
	}
	st, err := t.Policy.Step()
	if err != nil {
		return fmt.Errorf("grpo: step %d: optimizer: %w", m.Step, err)
	}
	agg.gradNorm += st.GradNorm
	m.LR = st.LR
	m.OptimizerUpdates++
	return nil
}

// dropoutKey is the LoRA dropout key (engine.Trainer.SetDropoutKey) of micro-batch micro of
// mini-batch mb of GRPO step (1-based): the optimizer update (step-1)·miniBatches + mb, counted
// from the run's start (so a resumed run and a reference reset keep the sequence), and the
// micro-batch interleaved over the data-parallel ranks (micro·size + rank).
func dropoutKey(step, mb, miniBatches, micro int, dp *dataParallel) (uint64, uint64) {
	rank, size := 0, 1
	if dp != nil {
		rank, size = dp.rank, dp.size
	}
	return uint64(step-1)*uint64(miniBatches) + uint64(mb), uint64(micro*size + rank)
}

// microStep runs forward+backward of the policy loss on one micro-batch: through the one-pass
// LM head (ForwardBackwardTokens, TokenPolicyLoss) when the loss is a sum of per-token terms
// (LossConfig.PerToken), else with every log-prob at once (ForwardBackward, PolicyLoss).
func (t *PolicyOptimizer) microStep(ctx context.Context, part []*rollout, lc LossConfig, seed uint64, agg *lossAgg) error {
	perSeq, lengths := make([]float64, len(part)), make([]int, len(part))
	for i, r := range part {
		perSeq[i], lengths[i] = r.adv, len(r.tokens)
	}
	adv, err := BroadcastAdvantages(perSeq, lengths)
	if err != nil {
		return err
	}
	in := LossInput{OldLogProbs: make([][]float64, len(part)), Advantages: adv, Seed: seed}
	if t.Reference != nil {
		in.RefLogProbs = make([][]float64, len(part))
	}
	if lc.TISCap > 0 {
		in.RolloutLogProbs = make([][]float64, len(part))
	}
	for i, r := range part {
		in.OldLogProbs[i] = r.old
		if in.RefLogProbs != nil {
			in.RefLogProbs[i] = r.ref
		}
		if in.RolloutLogProbs != nil {
			in.RolloutLogProbs[i] = r.rollout
		}
	}
	if lc.PerToken() && !t.twoPassLoss {
		tl, err := NewTokenPolicyLoss(in, lc)
		if err != nil {
			return err
		}
		if _, err := t.Policy.ForwardBackwardTokens(ctx, scoreRequests(part), tl.TokenLoss()); err != nil {
			return err
		}
		out, err := tl.Output()
		if err != nil {
			return err
		}
		agg.add(out)
		agg.addByKind(part, out)
		return nil
	}
	loss := func(logp, ent [][]float64) (float64, [][]float64, [][]float64, error) {
		in := in
		in.LogProbs, in.Entropy = logp, ent
		out, err := PolicyLoss(in, lc)
		if err != nil {
			return 0, nil, nil, err
		}
		agg.add(out)
		agg.addByKind(part, out)
		return out.Loss, out.DLogProbs, out.DEntropy, nil
	}
	_, err = t.Policy.ForwardBackward(ctx, scoreRequests(part), loss)
	return err
}

// lossAgg sums loss metrics over micro-batches (weighted by tokens) and the gradient norms of
// the optimizer steps.
type lossAgg struct {
	loss, pg, kl, ent, clo, chi, dual, ccov, kcov, akl float64
	tokens, gradNorm                                   float64
	// per prompt kind: token count, entropy and reference-KL sums
	kindTokens, kindEnt, kindKL map[string]float64
	hasRef, hasEnt              bool
}

// addByKind adds a micro-batch's per-sequence sums of entropy and reference KL (over the
// tokens in the loss, as the step's own means) to their prompt kinds' sums.
func (a *lossAgg) addByKind(part []*rollout, out LossOutput) {
	if a.kindTokens == nil {
		a.kindTokens, a.kindEnt, a.kindKL = map[string]float64{}, map[string]float64{}, map[string]float64{}
	}
	a.hasEnt = a.hasEnt || out.SeqEntropy != nil
	a.hasRef = a.hasRef || out.SeqRefKL != nil
	for i, r := range part {
		kind := r.prompt.Kind
		a.kindTokens[kind] += float64(out.SeqTokens[i])
		if out.SeqEntropy != nil {
			a.kindEnt[kind] += out.SeqEntropy[i]
		}
		if out.SeqRefKL != nil {
			a.kindKL[kind] += out.SeqRefKL[i]
		}
	}
}

func (a *lossAgg) add(out LossOutput) {
	lm := out.Metrics
	n := float64(lm.Tokens)
	a.loss += out.Loss
	a.pg += lm.PGLoss
	a.kl += lm.RefKL * n
	a.ent += lm.EntropyMean * n
	a.clo += lm.ClipFracLow * n
	a.chi += lm.ClipFracHigh * n
	a.dual += lm.DualClipFrac * n
	a.ccov += lm.ClipCovFrac * n
	a.kcov += lm.KLCovFrac * n
	a.akl += lm.ApproxKL * n
	a.tokens += n
}

// fill writes the step's loss metrics: sums over its mini-batches for the losses (as verl),
// means over its tokens for the rest, the mean gradient norm over its optimizer steps.
func (a *lossAgg) fill(m *Metrics) {
	n := math.Max(1, a.tokens)
	m.Loss, m.PGLoss = a.loss, a.pg
	m.KL, m.Entropy = a.kl/n, a.ent/n
	m.ClipFracLow, m.ClipFracHigh, m.DualClipFrac = a.clo/n, a.chi/n, a.dual/n
	m.ClipFrac = m.ClipFracLow + m.ClipFracHigh
	m.ClipCovFrac, m.KLCovFrac, m.ApproxKL = a.ccov/n, a.kcov/n, a.akl/n
	m.GradNorm = a.gradNorm / float64(max(1, m.OptimizerUpdates))
	for kind, n := range a.kindTokens {
		if n == 0 {
			continue
		}
		if a.hasEnt {
			if m.EntropyByKind == nil {
				m.EntropyByKind = map[string]float64{}
			}
			m.EntropyByKind[kind] = a.kindEnt[kind] / n
		}
		if a.hasRef {
			if m.KLByKind == nil {
				m.KLByKind = map[string]float64{}
			}
			m.KLByKind[kind] = a.kindKL[kind] / n
		}
	}
}
