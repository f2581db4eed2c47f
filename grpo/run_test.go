package grpo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// tinyRun is a run of the tests' tiny model on three digit prompts rewarded for sevens.
func tinyRun(t *testing.T, dir string, steps int) (RunConfig, JobFunc) {
	t.Helper()
	cfg := DefaultRunConfig()
	cfg.Dir, cfg.Steps, cfg.SaveEvery, cfg.Backend = dir, steps, 2, cpu.New()
	cfg.Trainer = smallConfig()
	cfg.Trainer.PromptsPerStep, cfg.Trainer.SamplesPerPrompt, cfg.Trainer.MaxResponseTokens = 2, 4, 4
	cfg.Trainer.RefResetEvery, cfg.Trainer.Loss.KLCoef = 3, 0.05
	cfg.Optimizer.LR = 3e-2
	cfg.Eval = EvalConfig{Every: 2, Samples: 2, Temperature: 0.6, TopP: 0.95}
	cfg.Settings = map[string]any{"note": "saved with the run"}
	job := func(context.Context, bool) (*Job, error) {
		c := tinyPolicy(t, 0).Model.Config
		var ps []Prompt
		for i := int32(1); i <= 5; i++ {
			ps = append(ps, Prompt{Tokens: []int32{i, i + 1}, Kind: "toy"})
		}
		rw := func(_ context.Context, _ Prompt, text string) (float64, error) {
			var ids []int32
			for _, f := range strings.Fields(strings.Trim(text, "[]")) { // decodeDigits' "[a b c]"
				n, _ := strconv.Atoi(f)
				ids = append(ids, int32(n))
			}
			return countSevens(ids), nil
		}
		return &Job{Model: c, Weights: engine.RandomWeights(c, 3, 0.1), Train: ps, Held: ps[:2],
			Reward: rw, Decode: decodeDigits, StopTokens: []int32{11}}, nil
	}
	return cfg, job
}

// TestRunResume: a run of 5 steps stopped after 3 (a run state at 2, metrics to 3) and
// resumed ends at the weights of an uninterrupted run, bit for bit, with each step logged once,
// exports after the reset at 3 and at the end, the settings saved, and the hooks called.
func TestRunResume(t *testing.T) {
	ctx := context.Background()
	fullDir, splitDir := t.TempDir(), t.TempDir()
	cfg, job := tinyRun(t, fullDir, 5)
	var evals []int
	var stepped int
	cfg.Hooks = RunHooks{
		Evaluated: func(step int, _ *EvalResult) { evals = append(evals, step) },
		Stepped:   func(*Metrics, *EvalResult) { stepped++ },
	}
	full, err := Run(ctx, cfg, job)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(evals) != "[0 2 4 5]" || stepped != 5 || full.Step != 5 || fmt.Sprint(full.Resets) != "[3]" || len(full.Exports) != 2 || full.First == nil {
		t.Fatalf("evaluations at %v, %d steps reported, result %+v", evals, stepped, full)
	}
	if _, err := Run(ctx, cfg, job); !errors.Is(err, ErrRunExists) {
		t.Fatalf("a second run into the same directory: %v", err)
	}
	checkRunEvents(t, fullDir, 1)

	cfg, job = tinyRun(t, splitDir, 3)
	if _, err := Run(ctx, cfg, job); err != nil {
		t.Fatal(err)
	}
	// The run state of step 3 is lost (a crash): resume from step 2, whose line 3 must go.
	os.RemoveAll(filepath.Join(splitDir, StateDir, checkpoints.StepDirName(3)))
	os.WriteFile(filepath.Join(splitDir, StateDir, "latest"), []byte(checkpoints.StepDirName(2)), 0o644)
	rp, err := LoadResumePoint(splitDir)
	if err != nil {
		t.Fatal(err)
	}
	var settings map[string]any
	if err := json.Unmarshal(rp.Settings, &settings); err != nil || rp.Step != 2 || settings["note"] != "saved with the run" {
		t.Fatalf("resume point: step %d, settings %s (%v)", rp.Step, rp.Settings, err)
	}
	cfg, job = tinyRun(t, splitDir, 5)
	cfg.Resume = rp
	split, err := Run(ctx, cfg, job)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(full.Exports[5], "model.safetensors"))
	b, _ := os.ReadFile(filepath.Join(split.Exports[5], "model.safetensors"))
	if len(a) == 0 || string(a) != string(b) {
		t.Fatal("the resumed run ends at other weights than the uninterrupted one")
	}
	recs, err := ReadMetrics(filepath.Join(splitDir, MetricsFile))
	if err != nil || len(recs) != 6 || recs[5].Step != 5 || split.First == nil || split.First.Accuracy != full.First.Accuracy {
		t.Fatalf("resumed run: %d records (%v), first evaluation %+v", len(recs), err, split.First)
	}
	checkRunEvents(t, splitDir, 2)
}

