package grpo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/dist"
	"github.com/prolong-rl/prolong/grpo/knob"
)

// A run directory holds:
//
//	metrics.jsonl                 one line per step (+ the step-0 evaluation)
//	events.out.tfevents.*         the same numbers for TensorBoard, a file per session (OpenRunLog)
//	*.png                         plots, redrawn at every evaluation
//	tokenizer/                    the run's tokenizer (Job.TokenizerFiles)
//	checkpoints/step-NNNNNN/      exports after each reference reset and at the end:
//	                              model.safetensors, config.json, generation_config.json,
//	                              tokenizer files, model.onnx
//	checkpoints/best/             the same export of the policy at the held-out evaluation that
//	                              scored best (above the starting model's), replaced atomically
//	                              by each better one, with best.json (BestFile) naming its step
//	state/                        run states to resume from (checkpoints.SaveRunState)
//	dist/rank-N                   data-parallel runs: each rank's heartbeat and last collective,
//	                              read when a collective times out (docs/distributed.md)
const (
	// MetricsFile is the run directory's metrics log.
	MetricsFile = "metrics.jsonl"
	// StateDir is the run directory's folder of run states.
	StateDir = "state"
	// BestDir is the folder, under the run directory's checkpoints/, of the export of the
	// best-scoring evaluation's policy.
	BestDir = "best"
	// BestFile is the file in BestDir that names its step and accuracy (a BestEval).
	BestFile = "best.json"
)

// Keys of what a run state carries besides weights, optimizer and data position.
const (
	settingsKey = "flags" // RunConfig.Settings (the name is tools/train's, which saved its flags there)
	trainerKey  = "trainer"
)

// Errors of starting and resuming runs, for a program to say what to do (errors.Is).
var (
	// ErrRunExists is returned by Run for a new run in a directory that holds a saved run
	// state (a directory whose earlier run stopped before its first save is started again).
	ErrRunExists = errors.New("the run directory already holds a run")
	// ErrNoRun is returned by LoadResumePoint for a directory that does not exist.
	ErrNoRun = errors.New("no run directory")
	// ErrNoRunState is returned by LoadResumePoint for a run directory without a saved run
	// state: its run stopped before its first save.
	ErrNoRunState = errors.New("no saved run state")
)

