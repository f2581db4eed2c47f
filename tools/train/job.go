package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
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
	"github.com/prolong-rl/prolong/tools/internal/modelio"
)

// defaultJob is the embedded default: arithmetic problems, the character-level default model
// built by a seeded supervised warm start (skipped on resume: the run state has the weights).
func defaultJob(ctx context.Context, o options, backend engine.Backend, warmStart bool) (*grpo.Job, error) {
	tok := quickstart.NewTokenizer()
	train, held, err := defaultPrompts(o, tok)
	if err != nil {
		return nil, err
	}
	j := &grpo.Job{
		Model: quickstart.ModelConfig(), Train: train, Held: held,
		Reward: quickstart.Reward(), Decode: tok.Decode, StopTokens: []int32{tok.ID(quickstart.EOS)},
		TokenizerFiles: quickstartTokenizerFiles,
	}
	spec := quickstart.TaskSpec
	if o.Task == taskSuite {
		spec = "suite"
	}
	fmt.Printf("default model: Qwen2-shaped, %.2fM parameters; task %s (train %d, held-out %d problems)\n",
		float64(quickstart.ModelConfig().NumParams())/1e6, spec, len(train), len(held))
	if !warmStart {
		return j, nil
	}
	sft := quickstart.DefaultSFT()
	sft.Seed, sft.Steps, sft.LR, sft.CoT, sft.NoiseFrac = o.Run.Trainer.Seed, o.SFTSteps, o.SFTLR, o.CoT, o.SFTNoise
	if o.Task == taskSuite {
		if sft.Families, err = quickstart.SuiteFamilies(); err != nil {
			return nil, err
		}
	}
	if tb, ok := backend.(engine.TrainBackend); ok {
		sft.Backend = tb // the warm start runs where the run does
	}
	bar := newProgress(o, 0, sft.Steps, "warm start (SFT)")
	sft.Progress = func(step int, loss float64) { bar.Step(fmt.Sprintf("loss %.3f", loss)) }
	policy, err := quickstart.SFT(ctx, sft)
	if err != nil {
		return nil, err
	}
	bar.Finish()
	if j.Weights, err = policy.Model.HostWeights(); err != nil {
		return nil, err
	}
	return j, nil
}

// defaultPrompts are the default job's training and held-out prompts: the default task's, or
// with --task suite the suite's training mix and its held-out sets (--eval-size problems each).
func defaultPrompts(o options, tok *quickstart.Tokenizer) (train, held []grpo.Prompt, err error) {
	if o.Task == taskSuite {
		trainSets, heldSets, err := tasks.GenerateSuite(quickstart.Suite(), tasks.SuiteConfig{
			TrainN: o.TrainProblems / len(quickstart.Suite()), HeldN: o.EvalSize, TrainSeed: o.Run.Trainer.Seed + 2000, HeldSeed: o.Run.Trainer.Seed + 1000})
		if err != nil {
			return nil, nil, fmt.Errorf("--task suite: %w", err)
		}
		if train, err = tok.SetPrompts(trainSets); err != nil {
			return nil, nil, err
		}
		held, err = tok.SetPrompts(heldSets)
		return train, held, err
	}
	f := quickstart.Task()
	heldTasks, err := tasks.Generate(f, tasks.GenerateConfig{Split: tasks.HeldOut, N: o.EvalSize, Seed: o.Run.Trainer.Seed + 1000})
	if err != nil {
		return nil, nil, err
	}
	if held, err = tok.Prompts(heldTasks); err != nil {
		return nil, nil, err
	}
	trainTasks, err := tasks.Generate(f, tasks.GenerateConfig{Split: tasks.Train, N: o.TrainProblems, Seed: o.Run.Trainer.Seed + 2000})
	if err != nil {
		return nil, nil, err
	}
	train, err = tok.Prompts(trainTasks)
	return train, held, err
}