// TestPromptStreamLegacyPosition: a data position saved by tools/train's former stream
// (epochs started, position in the epoch) continues where that stream would have.
func TestPromptStreamLegacyPosition(t *testing.T) {
	ps := make([]Prompt, 7)
	for i := range ps {
		ps[i] = Prompt{Kind: fmt.Sprint(i)}
	}
	ref, _ := newPromptStream(ps, 5)
	ref.Next(10) // into the second epoch: 1 epoch done, 3 of the next handed out
	want, _ := ref.Next(9)
	s, _ := newPromptStream(ps, 5)
	if err := s.restore(json.RawMessage(`{"epoch":2,"pos":3,"prompts":7}`)); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Next(9)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("legacy position: %v, want %v", got, want)
	}
	if err := s.restore(json.RawMessage(`{"epoch":2,"pos":3,"prompts":8}`)); err == nil {
		t.Error("a position for another prompt count accepted")
	}
}

// TestRunBestExport: the evaluation that beats every earlier one has its policy exported to
// checkpoints/best (replacing an earlier best), with best.json naming its step. The reward is
// rigged by step: evaluations score 0 at steps 0 and 5, 0.5 at step 2 and 1 at step 4.
func TestRunBestExport(t *testing.T) {
	dir := t.TempDir()
	cfg, job := tinyRun(t, dir, 5)
	var cur atomic.Int64 // the step being run (and evaluated)
	cfg.Hooks.Stepped = func(m *Metrics, _ *EvalResult) { cur.Store(int64(m.Step) + 1) }
	cfg.Hooks.Training = func(first, _ int) { cur.Store(int64(first)) }
	rigged := func(ctx context.Context, resuming bool) (*Job, error) {
		j, err := job(ctx, resuming)
		if err != nil {
			return nil, err
		}
		j.Reward = func(_ context.Context, p Prompt, _ string) (float64, error) {
			switch cur.Load() {
			case 2:
				if p.Tokens[0] == 1 {
					return 1, nil
				}
			case 4:
				return 1, nil
			}
			return 0, nil
		}
		return j, nil
	}
	res, err := Run(context.Background(), cfg, rigged)
	if err != nil {
		t.Fatal(err)
	}
	if res.Best == nil || res.Best.Step != 4 || res.Best.Accuracy != 1 {
		t.Fatalf("best evaluation %+v, want step 4 at accuracy 1", res.Best)
	}
	best := filepath.Join(dir, "checkpoints", BestDir)
	for _, f := range []string{"model.safetensors", "config.json", "model.onnx", BestFile} {
		if _, err := os.Stat(filepath.Join(best, f)); err != nil {
			t.Fatal(err)
		}
	}
	var be BestEval
	if b, err := os.ReadFile(filepath.Join(best, BestFile)); err != nil || json.Unmarshal(b, &be) != nil || be != (BestEval{Step: 4, Accuracy: 1}) {
		t.Fatalf("%s: %+v (%v)", BestFile, be, err)
	}
	_, got, err := checkpoints.Load(best)
	if err != nil {
		t.Fatal(err)
	}
	st, err := checkpoints.LoadRunState(filepath.Join(dir, StateDir), 4)
	if err != nil {
		t.Fatal(err)
	}
	for name, w := range st.Weights {
		if fmt.Sprint(got[name].Data) != fmt.Sprint(w.Data) {
			t.Fatalf("best/ %s differs from the policy of step 4", name)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "checkpoints"))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if fmt.Sprint(names) != "[best step-000003 step-000005]" {
		t.Fatalf("checkpoints/ holds %v", names)
	}
}