// RunConfig is everything a training run needs besides its Job: the GRPO step, the policy's
// optimizer, the run's length, held-out evaluation, and where and how often it saves.
// DefaultRunConfig gives the ProRL recipe. Each knob (here and in the nested configurations) is
// defined once, by its tags (package grpo/knob): its flag name, default, range and help;
// tools/train's flags, config-file keys, saved flags and --help are derived from them.
type RunConfig struct {
	// Dir is the run directory.
	Dir string
	// Resume continues the run saved in Dir (LoadResumePoint); nil starts a new run there.
	Resume *ResumePoint
	// Steps is the number of GRPO steps in all; a resumed run continues up to it.
	Steps int `flag:"steps" default:"1000" check:">=0" help:"GRPO steps in all"`
	// SaveEvery saves a run state every so many steps and at the end; 0: only at the end.
	SaveEvery int `flag:"save-every" default:"50" check:">=0" help:"save a run state (weights, reference, optimizer, data position) every so many steps and at the end; 0: only at the end"`
	// Keep is the number of run states kept (checkpoints.SaveRunOptions).
	Keep int `flag:"keep" default:"2" check:">=0" help:"run states kept (the oldest are removed after a save)"`
	// Trainer is the GRPO step; its rollout temperature is also the policy's log-prob
	// temperature. Its StopTokens are replaced by the job's when the job has some.
	Trainer Config
	// Optimizer is the policy's AdamW (its knobs' tags are in package engine; their defaults
	// are DefaultRunConfig's). WarmupSteps > 0 replaces its schedule by a linear warm-up over
	// that many optimizer steps.
	Optimizer   engine.AdamWConfig
	WarmupSteps int `flag:"warmup" check:">=0" help:"optimizer steps of linear learning-rate warm-up"`
	// Recompute recomputes each layer's activations in the backward pass.
	Recompute bool `flag:"recompute" help:"recompute each layer's activations in the backward pass (less memory, ~1/3 more compute)"`
	// KV is the KV cache of the engine's in-process rollouts.
	KV KVConfig
	// LoRA trains adapters on a frozen base instead of every weight (LoRA.Rank > 0).
	LoRA LoRAConfig
	// Freeze lists regular expressions over HF weight names not to train.
	Freeze []string `flag:"freeze" help:"regular expressions over HF weight names not to train (e.g. '^model\\.embed_tokens\\.')"`
	// Eval is the held-out evaluation.
	Eval EvalConfig
	// Backend holds the policy (and the reference); required.
	Backend engine.Backend
	// EvalOnly evaluates the starting model and stops: no GRPO step, no metrics, no run state.
	EvalOnly bool
	// Settings are saved (as JSON) with every run state, for the program to resume with the
	// same settings (ResumePoint.Settings).
	Settings any
	// Rollouts makes the rollout source for the policy; nil: the engine's continuous-batching
	// generator on the policy itself (on a copy, SnapshotRollouts, with Trainer.Overlap). A
	// source that is a WeightSync gets the policy's weights before the first evaluation and
	// after every step.
	//
	// With Trainer.Overlap the rollouts of step s+1 are generated during the update of step s
	// (PolicyOptimizer.StepAhead), except after the last step and after a step that saves a run
	// state: the step after a save generates its rollouts on that step's weights, so that a
	// run resumed from the save goes on exactly as the uninterrupted run (a run resumed from
	// its final state with more Steps goes on as if that step had been a save in the longer
	// run).
	Rollouts func(ctx context.Context, policy *engine.Model) (RolloutSource, func(), error)
	// Hooks let a program follow the run (progress, printing); each may be nil.
	Hooks RunHooks
	// Dist is how the ranks of a data-parallel run talk (OpenCluster); DistTimeout bounds each
	// collective: past it every rank ends, naming the rank that is behind and the last step
	// saved.
	Dist        dist.Mode     `flag:"dist" default:"auto" help:"data-parallel training: auto (MPI under an MPI launcher: mpirun, mpiexec, srun --mpi=pmix; NCCL under torchrun-style variables with a GPU device), off, mpi, nccl (NCCL on the GPU, host buffers staged through it; unverified on GPUs); every rank trains its share of each step's prompts (docs/distributed.md)"`
	DistTimeout time.Duration `flag:"dist-timeout" default:"10m" check:">0" help:"data-parallel training: how long a rank waits for the others in a collective before the job ends (naming the rank that is behind and the last step saved)"`
	// ShardOptimizer shards the policy's AdamW moments over the ranks of a data-parallel run
	// (ZeRO-1, shard.go); it needs several ranks.
	ShardOptimizer bool `flag:"shard-optimizer" help:"data-parallel training: shard the AdamW moments over the ranks (ZeRO-1: reduce-scatter the gradients, each rank updates its shard, all-gather the weights); each rank saves its own shard; a resume on another number of ranks re-shards (docs/distributed.md)"`
	// GradOverlap sums the gradients over the ranks bucket by bucket during the last
	// micro-batch's backward (dist_overlap.go) instead of after it.
	GradOverlap bool `flag:"grad-overlap" default:"true" help:"data-parallel training: all-reduce the gradients in buckets while the backward runs (as PyTorch DDP), instead of after it; the weights are the same either way"`
	// Cluster is this process's place in a data-parallel run (OpenCluster); nil or one rank: a
	// single process. Rank 0 alone writes the run directory.
	Cluster *Cluster
}

// RunHooks are callbacks through which a program follows a run.
type RunHooks struct {
	// Evaluated is called after each held-out evaluation; step 0 is the starting model.
	Evaluated func(step int, res *EvalResult)
	// Training is called before the first GRPO step of this session with the steps it runs.
	Training func(first, last int)
	// Stepped is called after each step is logged (and saved): its metrics and the latest
	// held-out evaluation (nil without held-out prompts).
	Stepped func(m *Metrics, lastEval *EvalResult)
}

