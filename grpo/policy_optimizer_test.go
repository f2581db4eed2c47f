package grpo

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// fixedPrompts cycles through a fixed list of prompts.
type fixedPrompts struct {
	ps  []Prompt
	pos int
}

func (f *fixedPrompts) Next(n int) ([]Prompt, error) {
	out := make([]Prompt, n)
	for i := range out {
		out[i] = f.ps[f.pos%len(f.ps)]
		f.pos++
	}
	return out, nil
}

func tinyPolicy(t *testing.T, lr float64) *engine.Trainer {
	t.Helper()
	c := &engine.Config{ModelType: "qwen2", VocabSize: 12, HiddenSize: 32, NumHiddenLayers: 2, NumAttentionHeads: 4,
		NumKeyValueHeads: 2, HeadDim: 8, IntermediateSize: 64, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 64, AttentionBias: true}
	m, err := engine.NewModel(c, cpu.New(), engine.RandomWeights(c, 3, 0.1), engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := engine.NewTrainer(m, engine.TrainOptions{Temperature: 1, Optimizer: engine.AdamWConfig{LR: lr, Beta2: 0.99, ClipNorm: 1}})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// decodeDigits renders token ids as text ("3 5 7").
func decodeDigits(ids []int32) string { return fmt.Sprint(ids) }

// countSevens rewards the fraction of response tokens equal to 7: a verifiable reward the
// policy can only raise by changing its distribution.
func countSevens(ids []int32) float64 {
	if len(ids) == 0 {
		return 0
	}
	n := 0
	for _, id := range ids {
		if id == 7 {
			n++
		}
	}
	return float64(n) / float64(len(ids))
}

// parseDigits reads back the token ids of decodeDigits' text.
func parseDigits(text string) []int32 {
	var ids []int32
	var cur int32
	in := false
	for _, ch := range text {
		if ch >= '0' && ch <= '9' {
			cur = cur*10 + int32(ch-'0')
			in = true
		} else if in {
			ids = append(ids, cur)
			cur, in = 0, false
		}
	}
	return ids
}

// smallConfig is the ProRL recipe at the size of the tests' tiny model.
func smallConfig() Config {
	c := DefaultConfig()
	c.PromptsPerStep, c.SamplesPerPrompt, c.MaxResponseTokens, c.MiniBatches = 16, 8, 64, 2
	return c
}

func newGRPO(t *testing.T, cfg Config, reward func([]int32) float64) (*PolicyOptimizer, *engine.Generator) {
	t.Helper()
	pol := tinyPolicy(t, 3e-2)
	gen, err := engine.NewGenerator(pol.Model, engine.GeneratorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	prompts := &fixedPrompts{ps: []Prompt{{Tokens: []int32{1, 2}, Kind: "toy"}, {Tokens: []int32{3}, Kind: "toy"}, {Tokens: []int32{4, 4, 5}, Kind: "toy"}}}
	// The reward sees tokens through the decoded text: parse it back.
	rw := func(_ context.Context, _ Prompt, text string) (float64, error) {
		return reward(parseDigits(text)), nil
	}
	tr, err := NewPolicyOptimizer(pol, EngineRollouts{Gen: gen}, prompts, rw, decodeDigits, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tr, gen
}

// TestGRPOLearnsToyReward: the whole loop (rollouts, rewards, advantages, old/ref log-probs,
// clipped loss, AdamW) raises a verifiable reward on a tiny random model.
func TestGRPOLearnsToyReward(t *testing.T) {
	cfg := smallConfig()
	cfg.PromptsPerStep, cfg.SamplesPerPrompt, cfg.MaxResponseTokens = 6, 8, 6
	cfg.Temperature = 1
	cfg.RefResetEvery = 10
	tr, gen := newGRPO(t, cfg, countSevens)
	defer gen.Close()
	var resets []int
	tr.OnReset = func(step int) error {
		resets = append(resets, step)
		if n := tr.Policy.OptimizerStep(); n != 0 {
			t.Errorf("optimizer step %d right after the reset at %d, want 0", n, step)
		}
		return nil
	}
	ctx := context.Background()
	var first, last float64
	for s := 0; s < 25; s++ {
		m, err := tr.Step(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s < 3 {
			first += m.RewardMean / 3
		}
		if s >= 22 {
			last += m.RewardMean / 3
		}
		if m.RefReset != (m.Step%10 == 0) {
			t.Errorf("step %d: ref reset %v", m.Step, m.RefReset)
		}
	}
	t.Logf("reward %.3f -> %.3f", first, last)
	if last < first+0.3 {
		t.Fatalf("reward went from %.3f to %.3f; GRPO should raise it by 0.3 or more", first, last)
	}
	if fmt.Sprint(resets) != "[10 20]" {
		t.Errorf("resets at %v, want [10 20]", resets)
	}
}

// TestDynamicSampling: groups with equal rewards are dropped, more rounds are sampled, and a
// step without any signal skips the update.
func TestDynamicSampling(t *testing.T) {
	cfg := smallConfig()
	cfg.PromptsPerStep, cfg.SamplesPerPrompt, cfg.MaxResponseTokens, cfg.MaxSamplingRounds = 3, 4, 3, 3
	tr, gen := newGRPO(t, cfg, func([]int32) float64 { return 1 })
	defer gen.Close()
	m, err := tr.Step(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !m.SkippedNoSignal || m.SamplingRounds != 3 || m.GroupsDropped != 9 || m.GroupsKept != 0 || m.OptimizerUpdates != 0 {
		t.Fatalf("constant reward: %+v", m)
	}
	// Without dynamic sampling the groups are kept (zero advantage) and the update runs.
	cfg.DynamicSampling = false
	tr2, gen2 := newGRPO(t, cfg, func([]int32) float64 { return 1 })
	defer gen2.Close()
	m, err = tr2.Step(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if m.SamplingRounds != 1 || m.GroupsKept != 3 || m.OptimizerUpdates != cfg.MiniBatches {
		t.Fatalf("without dynamic sampling: %+v", m)
	}
}

// TestConfigErrors: bad knobs are rejected with the field named.
func TestConfigErrors(t *testing.T) {
	for _, mod := range []func(*Config){
		func(c *Config) { c.SamplesPerPrompt = 1 },
		func(c *Config) { c.Temperature = 0 },
		func(c *Config) { c.MiniBatches = 0 },
		func(c *Config) { c.Loss.ClipLow = 1.5 },
	} {
		c := DefaultConfig()
		mod(&c)
		if err := c.validate(); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
}

// TestFirstUpdateIsOnPolicy: at the first micro-batch the policy is the rollout policy and the
// reference, so the ratio is 1 and the KL 0 (whatever the temperature).
func TestFirstUpdateIsOnPolicy(t *testing.T) {
	cfg := smallConfig()
	cfg.PromptsPerStep, cfg.SamplesPerPrompt, cfg.MaxResponseTokens, cfg.MiniBatches = 4, 4, 5, 1
	cfg.Temperature = 1.3
	cfg.DynamicSampling = false
	tr, gen := newGRPO(t, cfg, countSevens)
	defer gen.Close()
	m, err := tr.Step(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if m.KL > 1e-6 || m.ApproxKL > 1e-6 || m.ClipFracHigh != 0 || m.ClipFracLow != 0 {
		t.Fatalf("first update not on-policy: KL %g, approx KL %g, clip %g/%g", m.KL, m.ApproxKL, m.ClipFracLow, m.ClipFracHigh)
	}
}

// TestResetOnPlateau: a reset happens after P evaluations without a new best, and not before.
func TestResetOnPlateau(t *testing.T) {
	cfg := smallConfig()
	cfg.RefResetOnPlateau = 2
	tr, gen := newGRPO(t, cfg, countSevens)
	defer gen.Close()
	var resets int
	tr.OnReset = func(int) error { resets++; return nil }
	for i, tc := range []struct {
		acc   float64
		reset bool
	}{{0.2, false}, {0.3, false}, {0.25, false}, {0.3, true}, {0.31, false}, {0.1, false}, {0.2, true}} {
		m := &Metrics{}
		got, err := tr.AfterEval(&EvalResult{Accuracy: tc.acc}, m)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.reset || m.RefReset != tc.reset {
			t.Errorf("evaluation %d (accuracy %v): reset %v, want %v", i, tc.acc, got, tc.reset)
		}
	}
	if resets != 2 {
		t.Errorf("%d resets, want 2", resets)
	}
}

// TestPassAtK: the unbiased estimator against values worked by hand from 1 - C(n-c,k)/C(n,k).
func TestPassAtK(t *testing.T) {
	for _, tc := range []struct {
		n, c, k int
		want    float64
	}{
		{4, 0, 1, 0}, {4, 1, 1, 0.25}, {4, 1, 2, 0.5}, // 1 - C(3,2)/C(4,2) = 1 - 3/6
		{4, 1, 4, 1}, {4, 2, 2, 5.0 / 6}, // 1 - C(2,2)/C(4,2) = 1 - 1/6
		{8, 3, 4, 13.0 / 14},          // 1 - C(5,4)/C(8,4) = 1 - 5/70
		{10, 10, 1, 1}, {10, 2, 9, 1}, // fewer wrong than k: always a correct one
	} {
		if got := PassAtK(tc.n, tc.c, tc.k); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("pass@%d with %d of %d correct = %v, want %v", tc.k, tc.c, tc.n, got, tc.want)
		}
	}
	if !math.IsNaN(PassAtK(4, 1, 5)) {
		t.Error("k > n accepted")
	}
	if fmt.Sprint(passKs(8)) != "[1 2 4 8]" || fmt.Sprint(passKs(6)) != "[1 2 4 6]" || fmt.Sprint(passKs(1)) != "[1]" {
		t.Errorf("passKs: %v %v %v", passKs(8), passKs(6), passKs(1))
	}
}

// TestResumeMatchesUninterrupted: a run stopped after 3 steps and resumed from its saved
// weights, optimizer state, reference, trainer state and data position ends, after 3 more, at
// the same weights bit for bit as a run of 6 steps (a reference reset falls in between).
func TestResumeMatchesUninterrupted(t *testing.T) {
	cfg := smallConfig()
	cfg.PromptsPerStep, cfg.SamplesPerPrompt, cfg.MaxResponseTokens = 3, 4, 4
	cfg.RefResetEvery = 2
	cfg.Loss.KLCoef = 0.05 // make the reference matter
	ctx := context.Background()
	steps := func(tr *PolicyOptimizer, n int) {
		for i := 0; i < n; i++ {
			if _, err := tr.Step(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	full, gen := newGRPO(t, cfg, countSevens)
	defer gen.Close()
	steps(full, 6)
	want, _ := full.Policy.Model.HostWeights()

	first, gen1 := newGRPO(t, cfg, countSevens)
	defer gen1.Close()
	steps(first, 3)
	w, _ := first.Policy.Model.HostWeights()
	ref, _ := first.Reference.HostWeights()
	opt, err := first.Policy.OptimizerState()
	if err != nil {
		t.Fatal(err)
	}
	st, pos := first.State(), first.Prompts.(*fixedPrompts).pos

	second, gen2 := newGRPO(t, cfg, countSevens) // fresh weights, as a new process would have
	defer gen2.Close()
	if err := second.Policy.LoadWeights(w); err != nil {
		t.Fatal(err)
	}
	if err := second.Policy.LoadOptimizerState(opt); err != nil {
		t.Fatal(err)
	}
	if err := second.Restore(st, ref); err != nil {
		t.Fatal(err)
	}
	second.Prompts.(*fixedPrompts).pos = pos
	steps(second, 3)
	got, _ := second.Policy.Model.HostWeights()
	for name, wt := range want {
		for i, v := range wt.Data {
			if got[name].Data[i] != v {
				t.Fatalf("%s[%d]: resumed %v, uninterrupted %v", name, i, got[name].Data[i], v)
			}
		}
	}
	if fmt.Sprint(second.State().Resets) != "[2 4 6]" {
		t.Errorf("resets %v, want [2 4 6]", second.State().Resets)
	}
	if err := second.Restore(st, nil); err == nil {
		t.Error("restore without reference weights accepted for a run with a reference")
	}
}

// TestStepStages: Rollout leaves the step count and the policy alone, Update takes only the
// batch of the next step, and the two together are Step, bit for bit.
func TestStepStages(t *testing.T) {
	cfg := smallConfig()
	cfg.PromptsPerStep, cfg.SamplesPerPrompt, cfg.MaxResponseTokens = 3, 4, 4
	ctx := context.Background()
	staged, gen := newGRPO(t, cfg, countSevens)
	defer gen.Close()
	whole, gen2 := newGRPO(t, cfg, countSevens)
	defer gen2.Close()
	for s := 1; s <= 3; s++ {
		before, _ := staged.Policy.Model.HostWeights()
		b, err := staged.Rollout(ctx)
		if err != nil {
			t.Fatal(err)
		}
		after, _ := staged.Policy.Model.HostWeights()
		if b.Step != s || staged.StepNumber() != s-1 || fmt.Sprint(before) != fmt.Sprint(after) {
			t.Fatalf("rollout of step %d: batch for step %d, step count %d, weights changed %v", s, b.Step, staged.StepNumber(), fmt.Sprint(before) != fmt.Sprint(after))
		}
		stale := &RolloutBatch{Step: s + 1, Metrics: &Metrics{}}
		if _, err := staged.Update(ctx, stale); err == nil {
			t.Fatalf("an update for step %d accepted after step %d", s+1, s-1)
		}
		got, err := staged.Update(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		want, err := whole.Step(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got.Loss != want.Loss || got.RewardMean != want.RewardMean || got.GradNorm != want.GradNorm {
			t.Fatalf("step %d: staged loss %v reward %v grad norm %v, Step %v %v %v", s, got.Loss, got.RewardMean, got.GradNorm, want.Loss, want.RewardMean, want.GradNorm)
		}
		if _, err := staged.Update(ctx, b); err == nil {
			t.Fatalf("step %d: the same batch updated twice", s)
		}
	}
}

// TestDefaultConfigValid: the ProRL recipe passes its own checks.
func TestDefaultConfigValid(t *testing.T) {
	c := DefaultConfig()
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	if c.PromptsPerStep != 256 || c.SamplesPerPrompt != 16 || c.MiniBatches != 4 || c.Temperature != 1.2 {
		t.Errorf("not ProRL's recipe: %+v", c)
	}
}

// TestBatchReward: with a BatchReward, each rollout round's responses (and an evaluation's)
// are scored in one call, prompt by prompt, and the steps, the evaluation and the weights are
// those of the per-sample Reward, bit for bit.
func TestBatchReward(t *testing.T) {
	cfg := smallConfig()
	cfg.PromptsPerStep, cfg.SamplesPerPrompt, cfg.MaxResponseTokens, cfg.MaxSamplingRounds = 3, 4, 3, 3
	ctx := context.Background()
	single, gen := newGRPO(t, cfg, countSevens)
	defer gen.Close()
	batched, gen2 := newGRPO(t, cfg, countSevens)
	defer gen2.Close()
	var sizes []int
	var kinds []string
	batched.Reward = nil
	batched.BatchReward = func(_ context.Context, reqs []RewardRequest) ([]float64, error) {
		sizes = append(sizes, len(reqs))
		out := make([]float64, len(reqs))
		for i, q := range reqs {
			out[i] = countSevens(parseDigits(q.Response))
			if i%cfg.SamplesPerPrompt == 0 {
				kinds = append(kinds, fmt.Sprint(q.Prompt.Tokens))
			}
		}
		return out, nil
	}
	rounds := 0
	var wantKinds []string
	for s := 1; s <= 4; s++ {
		before := batched.Prompts.(*fixedPrompts).pos
		want, err := single.Step(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got, err := batched.Step(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := before; i < batched.Prompts.(*fixedPrompts).pos; i++ {
			wantKinds = append(wantKinds, fmt.Sprint(batched.Prompts.(*fixedPrompts).ps[i%3].Tokens))
		}
		rounds += got.SamplingRounds
		got.RolloutSeconds, got.RolloutTokensPS, got.TrainSeconds, got.TrainTokensPS = 0, 0, 0, 0
		want.RolloutSeconds, want.RolloutTokensPS, want.TrainSeconds, want.TrainTokensPS = 0, 0, 0, 0
		if fmt.Sprintf("%+v", *got) != fmt.Sprintf("%+v", *want) {
			t.Fatalf("step %d: batched %+v\nper sample %+v", s, *got, *want)
		}
	}
	if len(sizes) != rounds || rounds <= 4 || fmt.Sprint(kinds) != fmt.Sprint(wantKinds) {
		t.Fatalf("%d batch calls of sizes %v for %d rounds; prompts %v, want %v", len(sizes), sizes, rounds, kinds, wantKinds)
	}
	for _, n := range sizes {
		if n%cfg.SamplesPerPrompt != 0 {
			t.Errorf("a batch of %d responses: not whole groups", n)
		}
	}
	a, _ := single.Policy.Model.HostWeights()
	b, _ := batched.Policy.Model.HostWeights()
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Error("batched rewards end at other weights")
	}
	held := []Prompt{{Tokens: []int32{1, 2}, Kind: "toy"}, {Tokens: []int32{3}, Kind: "toy"}}
	calls := len(sizes)
	we, err := single.Evaluate(ctx, held, 4, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	ge, err := batched.Evaluate(ctx, held, 4, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%+v", *ge) != fmt.Sprintf("%+v", *we) || len(sizes) != calls+1 || sizes[calls] != 8 {
		t.Fatalf("evaluation: batched %+v, per sample %+v; batch sizes %v", *ge, *we, sizes[calls:])
	}
	batched.BatchReward = func(context.Context, []RewardRequest) ([]float64, error) { return []float64{1}, nil }
	if _, err := batched.Step(ctx); err == nil || !strings.Contains(err.Error(), "gave 1 rewards for 12 responses") {
		t.Errorf("a short answer: %v", err)
	}
}

// TestOverlongShaping: the reward shaping worked by hand with MaxResponseTokens 20 and
// penalty factor 0.5. Buffer 0 is the flat penalty of earlier runs (only a response cut at the
// limit); buffer 8 is DAPO's: 0 up to 20-8 = 12 tokens, (12 - len)/8 * 0.5 beyond, -0.5 at 20
// whether or not the response was cut there.
func TestOverlongShaping(t *testing.T) {
	cases := []struct {
		penalty   float64
		buffer    int
		length    int
		truncated bool
		want      float64
	}{
		{0.5, 0, 20, true, -0.5},
		{0.5, 0, 20, false, 0}, // stop token as the 20th token
		{0.5, 0, 10, false, 0},
		{0.5, 8, 12, false, 0},
		{0.5, 8, 13, false, (12 - 13) / 8.0 * 0.5},
		{0.5, 8, 16, false, -0.25},
		{0.5, 8, 20, true, -0.5},
		{0.5, 8, 20, false, -0.5},
		{0, 8, 20, true, 0},
	}
	for _, c := range cases {
		tr := &PolicyOptimizer{Config: Config{MaxResponseTokens: 20, OverlongPenalty: c.penalty, OverlongBuffer: c.buffer}}
		if got := tr.overlong(c.length, c.truncated); !near(got, c.want, 1e-15) {
			t.Errorf("penalty %v buffer %d length %d truncated %v: %v, want %v", c.penalty, c.buffer, c.length, c.truncated, got, c.want)
		}
	}
	for _, mod := range []func(*Config){
		func(c *Config) { c.OverlongBuffer = c.MaxResponseTokens },
		func(c *Config) { c.OverlongBuffer = -1 },
		func(c *Config) { c.OverlongPenalty = math.NaN() },
	} {
		c := smallConfig()
		mod(&c)
		if err := c.validate(); err == nil || !strings.Contains(err.Error(), "--overlong-") {
			t.Errorf("config %d/%v accepted (%v)", c.OverlongBuffer, c.OverlongPenalty, err)
		}
	}
}

// TestRolloutMismatchByHand: the mismatch metrics of two responses worked by hand. Response
// 0: trainer log-probs (-1, -2), rollout's (-1.5, -2): log ratios trainer/rollout 0.5 and 0.
// k1 = mean(rollout - trainer) = -0.25; k3 = mean(e^lr - lr - 1) = (e^0.5 - 1.5)/2;
// |p - p'| = |e^-1 - e^-1.5| and 0; TIS cap 1.5: weights e^0.5 (truncated) and 1.
// Response 1 has no rollout log-probs: left out, but an error with TIS.
func TestRolloutMismatchByHand(t *testing.T) {
	p := &Prompt{Kind: "toy"}
	all := []*rollout{{prompt: p, old: []float64{-1, -2}, rollout: []float64{-1.5, -2}}, {prompt: p, old: []float64{-3}}}
	var m Metrics
	if err := rolloutMismatch(all, 0, &m); err != nil {
		t.Fatal(err)
	}
	d := math.Exp(-1) - math.Exp(-1.5)
	if !near(m.RolloutKL, -0.25, 1e-15) || !near(m.RolloutK3KL, (math.Exp(0.5)-1.5)/2, 1e-15) ||
		!near(m.RolloutProbsDiffMean, d/2, 1e-15) || !near(m.RolloutProbsDiffMax, d, 1e-15) || m.TISWeightMean != 0 {
		t.Errorf("mismatch metrics %+v", m)
	}
	if err := rolloutMismatch(all, 1.5, &m); err == nil || !strings.Contains(err.Error(), "response 1") {
		t.Errorf("TIS without rollout log-probs: %v", err)
	}
	m = Metrics{}
	if err := rolloutMismatch(all[:1], 1.5, &m); err != nil || !near(m.TISWeightMean, (math.Exp(0.5)+1)/2, 1e-15) || m.TISFracTruncated != 0.5 {
		t.Errorf("TIS metrics %v %v (%v)", m.TISWeightMean, m.TISFracTruncated, err)
	}
}

// stripLogProbs is a rollout source whose samples carry no log-probs (or n of them).
type stripLogProbs struct {
	src RolloutSource
	n   int
}

func (s stripLogProbs) Rollout(ctx context.Context, prompts []Prompt, p engine.SamplingParams) ([][]engine.Sample, error) {
	out, err := s.src.Rollout(ctx, prompts, p)
	for _, ss := range out {
		for j := range ss {
			ss[j].LogProbs = ss[j].LogProbs[:min(s.n, len(ss[j].LogProbs))]
		}
	}
	return out, err
}

// TestStepLogsMismatchAndTIS: with the engine's rollouts the trainer logs the rollout/trainer
// mismatch (the engine's sampling and the training forward compute the same log-probs up to
// float32 rounding) and, with TIS on, weights near 1; without rollout log-probs TIS is an
// error, and log-probs that do not match the tokens are one in any case. The dual-clip
// fraction and pg_clipfrac are logged.
func TestStepLogsMismatchAndTIS(t *testing.T) {
	cfg := smallConfig()
	cfg.PromptsPerStep, cfg.SamplesPerPrompt, cfg.MaxResponseTokens = 3, 4, 5
	cfg.Loss.TISCap = 2
	ctx := context.Background()
	tr, gen := newGRPO(t, cfg, countSevens)
	defer gen.Close()
	for s := 1; s <= 3; s++ {
		m, err := tr.Step(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.SkippedNoSignal {
			continue
		}
		if math.Abs(m.RolloutKL) > 1e-4 || m.RolloutK3KL > 1e-6 || m.RolloutProbsDiffMax > 1e-4 || math.Abs(m.TISWeightMean-1) > 1e-4 || m.TISFracTruncated != 0 {
			t.Errorf("step %d: mismatch k1 %g k3 %g diff max %g, TIS mean %g truncated %g", s, m.RolloutKL, m.RolloutK3KL, m.RolloutProbsDiffMax, m.TISWeightMean, m.TISFracTruncated)
		}
		if m.ClipFrac != m.ClipFracLow+m.ClipFracHigh || m.DualClipFrac < 0 || m.DualClipFrac > 1 {
			t.Errorf("step %d: clip fractions %v = %v + %v, dual %v", s, m.ClipFrac, m.ClipFracLow, m.ClipFracHigh, m.DualClipFrac)
		}
	}
	tr.Rollouts = stripLogProbs{src: tr.Rollouts}
	if _, err := tr.Step(ctx); err == nil || !strings.Contains(err.Error(), "TIS (cap 2) needs the rollout log-probs") {
		t.Errorf("TIS without rollout log-probs: %v", err)
	}
	tr.Rollouts = stripLogProbs{src: tr.Rollouts.(stripLogProbs).src, n: 1}
	if _, err := tr.Step(ctx); err == nil || !strings.Contains(err.Error(), "log-probs for") {
		t.Errorf("short log-probs: %v", err)
	}
}

// TestMaskTruncated: with MaskTruncated, the responses cut at MaxResponseTokens are left out of
// the loss: the tokens trained are those of the others (prompt and response), while all count
// in the step's reward and length metrics.
func TestMaskTruncated(t *testing.T) {
	cfg := smallConfig()
	cfg.PromptsPerStep, cfg.SamplesPerPrompt, cfg.MaxResponseTokens, cfg.MiniBatches = 3, 8, 3, 1
	cfg.DynamicSampling, cfg.MaskTruncated = false, true
	cfg.StopTokens = []int32{7}
	ctx := context.Background()
	tr, gen := newGRPO(t, cfg, countSevens)
	defer gen.Close()
	b, err := tr.Rollout(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want, truncated := 0, 0
	for _, g := range b.groups {
		for _, r := range g {
			if r.truncated {
				truncated++
			} else {
				want += len(r.prompt.Tokens) + len(r.tokens)
			}
		}
	}
	if truncated == 0 || truncated == 24 {
		t.Fatalf("%d of 24 responses truncated: the test needs some of each", truncated)
	}
	m, err := tr.Update(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if m.TrainTokens != want || m.TruncatedFrac != float64(truncated)/24 {
		t.Errorf("trained %d tokens, want %d (the untruncated responses); truncated fraction %v", m.TrainTokens, want, m.TruncatedFrac)
	}
}

// TestClipCovRunIsSeeded: a Clip-Cov run that drops tokens is the same run twice with the same
// seed (weights bit for bit), and another run with another seed.
func TestClipCovRunIsSeeded(t *testing.T) {
	run := func(seed uint64) (string, float64) {
		cfg := smallConfig()
		cfg.PromptsPerStep, cfg.SamplesPerPrompt, cfg.MaxResponseTokens = 3, 4, 5
		cfg.DynamicSampling, cfg.Seed = false, seed
		cfg.Loss.Mode, cfg.Loss.ClipCovRatio, cfg.Loss.ClipCovLow, cfg.Loss.ClipCovHigh = PolicyClipCov, 0.2, -10, 10
		tr, gen := newGRPO(t, cfg, countSevens)
		defer gen.Close()
		var frac float64
		for range 2 {
			m, err := tr.Step(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			frac += m.ClipCovFrac
		}
		w, _ := tr.Policy.Model.HostWeights()
		return fmt.Sprint(w), frac
	}
	a, fa := run(1)
	b, _ := run(1)
	c, _ := run(2)
	if fa == 0 || a != b || a == c {
		t.Errorf("clip-cov fraction %v; same seed same weights %v; other seed other weights %v", fa, a == b, a != c)
	}
}

// TestMetricsByKind: the per-kind entropy, reference KL and response length of a step with
// prompts of two kinds average, weighted by each kind's tokens and responses, to the step's
// own Entropy, KL and ResponseLenMean (computed apart, by the loss and the rollout stats).
func TestMetricsByKind(t *testing.T) {
	cfg := smallConfig()
	cfg.PromptsPerStep, cfg.SamplesPerPrompt, cfg.MaxResponseTokens, cfg.DynamicSampling = 4, 4, 6, false
	cfg.Loss.KLCoef = 0.05
	pol := tinyPolicy(t, 3e-2)
	gen, err := engine.NewGenerator(pol.Model, engine.GeneratorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer gen.Close()
	prompts := &fixedPrompts{ps: []Prompt{{Tokens: []int32{1, 2}, Kind: "a"}, {Tokens: []int32{3}, Kind: "b"}}}
	rw := func(_ context.Context, _ Prompt, text string) (float64, error) {
		return countSevens(parseDigits(text)), nil
	}
	tr, err := NewPolicyOptimizer(pol, EngineRollouts{Gen: gen}, prompts, rw, decodeDigits, cfg)
	if err != nil {
		t.Fatal(err)
	}
	perKind := float64(cfg.PromptsPerStep / 2 * cfg.SamplesPerPrompt) // responses of each kind per step
	for s := 1; s <= 3; s++ {
		m, err := tr.Step(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(m.EntropyByKind) != 2 || len(m.KLByKind) != 2 || len(m.ResponseLenByKind) != 2 {
			t.Fatalf("step %d: by kind: entropy %v, KL %v, length %v; want kinds a and b in each", s, m.EntropyByKind, m.KLByKind, m.ResponseLenByKind)
		}
		var tokens, ent, kl float64
		for _, k := range []string{"a", "b"} {
			n := m.ResponseLenByKind[k] * perKind
			tokens += n
			ent += n * m.EntropyByKind[k]
			kl += n * m.KLByKind[k]
		}
		if got := tokens / (2 * perKind); math.Abs(got-m.ResponseLenMean) > 1e-12 {
			t.Errorf("step %d: response length by kind averages %v, step mean %v", s, got, m.ResponseLenMean)
		}
		if math.Abs(ent/tokens-m.Entropy) > 1e-9 || math.Abs(kl/tokens-m.KL) > 1e-9 {
			t.Errorf("step %d: by kind: entropy %v KL %v; the step's: %v %v", s, ent/tokens, kl/tokens, m.Entropy, m.KL)
		}
		if s > 1 && m.KL == 0 {
			t.Errorf("step %d: KL to the reference 0 after an update", s)
		}
	}
}