// TestRunStartsAgain: a run directory whose run stopped before its first save (metrics.jsonl,
// no run state) is started again by a new run; one with a run state is ErrRunExists; resuming
// a missing directory is ErrNoRun, one without a state ErrNoRunState.
func TestRunStartsAgain(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := LoadResumePoint(filepath.Join(dir, "nothing")); !errors.Is(err, ErrNoRun) {
		t.Errorf("resume of a missing directory: %v, want ErrNoRun", err)
	}
	os.WriteFile(filepath.Join(dir, MetricsFile), []byte(`{"step":0}`+"\n"), 0o644)
	staleEvents(t, dir)
	if _, err := LoadResumePoint(dir); !errors.Is(err, ErrNoRunState) {
		t.Errorf("resume without a run state: %v, want ErrNoRunState", err)
	}
	cfg, job := tinyRun(t, dir, 2)
	if _, err := Run(ctx, cfg, job); err != nil {
		t.Fatalf("a run in a directory without a run state: %v", err)
	}
	recs, err := ReadMetrics(filepath.Join(dir, MetricsFile))
	if err != nil || len(recs) != 3 {
		t.Fatalf("metrics after starting again: %d records, %v", len(recs), err)
	}
	checkRunEvents(t, dir, 1) // the earlier run's event file is gone
	if _, err := Run(ctx, cfg, job); !errors.Is(err, ErrRunExists) {
		t.Errorf("a new run over a saved one: %v, want ErrRunExists", err)
	}
}

// TestResumeCorruptState: a corrupted latest run state is a RunStateError naming the other
// steps kept, and ResumeFrom continues from one of them.
func TestResumeCorruptState(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg, job := tinyRun(t, dir, 4)
	cfg.Keep = 3
	if _, err := Run(ctx, cfg, job); err != nil {
		t.Fatal(err)
	}
	w := filepath.Join(dir, StateDir, checkpoints.StepDirName(4), checkpoints.WeightsFile)
	b, _ := os.ReadFile(w)
	b[len(b)-1] ^= 0xff
	os.WriteFile(w, b, 0o644)
	_, err := LoadResumePoint(dir)
	var se *RunStateError
	if !errors.As(err, &se) || se.Step != 4 || fmt.Sprint(se.Kept) != "[2]" || !strings.Contains(err.Error(), w) {
		t.Fatalf("corrupted latest state: %v (%+v)", err, se)
	}
	rp, err := ResumeFrom(dir, 2)
	if err != nil || rp.Step != 2 {
		t.Fatalf("ResumeFrom the older step: %v", err)
	}
	cfg.Resume = rp
	if _, err := Run(ctx, cfg, job); err != nil {
		t.Fatalf("run resumed from the older step: %v", err)
	}
	if rp, err := LoadResumePoint(dir); err != nil || rp.Step != 4 {
		t.Fatalf("after the resumed run: %v", err)
	}
}

// TestPlotFailureKeepsSave: a plot that cannot be written (a directory in its place) does not
// stop the run or lose its run states.
func TestPlotFailureKeepsSave(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "reward.png"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, job := tinyRun(t, dir, 2)
	if _, err := Run(context.Background(), cfg, job); err != nil {
		t.Fatalf("a failing plot stopped the run: %v", err)
	}
	if rp, err := LoadResumePoint(dir); err != nil || rp.Step != 2 {
		t.Fatalf("run state after a failing plot: %v", err)
	}
}