// DefaultRunConfig is the ProRL recipe, the default tags of RunConfig's knobs (DefaultConfig
// for the step; 1000 steps, evaluating every 25 with 16 samples at temperature 0.6, top-p 0.95,
// saving every 50 and keeping 2 run states) and AdamW at 2e-6, betas 0.9/0.999, weight decay
// 0.01 off norms and biases, gradient norm clipped at 1.
func DefaultRunConfig() RunConfig {
	var c RunConfig
	knob.Defaults(&c)
	c.Optimizer = engine.AdamWConfig{LR: 2e-6, Beta1: 0.9, Beta2: 0.999, WeightDecay: 0.01, NoDecay1D: true, ClipNorm: 1}
	return c
}

// CheckKnobs checks every knob of c and of its nested configurations (their range tags, and
// the rules between knobs) and returns all those out of range, each error naming its flag
// (knob.Checker): "--eval-every: must be >= 1, got 0".
func (c *RunConfig) CheckKnobs() error {
	var errs []error
	if _, err := dist.ParseMode(string(c.Dist)); err != nil && c.Dist != "" {
		errs = append(errs, fmt.Errorf("--dist %q: want auto, off or mpi", string(c.Dist)))
	}
	return errors.Join(append([]error{knob.Check(c)}, errs...)...)
}

func (c *RunConfig) validate() error {
	switch {
	case c.Dir == "":
		return errors.New("grpo: run: RunConfig.Dir is empty")
	case c.Backend == nil:
		return errors.New("grpo: run: RunConfig.Backend is nil")
	}
	if err := c.CheckKnobs(); err != nil {
		return fmt.Errorf("grpo: run: %w", err)
	}
	if err := c.LoRA.check(); err != nil {
		return fmt.Errorf("grpo: run: %w", err)
	}
	if c.ShardOptimizer && c.Cluster.Size() < 2 {
		return errors.New("grpo: run: --shard-optimizer shards the optimizer over the ranks of a data-parallel run, and this run has one process: start it under mpirun -np N (--dist auto or mpi), or leave out --shard-optimizer")
	}
	if c.ShardOptimizer && c.LoRA.Rank > 0 {
		// The adapters' optimizer state is small (the reason for LoRA); its sharded
		// checkpoints are not written yet.
		return fmt.Errorf("grpo: run: --shard-optimizer with --lora-rank %d is not supported: LoRA's optimizer state is the adapters' only; leave out --shard-optimizer", c.LoRA.Rank)
	}
	if c.Trainer.Overlap && c.Cluster.Size() > 1 {
		return fmt.Errorf("grpo: run: overlapped rollouts (--overlap) are not available in a data-parallel run (%d ranks): use --overlap off", c.Cluster.Size())
	}
	return nil
}

// Job is what a run trains on: the starting model, the prompts, and how responses are
// decoded and rewarded.
type Job struct {
	Model   *engine.Config
	Weights map[string]engine.HostTensor // starting weights (not needed when resuming)
	// Train are the training prompts, streamed in a seeded order reshuffled every epoch
	// (grpo/data.Stream, seeded by Trainer.Seed); Held the held-out ones (none: no evaluation).
	Train, Held []Prompt
	// Reward scores one response; BatchReward, when set, scores a whole rollout round or
	// evaluation in one call and is used instead (one of the two is needed).
	Reward      RewardFunc
	BatchReward BatchRewardFunc
	Decode      func([]int32) string
	// StopTokens end a response (the model's end-of-sequence ids).
	StopTokens []int32
	// MaxResponseTokens, when above 0, replaces the run's Trainer.MaxResponseTokens (a job
	// that fits responses into the model's context).
	MaxResponseTokens int
	// Close, when set, is called when the run ends (a reward program's process).
	Close func() error
	// BaseModel names the starting model in a LoRA adapter's adapter_config.json
	// (base_model_name_or_path): the --model given, a Hugging Face id or a path.
	BaseModel string
	// StoredBF16 says the starting model's weights were stored as bf16 (config.json's
	// torch_dtype): a LoRA run then holds its frozen base in bf16 (LoRAConfig.BaseDType auto).
	StoredBF16 bool
	// TokenizerFiles writes the tokenizer into a directory: the run's tokenizer/ and every
	// export, so that each is a whole Hugging Face model directory. nil: none.
	TokenizerFiles func(dir string) error
}

