package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/data"
	"github.com/prolong-rl/prolong/grpo/quickstart"
	"github.com/prolong-rl/prolong/grpo/reward"
	"github.com/prolong-rl/prolong/grpo/tasks"
	"github.com/prolong-rl/prolong/onnx"
	"github.com/prolong-rl/prolong/tools/internal/modelio"
)

// job is what a GRPO run trains on: the starting model, the prompts, and how responses are
// decoded and rewarded. The default job and a user's --model/--data job differ only here.
type job struct {
	describe string
	cfg      *engine.Config
	weights  map[string]engine.HostTensor // starting weights (nil on resume: the run state has them)
	train    *promptStream
	held     []grpo.Prompt
	reward   grpo.RewardFunc
	decode   func([]int32) string
	stop     []int32
	// tokenizerFiles are written beside every exported checkpoint so that it is a whole model.
	tokenizerFiles func(dir string) error
}

// promptStream hands out the training prompts in a seeded order, reshuffled every epoch; its
// position is saved in run states.
type promptStream struct {
	ps    []grpo.Prompt
	order []int
	pos   int
	epoch uint64
	seed  uint64
}

// Next implements grpo.PromptSource.
func (s *promptStream) Next(n int) ([]grpo.Prompt, error) {
	out := make([]grpo.Prompt, n)
	for i := range out {
		if s.pos == len(s.order) || s.order == nil {
			s.order = shuffled(len(s.ps), s.seed, s.epoch)
			s.pos = 0
			s.epoch++
		}
		out[i] = s.ps[s.order[s.pos]]
		s.pos++
	}
	return out, nil
}

// streamPosition is a promptStream's place, as run states keep it.
type streamPosition struct {
	Epoch   uint64 `json:"epoch"` // epochs started
	Pos     int    `json:"pos"`   // prompts handed out in the current epoch
	Prompts int    `json:"prompts"`
}

func (s *promptStream) position() streamPosition {
	return streamPosition{Epoch: s.epoch, Pos: s.pos, Prompts: len(s.ps)}
}

func (s *promptStream) restore(p streamPosition) error {
	if p.Prompts != len(s.ps) {
		return fmt.Errorf("the run state was saved with %d training prompts, the data now gives %d", p.Prompts, len(s.ps))
	}
	s.epoch, s.pos, s.order = p.Epoch, p.Pos, nil
	if p.Epoch > 0 {
		s.order = shuffled(len(s.ps), s.seed, p.Epoch-1)
	}
	return nil
}

// shuffled returns a seeded permutation of 0..n-1 for one epoch.
func shuffled(n int, seed, epoch uint64) []int {
	r := rand.New(rand.NewPCG(seed, epoch))
	return r.Perm(n)
}

// defaultJob is the embedded default: arithmetic problems, the character-level default model
// built by a seeded supervised warm start (skipped on resume: the run state has the weights).
func defaultJob(ctx context.Context, o options, warmStart bool) (*job, error) {
	tok := quickstart.NewTokenizer()
	f := quickstart.Task()
	heldTasks, err := tasks.Generate(f, tasks.GenerateConfig{Split: tasks.HeldOut, N: o.evalSize, Seed: o.seed + 1000})
	if err != nil {
		return nil, err
	}
	held, err := tok.Prompts(heldTasks)
	if err != nil {
		return nil, err
	}
	trainTasks, err := tasks.Generate(f, tasks.GenerateConfig{Split: tasks.Train, N: o.trainProblems, Seed: o.seed + 2000})
	if err != nil {
		return nil, err
	}
	train, err := tok.Prompts(trainTasks)
	if err != nil {
		return nil, err
	}
	j := &job{
		describe: fmt.Sprintf("default model: Qwen2-shaped, %.2fM parameters; task %s (train %d, held-out %d problems)",
			float64(quickstart.ModelConfig().NumParams())/1e6, quickstart.TaskSpec, len(train), len(held)),
		cfg: quickstart.ModelConfig(), train: &promptStream{ps: train, seed: o.seed}, held: held,
		reward: quickstart.Reward(), decode: tok.Decode, stop: []int32{tok.ID(quickstart.EOS)},
		tokenizerFiles: quickstartTokenizerFiles,
	}
	fmt.Println(j.describe)
	if !warmStart {
		return j, nil
	}
	sft := quickstart.DefaultSFT()
	sft.Seed, sft.Steps, sft.LR, sft.CoT, sft.NoiseFrac = o.seed, o.sftSteps, o.sftLR, o.cot, o.sftNoise
	bar := newBar(o, sft.Steps, "warm start (SFT)")
	sft.Progress = func(step int, loss float64) {
		bar.Describe(fmt.Sprintf("warm start (SFT) loss %.3f", loss))
		bar.Add(1)
	}
	policy, err := quickstart.SFT(ctx, sft)
	if err != nil {
		return nil, err
	}
	bar.Finish()
	if j.weights, err = policy.Model.HostWeights(); err != nil {
		return nil, err
	}
	return j, nil
}