// TestRunBatchReward: a job with only a BatchReward runs and ends at the weights of the same
// job rewarded one response at a time; a job with neither reward is refused.
func TestRunBatchReward(t *testing.T) {
	ctx := context.Background()
	cfg, job := tinyRun(t, t.TempDir(), 3)
	want, err := Run(ctx, cfg, job)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	cfg, job = tinyRun(t, t.TempDir(), 3)
	batchJob := func(ctx context.Context, resuming bool) (*Job, error) {
		j, err := job(ctx, resuming)
		if err != nil {
			return nil, err
		}
		rw := j.Reward
		j.Reward = nil
		j.BatchReward = func(ctx context.Context, reqs []RewardRequest) ([]float64, error) {
			calls++
			out := make([]float64, len(reqs))
			for i, q := range reqs {
				out[i], _ = rw(ctx, q.Prompt, q.Response)
			}
			return out, nil
		}
		return j, nil
	}
	got, err := Run(ctx, cfg, batchJob)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(want.Exports[3], "model.safetensors"))
	b, _ := os.ReadFile(filepath.Join(got.Exports[3], "model.safetensors"))
	if len(a) == 0 || string(a) != string(b) || calls < 3+3 { // a round per step at least, and 3 evaluations
		t.Fatalf("batched run: %d calls; same weights %v", calls, len(a) > 0 && string(a) == string(b))
	}
	cfg, job = tinyRun(t, t.TempDir(), 3)
	noReward := func(ctx context.Context, resuming bool) (*Job, error) {
		j, err := job(ctx, resuming)
		if j != nil {
			j.Reward = nil
		}
		return j, err
	}
	if _, err := Run(ctx, cfg, noReward); err == nil || !strings.Contains(err.Error(), "neither a Reward nor a BatchReward") {
		t.Fatalf("a job without a reward: %v", err)
	}
}

// weightsRecorder is a rollout source on its own copy of the weights (SnapshotRollouts) that
// records, for each training rollout round (by its seed), which step's weights generated it.
type weightsRecorder struct {
	SnapshotRollouts
	trainTemp float32
	syncs     int            // SyncWeights calls: the first sends the starting weights (step 0)
	used      map[uint64]int // rollout seed -> weights step
}

func (w *weightsRecorder) SyncWeights(ctx context.Context, p *engine.Model) error {
	w.syncs++
	return w.SnapshotRollouts.SyncWeights(ctx, p)
}

func (w *weightsRecorder) Rollout(ctx context.Context, ps []Prompt, p engine.SamplingParams) ([][]engine.Sample, error) {
	if p.Temperature == w.trainTemp {
		w.used[p.Seed] = w.syncs - 1
	}
	return w.SnapshotRollouts.Rollout(ctx, ps, p)
}

// TestRunOverlap: with Trainer.Overlap the rollouts of step s+1 are generated during the
// update of step s on the weights of step s-1 (checked by a source that records which weights
// each rollout round saw), except after a save (every 2 steps here) and the last step; the
// staleness and the rollout/trainer mismatch are logged each step; the run differs from the
// synchronous one, and a run stopped after 3 steps and resumed from its state at 2 ends at
// the uninterrupted overlapped run's weights, bit for bit.
func TestRunOverlap(t *testing.T) {
	ctx := context.Background()
	overlapped := func(dir string, steps int) (RunConfig, JobFunc, *weightsRecorder) {
		cfg, job := tinyRun(t, dir, steps)
		cfg.Trainer.Overlap, cfg.Trainer.Loss.TISCap = true, 2
		rec := &weightsRecorder{trainTemp: cfg.Trainer.Temperature, used: map[uint64]int{}}
		cfg.Rollouts = func(context.Context, *engine.Model) (RolloutSource, func(), error) { return rec, rec.Close, nil }
		return cfg, job, rec
	}
	fullDir, splitDir, syncDir := t.TempDir(), t.TempDir(), t.TempDir()
	cfg, job, rec := overlapped(fullDir, 5)
	full, err := Run(ctx, cfg, job)
	if err != nil {
		t.Fatal(err)
	}
	// Step s's rollout rounds have seeds from rolloutParams(s, 0) on; each used the weights of
	// step want[s-1].
	want := []int{0, 0, 2, 2, 4}
	for seed, used := range rec.used {
		var tc PolicyOptimizer
		tc.Config = cfg.Trainer
		s := int((seed-tc.rolloutParams(1, 0).Seed)/10_007) + 1
		if s < 1 || s > 5 || used != want[s-1] {
			t.Errorf("a rollout round of step %d (seed %d) used the weights of step %d, want %v by step", s, seed, used, want)
		}
	}
	if len(rec.used) < 5 {
		t.Errorf("%d rollout rounds recorded, want one per step at least", len(rec.used))
	}
	recs, err := ReadMetrics(filepath.Join(fullDir, MetricsFile))
	if err != nil || len(recs) != 6 {
		t.Fatalf("%d records (%v)", len(recs), err)
	}
	for s, r := range recs[1:] {
		// The copy generates with the trainer's numerics: fresh rollouts match its log-probs
		// exactly, stale ones do not (and TIS weighs them).
		if r.Staleness != s-want[s] || r.StepSeconds <= 0 || (r.RolloutK3KL > 0) != (r.Staleness == 1) || r.TISWeightMean <= 0 {
			t.Errorf("step %d: staleness %d, step time %v s, rollout k3 KL %g, TIS weight mean %g; want staleness %d, the KL above 0 when stale only",
				s+1, r.Staleness, r.StepSeconds, r.RolloutK3KL, r.TISWeightMean, s-want[s])
		}
	}

	cfg, job = tinyRun(t, syncDir, 5)
	sync, err := Run(ctx, cfg, job)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(full.Exports[5], "model.safetensors"))
	c, _ := os.ReadFile(filepath.Join(sync.Exports[5], "model.safetensors"))
	if len(a) == 0 || string(a) == string(c) {
		t.Fatal("the overlapped run ends at the synchronous run's weights: its rollouts were not stale")
	}

	cfg, job, _ = overlapped(splitDir, 3)
	if _, err := Run(ctx, cfg, job); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(splitDir, StateDir, checkpoints.StepDirName(3)))
	os.WriteFile(filepath.Join(splitDir, StateDir, "latest"), []byte(checkpoints.StepDirName(2)), 0o644)
	rp, err := LoadResumePoint(splitDir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, job, _ = overlapped(splitDir, 5)
	cfg.Resume = rp
	split, err := Run(ctx, cfg, job)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(split.Exports[5], "model.safetensors"))
	if string(a) != string(b) {
		t.Fatal("the resumed overlapped run ends at other weights than the uninterrupted one")
	}
}