// customJob is the user's model (--model) on the user's prompts (--data), rewarded by the
// built-in verifiable rewards routed by each row's data_source.
func customJob(ctx context.Context, o options, loadWeights bool) (j *grpo.Job, err error) {
	j, tok, err := loadModel(ctx, o, loadWeights)
	if err != nil {
		return nil, err
	}
	rows, val, err := loadRows(ctx, o)
	if err != nil {
		return nil, err
	}
	reg := reward.NewDefault(reward.Options{})
	closeReward, err := rewardProgram(o, reg, append(rows, val...))
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && closeReward != nil {
			closeReward() // the run will not start: end the program
		}
	}()
	j.Close = closeReward
	if j.Train, err = toPrompts(o, reg, tok, rows, o.Data); err != nil {
		return nil, err
	}
	valFile := o.ValData
	if valFile == "" {
		valFile = o.Data
	}
	if len(val) > 0 {
		if j.Held, err = toPrompts(o, reg, tok, val, valFile); err != nil {
			return nil, err
		}
	}
	j.Reward = func(ctx context.Context, p grpo.Prompt, response string) (float64, error) {
		r, err := reg.Score(ctx, p.Kind, response, p.GroundTruth, p.Meta)
		return r.Score, err
	}
	if closeReward != nil { // a reward program: a round's responses in one batch
		j.BatchReward = batchReward(reg)
	}
	j.Decode = tok.decode
	j.StopTokens = tok.stopTokens(j.Model)
	if len(j.StopTokens) == 0 {
		return nil, fmt.Errorf("--model %s: no end-of-sequence token (eos_token_id in config.json or generation_config.json, or the tokenizer's eos_token)", o.Model)
	}
	if len(j.Model.EOSTokenIDs) == 0 { // exports' config.json and generation_config.json name it
		for _, id := range j.StopTokens {
			j.Model.EOSTokenIDs = append(j.Model.EOSTokenIDs, int(id))
		}
	}
	fmt.Printf("model %s: %s, %.1fM parameters; data %s (train %d, held-out %d prompts)\n",
		o.Model, j.Model.ModelType, float64(j.Model.NumParams())/1e6, o.Data, len(j.Train), len(j.Held))
	printRewardRoutes(reg, j.Train, j.Held)
	warnDataSize(o, len(j.Train), len(j.Held))
	if j.MaxResponseTokens, err = fitResponses(o, j); err != nil {
		return nil, err
	}
	return j, nil
}

// smallHeldOut is the held-out size below which accuracy moves in steps too coarse to follow.
const smallHeldOut = 50

// warnDataSize warns about data too small for the run's settings: no or few held-out prompts,
// and training prompts reused within one step.
func warnDataSize(o options, train, held int) {
	switch {
	case held == 0:
		slog.Warn("no held-out prompts: no evaluation and no best checkpoint; give --val-data, or a --val-fraction of --data that leaves some", "val-fraction", o.ValFraction)
	case held < smallHeldOut:
		slog.Warn(fmt.Sprintf("only %d held-out prompts: accuracy moves in steps of %.1f%%", held, 100/float64(held)), "recommended", smallHeldOut)
	}
	if o.Run.Trainer.PromptsPerStep > train {
		slog.Warn(fmt.Sprintf("--prompts %d per step from %d training prompts: each is used about %.0f times per step", o.Run.Trainer.PromptsPerStep, train, float64(o.Run.Trainer.PromptsPerStep)/float64(train)),
			"hint", "lower --prompts or give more data")
	}
}

// fitResponses returns the response budget that fits the model's context: --max-response,
// lowered (and said so) to what max_position_embeddings leaves after the longest prompt; an
// error when not even one token fits.
func fitResponses(o options, j *grpo.Job) (int, error) {
	longest := 0
	for _, ps := range [][]grpo.Prompt{j.Train, j.Held} {
		for _, p := range ps {
			longest = max(longest, len(p.Tokens))
		}
	}
	ctxLen := j.Model.MaxPositionEmbeddings
	room := ctxLen - longest
	if room < 1 {
		return 0, fmt.Errorf("--max-prompt-tokens %d: the longest prompt kept has %d tokens, which leaves no room for a response in the model's context of %d tokens (max_position_embeddings); lower --max-prompt-tokens",
			o.MaxPromptTokens, longest, ctxLen)
	}
	if o.Run.Trainer.MaxResponseTokens <= room {
		return o.Run.Trainer.MaxResponseTokens, nil
	}
	slog.Warn(fmt.Sprintf("--max-response %d does not fit: the model's context is %d tokens (max_position_embeddings) and the longest prompt %d; responses are limited to %d tokens",
		o.Run.Trainer.MaxResponseTokens, ctxLen, longest, room))
	return room, nil
}

// loadModel reads --model (a Hugging Face directory, an .onnx file or a directory holding
// model.onnx, beside its tokenizer, a training run, or a Hugging Face model id ORG/NAME[@REV]
// from the cache or the Hub) as tools/rollout-server does (modelio.LoadFlag): its config, its
// weights when loadWeights, and its tokenizer, which exports copy.
func loadModel(ctx context.Context, o options, loadWeights bool) (*grpo.Job, *hfTokenizer, error) {
	m, err := modelio.LoadFlag(ctx, o.Model, modelio.Options{Step: checkpoints.Latest})
	if err != nil {
		return nil, nil, err
	}
	tok, err := loadTokenizer(m.FilesDir)
	if err != nil {
		return nil, nil, err
	}
	j := &grpo.Job{Model: m.Config, Weights: m.Weights, BaseModel: o.Model, StoredBF16: storedBF16(m.FilesDir)}
	j.TokenizerFiles = func(out string) error {
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		// The tokenizer files and the source's generation_config.json (its sampling defaults,
		// with the model's token ids where it has none), replacing the one SaveHF derives.
		_, err := modelio.WriteSideFiles(&modelio.Model{Config: j.Model, FilesDir: m.FilesDir}, out)
		return err
	}
	if !loadWeights {
		j.Weights = nil
	}
	if tok.vocabSize() > j.Model.VocabSize {
		return nil, nil, fmt.Errorf("--model %s: the tokenizer has %d tokens but config.json's vocab_size is %d", o.Model, tok.vocabSize(), j.Model.VocabSize)
	}
	return j, tok, nil
}