// customJob is the user's model (--model) on the user's prompts (--data), rewarded by the
// built-in verifiable rewards routed by each row's data_source.
func customJob(ctx context.Context, o options, loadWeights bool) (*job, error) {
	if o.model == "" || o.data == "" {
		return nil, errors.New("--model and --data go together: give both (or neither, for the default job)")
	}
	dir := o.model
	if strings.HasSuffix(o.model, ".onnx") {
		dir = filepath.Dir(o.model)
	}
	tok, err := loadTokenizer(dir)
	if err != nil {
		return nil, err
	}
	j := &job{tokenizerFiles: func(out string) error {
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		_, err := modelio.CopyTokenizer(dir, out)
		return err
	}}
	if strings.HasSuffix(o.model, ".onnx") {
		j.cfg, j.weights, err = onnx.Import(o.model, onnx.ImportOptions{})
	} else {
		j.cfg, j.weights, err = checkpoints.Load(o.model)
	}
	if err != nil {
		return nil, fmt.Errorf("--model: %w", err)
	}
	if !loadWeights {
		j.weights = nil
	}
	if tok.vocabSize() > j.cfg.VocabSize {
		return nil, fmt.Errorf("--model %s: the tokenizer has %d tokens but config.json's vocab_size is %d", o.model, tok.vocabSize(), j.cfg.VocabSize)
	}

	opts := data.Options{DefaultDataSource: o.defaultKind}
	rows, err := data.Load(ctx, o.data, opts)
	if err != nil {
		return nil, err
	}
	var val []data.Row
	if o.valData != "" {
		if val, err = data.Load(ctx, o.valData, opts); err != nil {
			return nil, err
		}
	} else if o.valFraction > 0 {
		if rows, val, err = data.SplitValidation(rows, o.valFraction, o.seed); err != nil {
			return nil, err
		}
	}
	if len(val) > o.evalSize {
		val = val[:o.evalSize]
	}
	reg := reward.NewDefault(reward.Options{})
	toPrompts := func(rows []data.Row, file string) ([]grpo.Prompt, error) {
		var ps []grpo.Prompt
		dropped := 0
		for _, r := range rows {
			if _, _, ok := reg.Lookup(r.DataSource); !ok {
				return nil, fmt.Errorf("%s row %d: no reward for data_source %q (built in: %s)", file, r.Index, r.DataSource, strings.Join(reg.Kinds(), ", "))
			}
			ids, err := tok.prompt(r, !o.noChatTemplate)
			if err != nil {
				return nil, fmt.Errorf("%s row %d: %w", file, r.Index, err)
			}
			if len(ids) > o.maxPromptTokens {
				dropped++
				continue
			}
			ps = append(ps, grpo.Prompt{Tokens: ids, Kind: r.DataSource, GroundTruth: r.GroundTruth, Meta: r.ExtraInfo})
		}
		if dropped > 0 {
			slog.Warn("prompts longer than --max-prompt-tokens dropped", "file", file, "dropped", dropped, "kept", len(ps))
		}
		if len(ps) == 0 {
			return nil, fmt.Errorf("%s: no prompts left", file)
		}
		return ps, nil
	}
	train, err := toPrompts(rows, o.data)
	if err != nil {
		return nil, err
	}
	valFile := o.valData
	if valFile == "" {
		valFile = o.data + " (held-out share)"
	}
	if len(val) > 0 {
		if j.held, err = toPrompts(val, valFile); err != nil {
			return nil, err
		}
	}
	j.train = &promptStream{ps: train, seed: o.seed}
	j.reward = func(ctx context.Context, p grpo.Prompt, response string) (float64, error) {
		r, err := reg.Score(ctx, p.Kind, response, p.GroundTruth, p.Meta)
		return r.Score, err
	}
	j.decode = tok.decode
	j.stop = tok.stopTokens(j.cfg)
	if len(j.stop) == 0 {
		return nil, fmt.Errorf("--model %s: no end-of-sequence token (eos_token_id in config.json or generation_config.json, or the tokenizer's eos_token)", o.model)
	}
	j.describe = fmt.Sprintf("model %s: %s, %.1fM parameters; data %s (train %d, held-out %d prompts)",
		o.model, j.cfg.ModelType, float64(j.cfg.NumParams())/1e6, o.data, len(train), len(j.held))
	fmt.Println(j.describe)
	return j, nil
}