// TestStepAheadErrors: overlapped rollouts are refused on a source that generates on the
// policy itself, and without Overlap; MaxStaleness is 0 or 1, Overlap needs 1; a batch more
// stale than MaxStaleness is not trained on.
func TestStepAheadErrors(t *testing.T) {
	ctx := context.Background()
	cfg := smallConfig()
	cfg.PromptsPerStep, cfg.SamplesPerPrompt, cfg.MaxResponseTokens = 2, 4, 4
	tr, gen := newGRPO(t, cfg, countSevens)
	defer gen.Close()
	if _, err := tr.StepAhead(ctx); err == nil || !strings.Contains(err.Error(), "needs Config.Overlap") {
		t.Errorf("StepAhead without Overlap: %v", err)
	}
	tr.Config.Overlap = true
	if _, err := tr.StepAhead(ctx); err == nil || !strings.Contains(err.Error(), "grpo.EngineRollouts generates on the policy being trained") {
		t.Errorf("StepAhead on the policy's own generator: %v", err)
	}
	for _, c := range []struct {
		overlap bool
		s       int
		want    string
	}{{false, 2, "--max-staleness 2: want 0 or 1 (rollouts run at most one step ahead)"}, {false, -1, "--max-staleness -1: want 0 or 1"}, {true, 0, "--overlap needs --max-staleness 1"}} {
		cfg.Overlap, cfg.MaxStaleness = c.overlap, c.s
		if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Overlap %v, MaxStaleness %d: %v, want %q", c.overlap, c.s, err, c.want)
		}
	}
	snap := &SnapshotRollouts{}
	defer snap.Close()
	if _, err := snap.Rollout(ctx, nil, engine.SamplingParams{}); err == nil || !strings.Contains(err.Error(), "SyncWeights first") {
		t.Errorf("snapshot rollouts before any weights: %v", err)
	}
	if err := snap.SyncWeights(ctx, tr.Policy.Model); err != nil {
		t.Fatal(err)
	}
	tr.Rollouts = snap
	if _, err := tr.StepAhead(ctx); err != nil {
		t.Fatal(err)
	}
	tr.Config.MaxStaleness = 0 // the batch of step 2 was generated on the weights of step 0
	if _, err := tr.Step(ctx); err == nil || !strings.Contains(err.Error(), "the batch for step 2 was generated with the weights of step 0: 1 steps stale, want 0 to MaxStaleness = 0") {
		t.Errorf("a batch beyond MaxStaleness: %v", err)
	}
}