// JobFunc builds a run's job once Run has checked the run directory; resuming says that the
// weights will come from the run state (a job need not make them).
type JobFunc func(ctx context.Context, resuming bool) (*Job, error)

// RunResult is what a run ends with.
type RunResult struct {
	// First and Last are the held-out evaluations of the starting model and the latest one
	// (nil without held-out prompts).
	First, Last *EvalResult
	// Step is the last completed step; Resets the steps at which the reference was reset.
	Step   int
	Resets []int
	// Exports are the checkpoint directories written in this session, by step.
	Exports map[int]string
	// Best is the held-out evaluation with the highest accuracy so far (the first of equals;
	// nil without held-out prompts). When its step is above 0, its policy is exported under
	// checkpoints/best.
	Best *BestEval
}

// WeightSync is a RolloutSource that generates with its own copy of the weights (rollout
// servers): Run sends it the policy's weights before the first evaluation and after each step.
type WeightSync interface {
	SyncWeights(ctx context.Context, policy *engine.Model) error
}

// runSession is a run in progress.
type runSession struct {
	dp       *dataParallel // nil for a single process
	cfg      RunConfig
	job      *Job
	policy   *engine.Trainer
	rollouts RolloutSource
	trainer  *PolicyOptimizer
	stream   *promptStream
	evals    savedEvals
	exported map[int]string
	shards   *optimizerShards // the optimizer shards of the save in progress (sharded runs)
}

// Run trains: a new run in cfg.Dir, or (cfg.Resume) the continuation of the one there. It
// checks the directory, builds the job with newJob, evaluates the starting model, then runs
// GRPO steps up to cfg.Steps, evaluating every Eval.Every steps and at the end, logging
// metrics.jsonl and its plots, saving a run state every SaveEvery steps and at the end, and
// exporting the policy after each reference reset and at the end, and to checkpoints/best
// after each evaluation that beats every earlier one.
func Run(ctx context.Context, cfg RunConfig, newJob JobFunc) (*RunResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var dp *dataParallel
	if c := cfg.Cluster; c != nil {
		dp = newDataParallel(c.Comm, c.mon)
		if dp != nil {
			dp.overlap = cfg.GradOverlap
		}
	}
	var err error
	if cfg.Resume == nil && (dp == nil || dp.rank == 0) {
		err = startOver(cfg.Dir)
	}
	if err == nil {
		err = os.MkdirAll(cfg.Dir, 0o755)
	}
	if dp != nil {
		if err = dp.agree("starting the run directory", err); err == nil && dp.mon != nil {
			err = dp.mon.start(cfg.Dir)
		}
	}
	if err != nil {
		return nil, err
	}
	// In a data-parallel run, rank 0 builds the starting weights and the others receive them.
	job, err := newJob(ctx, cfg.Resume != nil || (dp != nil && dp.rank != 0))
	if dp != nil {
		err = dp.agree("building the job", err)
	}
	if err != nil {
		return nil, err
	}
	if job.Close != nil {
		defer job.Close()
	}
	if dp != nil && cfg.Resume == nil {
		if job.Weights, err = dp.broadcastWeights(job.Weights); err != nil {
			return nil, err
		}
	}
	r, closeRollouts, err := newRunSession(ctx, cfg, job, dp)
	if dp != nil {
		err = dp.agree("starting the session", err)
	}
	if err != nil {
		if closeRollouts != nil {
			closeRollouts()
		}
		return nil, err
	}
	defer closeRollouts()
	if cfg.Resume == nil {
		if err := r.evaluateStart(ctx); err != nil {
			return nil, err
		}
	}
	if !cfg.EvalOnly {
		if err := r.train(ctx); err != nil {
			return nil, err
		}
	}
	return &RunResult{First: r.evals.First, Last: r.evals.Last, Step: r.trainer.StepNumber(), Resets: r.trainer.State().Resets, Exports: r.exported, Best: r.evals.Best}, nil
}