// newPolicy puts weights on the CPU backend as a trainable policy with the run's optimizer.
func newPolicy(o options, cfg *engine.Config, weights map[string]engine.HostTensor) (*engine.Trainer, error) {
	m, err := engine.NewModel(cfg, engine.NewCPU(), weights, engine.F32)
	if err != nil {
		return nil, err
	}
	opt := engine.AdamWConfig{LR: o.lr, Beta1: o.beta1, Beta2: o.beta2, WeightDecay: o.weightDecay, NoDecay1D: true, ClipNorm: o.clipNorm}
	if o.warmup > 0 {
		opt.Schedule = engine.LinearWarmup(o.warmup)
	}
	return engine.NewTrainer(m, engine.TrainOptions{Optimizer: opt, Freeze: o.freeze, Recompute: o.recompute, Temperature: float32(o.temperature)})
}

// grpoConfig is the recipe the flags describe.
func grpoConfig(o options, stop []int32) (grpo.Config, error) {
	cfg := grpo.DefaultConfig()
	cfg.Seed = o.seed
	cfg.PromptsPerStep, cfg.SamplesPerPrompt = o.prompts, o.samples
	cfg.Temperature, cfg.TopP = float32(o.temperature), float32(o.topP)
	cfg.MaxResponseTokens = o.maxResponseLen
	cfg.StopTokens = stop
	cfg.MiniBatches, cfg.MicroBatchTokens = o.miniBatches, o.microBatchTokens
	cfg.DynamicSampling, cfg.MaxSamplingRounds = !o.noDynamic, o.maxRounds
	cfg.OverlongPenalty = o.overlongPenalty
	cfg.RefResetEvery, cfg.RefResetOnPlateau = o.resetEvery, o.resetPlateau
	cfg.Loss.ClipLow, cfg.Loss.ClipHigh, cfg.Loss.DualClip = o.clipLow, o.clipHigh, o.dualClip
	cfg.Loss.KLCoef, cfg.Loss.EntropyCoef = o.klCoef, o.entropyCoef
	kl, err := grpo.ParseKLEstimator(o.klEstimator)
	if err != nil {
		return cfg, fmt.Errorf("--kl-estimator: %w", err)
	}
	cfg.Loss.KL = kl
	switch a := grpo.AggMode(o.agg); a {
	case grpo.AggTokenMean, grpo.AggSeqMeanTokenSum, grpo.AggSeqMeanTokenMean:
		cfg.Loss.Agg = a
	default:
		return cfg, fmt.Errorf("--loss-agg %q: want token-mean, seq-mean-token-sum or seq-mean-token-mean", o.agg)
	}
	switch e := grpo.Estimator(o.advEstimator); e {
	case grpo.EstimatorGRPO, grpo.EstimatorRLOO, grpo.EstimatorReinforcePPBaseline:
		cfg.Advantage.Estimator = e
	default:
		return cfg, fmt.Errorf("--adv-estimator %q: want grpo, rloo or reinforce_plus_plus_baseline", o.advEstimator)
	}
	cfg.Advantage.NoStdNorm = o.noStdNorm
	return cfg, nil
}

// writeTaskData writes the default task's prompts as --data files: the prompt text (with the
// default tokenizer's <bos>), data_source "arith", the answer as ground truth.
func writeTaskData(o options, dir string) error {
	f := quickstart.Task()
	for _, part := range []struct {
		file  string
		split tasks.Split
		n     int
		seed  uint64
	}{{"train.jsonl", tasks.Train, o.trainProblems, o.seed + 2000}, {"heldout.jsonl", tasks.HeldOut, o.evalSize, o.seed + 1000}} {
		ts, err := tasks.Generate(f, tasks.GenerateConfig{Split: part.split, N: part.n, Seed: part.seed})
		if err != nil {
			return err
		}
		rows := data.FromTasks(ts)
		for i := range rows {
			rows[i].Prompt = quickstart.BOS + rows[i].Prompt
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		path := filepath.Join(dir, part.file)
		if err := data.Save(path, rows); err != nil {
			return err
		}
		fmt.Printf("wrote %s (%d prompts)\n", path, len(rows))
	}
	return nil
}