// loadRows reads --data and the held-out rows: --val-data, or a seeded --val-fraction of
// --data; at most --eval-size of them.
func loadRows(ctx context.Context, o options) (train, val []data.Row, err error) {
	load := func(file string) ([]data.Row, error) {
		var long []string
		opts := data.Options{DefaultDataSource: o.DefaultKind, MaxLineBytes: o.MaxLineBytes, SkipLong: func(line int, size int64) {
			long = append(long, fmt.Sprintf("%s (%d bytes)", data.Row{Line: line}.At(file), size))
		}}
		rows, err := data.Load(ctx, file, opts)
		if len(long) > 0 && err == nil {
			slog.Warn("data lines longer than --max-line-bytes skipped", "file", file, "skipped", len(long), "at", firstFew(long), "max-line-bytes", o.MaxLineBytes)
		}
		return rows, err
	}
	if train, err = load(o.Data); err != nil {
		return nil, nil, err
	}
	if o.ValData != "" {
		if val, err = load(o.ValData); err != nil {
			return nil, nil, err
		}
	} else if o.ValFraction > 0 {
		if train, val, err = data.SplitValidation(train, o.ValFraction, o.Run.Trainer.Seed); err != nil {
			return nil, nil, err
		}
	}
	if len(val) > o.EvalSize {
		val = val[:o.EvalSize]
	}
	return train, val, nil
}

// toPrompts tokenizes the rows of file as prompts; rows longer than --max-prompt-tokens are
// dropped (named in the log; tokenizing one stops once it passes the limit). A row whose
// data_source has no reward, or whose prompt holds a character the tokenizer cannot
// represent, is an error naming its line.
func toPrompts(o options, reg *reward.Registry, tok *hfTokenizer, rows []data.Row, file string) ([]grpo.Prompt, error) {
	var ps []grpo.Prompt
	var dropped []string
	for _, r := range rows {
		if _, _, ok := reg.Lookup(r.DataSource); !ok {
			return nil, fmt.Errorf("%s: no reward for data_source %q (built in: %s)", r.At(file), r.DataSource, strings.Join(reg.Kinds(), ", "))
		}
		ids, text, err := tok.prompt(r, !o.NoChatTemplate, o.MaxPromptTokens)
		if err != nil {
			return nil, fmt.Errorf("%s: prompt: %w", r.At(file), err)
		}
		if ids == nil {
			dropped = append(dropped, r.At(file))
			continue
		}
		ps = append(ps, grpo.Prompt{Tokens: ids, Text: text, Kind: r.DataSource, GroundTruth: r.GroundTruth, Meta: r.ExtraInfo})
	}
	if len(dropped) > 0 {
		slog.Warn("prompts longer than --max-prompt-tokens dropped", "file", file, "dropped", len(dropped), "kept", len(ps), "at", firstFew(dropped))
	}
	if len(ps) == 0 {
		return nil, fmt.Errorf("%s: no prompts left", file)
	}
	return ps, nil
}

// firstFew joins the first five of names, and says how many more there are.
func firstFew(names []string) string {
	const few = 5
	if len(names) <= few {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:few], ", "), len(names)-few)
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
	}{{"train.jsonl", tasks.Train, o.TrainProblems, o.Run.Trainer.Seed + 2000}, {"heldout.jsonl", tasks.HeldOut, o.EvalSize, o.Run.Trainer.Seed + 1000}} {
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

// storedBF16 reports whether the config.json in dir says the weights are stored as bf16
// (torch_dtype, or transformers 5's dtype, "bfloat16"); false when there is none.
func storedBF16(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, checkpoints.ConfigFile))
	if err != nil {
		return false
	}
	var c struct {
		TorchDType string `json:"torch_dtype"`
		DType      string `json:"dtype"`
	}
	if json.Unmarshal(b, &c) != nil {
		return false
	}
	return c.TorchDType == "bfloat16" || c.DType == "bfloat16"
}