// newRunSession puts the job's model (or the run state's) on the backend as the policy and
// builds the rollout source and the trainer, restored to the run state when resuming.
func newRunSession(ctx context.Context, cfg RunConfig, job *Job, dp *dataParallel) (*runSession, func(), error) {
	r := &runSession{cfg: cfg, job: job, exported: map[int]string{}, dp: dp}
	if r.writes() {
		if err := runTokenizer(cfg, job); err != nil {
			return nil, nil, err
		}
		removeStaleExports(cfg.Dir)
	}
	var err error
	if r.policy, err = newPolicy(cfg, job, dp); err != nil {
		return nil, nil, err
	}
	if err := r.ensureBase(); err != nil {
		return nil, nil, err
	}
	if err := r.restoreShard(); err != nil {
		return nil, nil, err
	}
	closeRollouts := func() {}
	if r.rollouts, closeRollouts, err = newRolloutSource(ctx, cfg, r.policy.Model, dp); err != nil {
		return nil, nil, err
	}
	if err := r.newTrainer(); err != nil {
		closeRollouts()
		return nil, nil, err
	}
	if cfg.Resume != nil {
		if err := r.restore(cfg.Resume.state); err != nil {
			closeRollouts()
			return nil, nil, fmt.Errorf("resume: run state of step %d: %w", cfg.Resume.Step, err)
		}
	}
	return r, closeRollouts, nil
}

// newPolicy makes the starting weights (the run state's when resuming) trainable on the
// backend, with the run's optimizer (and its saved state when resuming). With
// --shard-optimizer the optimizer is sharded over dp's ranks from the start
// (engine.TrainOptions.Shard); restoreShard then loads a sharded run state's shards.
func newPolicy(cfg RunConfig, job *Job, dp *dataParallel) (*engine.Trainer, error) {
	mc, weights := job.Model, job.Weights
	if cfg.Resume != nil {
		mc, weights = cfg.Resume.state.Config, cfg.Resume.state.Weights
	}
	m, err := engine.NewModel(mc, cfg.Backend, weights, cfg.LoRA.baseDType(job))
	if err != nil {
		return nil, err
	}
	opt := cfg.Optimizer
	if cfg.WarmupSteps > 0 {
		opt.Schedule = engine.LinearWarmup(cfg.WarmupSteps)
	}
	// The log-prob temperature is the rollout temperature: NewPolicyOptimizer sets it from Trainer.
	topts := engine.TrainOptions{Optimizer: opt, Freeze: cfg.Freeze, Recompute: cfg.Recompute}
	if cfg.ShardOptimizer && dp != nil {
		topts.Shard = shardComm{dp} // ZeRO-1 (shard.go)
	}
	if cfg.LoRA.Rank > 0 {
		topts.LoRA = cfg.LoRA.engineLoRA(cfg.Trainer.Seed)
		if cfg.Resume != nil {
			if topts.LoRAInit = cfg.Resume.state.Adapters; topts.LoRAInit == nil {
				return nil, fmt.Errorf("resume: --lora-rank %d, but the run state holds no adapters (a full fine-tuning run)", cfg.LoRA.Rank)
			}
		} else if topts.LoRAInit, err = cfg.LoRA.loraInit(mc); err != nil {
			return nil, err
		}
	} else if cfg.Resume != nil && cfg.Resume.state.Adapters != nil {
		return nil, fmt.Errorf("resume: the run state holds LoRA adapters, but --lora-rank is 0")
	}
	policy, err := engine.NewTrainer(m, topts)
	if err != nil {
		return nil, err
	}
	if s := cfg.Resume; s != nil && s.state.Optimizer != nil {
		o := s.state.Optimizer
		if err := policy.LoadOptimizerState(&engine.OptimizerState{Step: int(o.Step), M: o.Groups["m"], V: o.Groups["v"]}); err != nil {
			return nil, fmt.Errorf("resume: optimizer state: %w", err)
		}
	}
	return policy, nil
}