// TestRunConfigErrorsNameFlags: a RunConfig out of range is refused with every knob at fault,
// each named by its flag (the knob's one definition, its tags), not by its Go field.
func TestRunConfigErrorsNameFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*RunConfig)
		want string
	}{
		{"eval every", func(c *RunConfig) { c.Eval.Every = 0 }, "grpo: run: --eval-every: must be >= 1, got 0"},
		{"save every", func(c *RunConfig) { c.SaveEvery = -1 }, "grpo: run: --save-every: must be >= 0, got -1"},
		{"top-p", func(c *RunConfig) { c.Trainer.TopP = 2 }, "grpo: run: --top-p: must be in [0, 1] (0: off), got 2"},
		{"samples", func(c *RunConfig) { c.Trainer.SamplesPerPrompt = 1 }, "grpo: run: --n: must be >= 2 (group advantages need a group), got 1"},
		{"lr", func(c *RunConfig) { c.Optimizer.LR = -1 }, "grpo: run: --lr: must be a finite value >= 0, got -1"},
		{"several", func(c *RunConfig) { c.Steps, c.Trainer.Loss.KLCoef, c.Eval.Samples = -1, -2, 0 },
			"grpo: run: --steps: must be >= 0, got -1\n--kl-coef: must be a finite value >= 0, got -2\n--eval-samples: must be >= 1, got 0"},
		{"mode's knobs only", func(c *RunConfig) { c.Trainer.Loss.GSPOClipLow = 5 }, ""},
		{"gspo", func(c *RunConfig) { c.Trainer.Loss.Mode, c.Trainer.Loss.GSPOClipLow = PolicyGSPO, 5 }, "grpo: run: --gspo-clip-low: must be in [0, 1), got 5"},
		{"estimator", func(c *RunConfig) { c.Trainer.Advantage.Estimator = "ppo" }, `grpo: run: --adv-estimator "ppo": want grpo, rloo or reinforce_plus_plus_baseline`},
	} {
		cfg := DefaultRunConfig()
		cfg.Dir, cfg.Backend = t.TempDir(), cpu.New()
		tc.mod(&cfg)
		err := cfg.validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || err.Error() != tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestDefaultRunConfigIsProRL: the default tags give the ProRL recipe, worked out by hand from
// ../shared/docs/prorl.md and verl's defaults.
func TestDefaultRunConfigIsProRL(t *testing.T) {
	got := DefaultRunConfig()
	want := RunConfig{Steps: 1000, SaveEvery: 50, Keep: 2,
		Trainer: Config{Seed: 1, PromptsPerStep: 256, SamplesPerPrompt: 16, Temperature: 1.2, TopP: 1, MaxResponseTokens: 8192,
			MiniBatches: 4, MicroBatchTokens: 4096, DynamicSampling: true, MaxSamplingRounds: 4, RefResetEvery: 100, MaxStaleness: 1,
			Loss: LossConfig{Mode: PolicyGRPO, ClipLow: 0.2, ClipHigh: 0.4, DualClip: 3, GSPOClipLow: 3e-4, GSPOClipHigh: 4e-4,
				ClipCovRatio: 2e-4, ClipCovLow: 1, ClipCovHigh: 5, KLCovRatio: 2e-3, KLCovCoef: 1, KLCoef: 1e-4, KL: KLK3, Agg: AggTokenMean},
			Advantage: AdvantageConfig{Estimator: EstimatorGRPO}},
		Optimizer: engine.AdamWConfig{LR: 2e-6, Beta1: 0.9, Beta2: 0.999, WeightDecay: 0.01, NoDecay1D: true, ClipNorm: 1},
		KV:        KVConfig{DType: "auto", Memory: "auto"},
		// Full fine-tuning (LoRA rank 0); PEFT's all-linear targets and a common alpha for --lora-rank.
		LoRA: LoRAConfig{Alpha: 16, Targets: []string{"all-linear"}, BaseDType: "auto"},
		Eval: EvalConfig{Every: 25, Samples: 16, Temperature: 0.6, TopP: 0.95}, Dist: "auto", DistTimeout: 10 * time.Minute, GradOverlap: true}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Errorf("DefaultRunConfig\n got %+v\nwant %+v", got, want)
	}
}