// newRolloutSource makes the run's rollout source and gives it the policy's weights.
func newRolloutSource(ctx context.Context, cfg RunConfig, policy *engine.Model, dp *dataParallel) (RolloutSource, func(), error) {
	var rs RolloutSource
	var closeRollouts func()
	switch {
	case cfg.Rollouts != nil:
		var err error
		if rs, closeRollouts, err = cfg.Rollouts(ctx, policy); err != nil {
			return nil, nil, err
		}
	case cfg.Trainer.Overlap: // the engine generates on its own copy while the policy trains
		opts, err := cfg.KV.GeneratorOptions()
		if err != nil {
			return nil, nil, err
		}
		s := &SnapshotRollouts{Options: opts}
		rs, closeRollouts = s, s.Close
	default:
		opts, err := cfg.KV.GeneratorOptions()
		if err != nil {
			return nil, nil, err
		}
		gen, err := engine.NewGenerator(policy, opts)
		if err != nil {
			return nil, nil, err
		}
		slog.Info(gen.KVChoice().String())
		return EngineRollouts{Gen: gen}, gen.Close, nil
	}
	if err := syncWeights(ctx, rs, policy, dp); err != nil { // the servers start from the policy
		closeRollouts()
		return nil, nil, err
	}
	return rs, closeRollouts, nil
}

// syncWeights sends the policy's weights to a rollout source that keeps its own; in a
// data-parallel run rank 0 sends them and the others wait until it has.
func syncWeights(ctx context.Context, rs RolloutSource, policy *engine.Model, dp *dataParallel) error {
	ws, ok := rs.(WeightSync)
	if !ok {
		return nil
	}
	if dp == nil {
		return ws.SyncWeights(ctx, policy)
	}
	var err error
	if dp.rank == 0 {
		err = ws.SyncWeights(ctx, policy)
	}
	return dp.agree("the weights sent to the rollout servers", err)
}

// writes reports whether this process writes the run directory: a single process, or rank 0
// of a data-parallel run.
func (r *runSession) writes() bool { return r.dp == nil || r.dp.rank == 0 }

// newTrainer builds the GRPO trainer on the job's prompts, streamed by grpo/data.Stream.
func (r *runSession) newTrainer() error {
	tc := r.cfg.Trainer
	if len(r.job.StopTokens) > 0 {
		tc.StopTokens = r.job.StopTokens
	}
	if r.job.MaxResponseTokens > 0 {
		tc.MaxResponseTokens = r.job.MaxResponseTokens
	}
	var err error
	if r.stream, err = newPromptStream(r.job.Train, tc.Seed); err != nil {
		return err
	}
	if r.job.Reward == nil && r.job.BatchReward == nil {
		return errors.New("grpo: the job has neither a Reward nor a BatchReward")
	}
	if r.trainer, err = NewPolicyOptimizer(r.policy, r.rollouts, r.stream, r.job.Reward, r.job.Decode, tc); err != nil {
		return err
	}
	r.trainer.dp = r.dp
	r.trainer.BatchReward = r.job.BatchReward
	r.trainer.OnReset = r.export
	return nil
}

// train runs the GRPO steps of this session and the final export.
func (r *runSession) train(ctx context.Context) error {
	mpath := filepath.Join(r.cfg.Dir, MetricsFile)
	var log *MetricsLog // nil on the ranks that do not write
	var err error
	if r.writes() {
		if r.cfg.Resume != nil {
			// Steps logged after the run state was saved are run again: drop their lines.
			err = truncateMetrics(mpath, r.cfg.Resume.Step)
		}
		if err == nil {
			log, err = OpenRunLog(r.cfg.Dir, r.trainer.StepNumber()+1)
		}
		if err != nil && r.cfg.Resume != nil {
			err = fmt.Errorf("resume: %w", err)
		}
	}
	if r.dp != nil {
		err = r.dp.agree("opening the metrics log", err)
	}
	if err != nil {
		if log != nil {
			log.Close()
		}
		return err
	}
	if log != nil {
		defer log.Close()
	}
	if r.cfg.Resume == nil {
		if err := r.logStart(log); err != nil {
			return err
		}
	}
	first, last := r.trainer.StepNumber()+1, r.cfg.Steps
	if r.cfg.Hooks.Training != nil {
		r.cfg.Hooks.Training(first, last)
	}
	for s := first; s <= last; s++ {
		if err := r.step(ctx, log, s); err != nil {
			return err
		}
	}
	// The final export, unless a reset just wrote it; a resumed run that has nothing left to
	// train writes it when it is missing (a run killed while exporting it).
	_, statErr := os.Stat(filepath.Join(r.exportDir(last), "model.onnx"))
	if r.dp != nil { // rank 0's view of its export decides
		var missing int
		if statErr != nil {
			missing = 1
		}
		all, err := gather(r.dp, "the final export", missing)
		if err != nil {
			return err
		}
		if all[0] == 1 {
			statErr = os.ErrNotExist
		} else {
			statErr = nil
		}
	}
	if _, ok := r.exported[last]; !ok && (first <= last || statErr != nil) {
		if err := r.export(last); err != nil {
			return err
		}
	}
	if r.writes() {
		r.plot()
	}
	return nil
}

// logStart logs the step-0 record (the starting model's evaluation).
func (r *runSession) logStart(log *MetricsLog) error {
	if log != nil {
		if err := log.Append(Record{Metrics: &Metrics{Step: 0}, Eval: r.evals.First}); err != nil {
			return err
		}
	}
	if r.evals.First != nil {
		if _, err := r.trainer.AfterEval(r.evals.First, nil); err != nil {
			return err
		}
	}
	return nil
}

// step runs GRPO step s, evaluates when due, logs it and saves a run state when due.
func (r *runSession) step(ctx context.Context, log *MetricsLog, s int) error {
	t0 := time.Now()
	stepFn := r.trainer.Step
	if r.cfg.Trainer.Overlap && s < r.cfg.Steps && !r.saveDue(s) {
		stepFn = r.trainer.StepAhead
	}
	m, err := stepFn(ctx)
	if err != nil {
		return err
	}
	if err := syncWeights(ctx, r.rollouts, r.policy.Model, r.dp); err != nil {
		return err
	}
	m.StepSeconds = time.Since(t0).Seconds()
	rec := Record{Metrics: m}
	if s%r.cfg.Eval.Every == 0 || s == r.cfg.Steps {
		if rec.Eval, err = r.evaluate(ctx, s); err != nil {
			return err
		}
		if rec.Eval != nil {
			r.evals.Last = rec.Eval
			if b := r.evals.Best; b == nil || rec.Eval.Accuracy > b.Accuracy {
				best := &BestEval{Step: s, Accuracy: rec.Eval.Accuracy}
				if err := r.exportBest(best); err != nil {
					return err
				}
				r.evals.Best = best
			}
			if _, err := r.trainer.AfterEval(rec.Eval, m); err != nil {
				return err
			}
		}
	}
	if log != nil {
		if err := log.Append(rec); err != nil {
			return err
		}
	}
	if r.saveDue(s) {
		if err := r.save(); err != nil {
			return err
		}
	}
	if rec.Eval != nil && r.writes() {
		r.plot() // after the save: a plot that fails loses no state
	}
	if r.cfg.Hooks.Stepped != nil {
		r.cfg.Hooks.Stepped(m, r.evals.Last)
	}
	return nil
}
