// Command train runs the ProRL recipe: GRPO with clip-higher, KL to a reference policy, dynamic
// sampling and reference resets, with held-out evaluation, metrics, plots, run states to resume
// from and ONNX + safetensors exports.
//
// With no arguments it trains the project's default job on the CPU: it builds the small default
// model by a seeded supervised warm start on the default task (short multi-step arithmetic),
// then improves it with GRPO. With --model and --data it trains your model on your prompts.
//
//	go run ./tools/train                                       # the default job
//	go run ./tools/train --sft                                 # only the supervised warm start
//	go run ./tools/train --model DIR --data FILE --out RUNDIR  # your model and prompts
//	go run ./tools/train --out RUNDIR --resume                 # continue a stopped run
//	go run ./tools/train --config recipe.yaml                  # flags from a file
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/data"
	"github.com/prolong-rl/prolong/grpo/quickstart"
	"github.com/prolong-rl/prolong/tools/internal/clilog"
)

// options are the program's flags.
type options struct {
	// What to train on.
	model, data, valData, defaultKind string
	valFraction                       float64
	maxPromptTokens, maxLineBytes     int
	noChatTemplate                    bool
	rolloutServers                    []string
	overlap                           string
	maxStaleness                      int
	writeData                         string

	// A reward program or server (instead of the built-in rewards).
	rewardCmd, rewardURL string
	rewardFor            []string
	rewardTimeout        time.Duration

	// The run.
	out, config, cpuProfile string
	device                  string
	matmulPrecision         string
	seed                    uint64
	steps                   int
	resume, quiet           bool
	resumeStep              int
	terminal                bool // stderr is a terminal: progress bars (else plain progress lines)
	saveEvery, keep         int

	// The default job's warm start.
	sftOnly, cot            bool
	sftSteps, trainProblems int
	sftLR, sftNoise         float64
	task                    string // "default" or "suite" (quickstart.Suite)

	// Rollouts and the GRPO step.
	prompts, samples, maxResponseLen, miniBatches, microBatchTokens, maxRounds int
	temperature, topP, overlongPenalty                                         float64
	overlongBuffer                                                             int
	noDynamic, maskTruncated                                                   bool

	// Loss and advantages.
	clipLow, clipHigh, dualClip, klCoef, entropyCoef, tisCap  float64
	gspoClipLow, gspoClipHigh                                 float64
	clipCovRatio, clipCovLB, clipCovUB, klCovRatio, klCovCoef float64
	policyLoss, klEstimator, agg, advEstimator                string
	noStdNorm                                                 bool

	// Optimizer.
	lr, beta1, beta2, weightDecay, clipNorm float64
	warmup                                  int
	recompute                               bool
	freeze                                  []string

	// Reference resets.
	resetEvery, resetPlateau int

	// Evaluation.
	evalEvery, evalSize, evalSamples int
	evalTemp, evalTopP               float64
}

// newFlags declares every flag of the program into o. The defaults of the run's flags are
// grpo.DefaultRunConfig's, the ProRL recipe (../shared/docs/prorl.md); the default job (no
// --model) scales some of them down to a few-minute CPU run, see defaultJobFlags.
func newFlags(o *options) *pflag.FlagSet {
	fs := pflag.NewFlagSet("train", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard) // main prints --help (on stdout) and errors (on stderr) itself
	fs.Usage = func() {}
	d := grpo.DefaultRunConfig() // every default of the run is grpo's
	prorl := d.Trainer

	fs.StringVar(&o.model, "model", "", "model to train: a Hugging Face directory (config.json, *.safetensors, tokenizer.json), a .onnx file, or a Hugging Face model id ORG/NAME[@REVISION] (from the Hugging Face cache, downloaded when missing; HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE apply); empty: the default job's model")
	fs.StringVar(&o.data, "data", "", "training prompts: JSONL or Parquet (fields prompt or messages, data_source, ground_truth / reward_model.ground_truth, extra_info)")
	fs.StringVar(&o.valData, "val-data", "", "held-out prompts (same format); empty: --val-fraction of --data")
	fs.Float64Var(&o.valFraction, "val-fraction", 0.02, "share of --data held out for evaluation when --val-data is not given")
	fs.StringVar(&o.defaultKind, "default-kind", "", "task kind (reward) of rows without data_source; empty: such rows are errors")
	fs.IntVar(&o.maxPromptTokens, "max-prompt-tokens", 1024, "prompts longer than this many tokens are dropped (named in the log)")
	fs.IntVar(&o.maxLineBytes, "max-line-bytes", data.DefaultMaxLineBytes, "data lines (Parquet rows) longer than this many bytes are skipped unread (named in the log)")
	fs.BoolVar(&o.noChatTemplate, "no-chat-template", false, "feed prompt text as is, without the tokenizer's chat template")
	fs.StringVar(&o.rewardCmd, "reward-cmd", "", "a reward program, run by /bin/sh -c, that scores responses: JSON lines on its stdin and stdout, a batch a line (docs/reward-programs.md)")
	fs.StringVar(&o.rewardURL, "reward-url", "", "a reward server that scores responses: each batch POSTed as JSON (docs/reward-programs.md)")
	fs.StringSliceVar(&o.rewardFor, "reward-for", nil, "data_sources that --reward-cmd or --reward-url scores (empty: every data_source of the data; the built-in rewards score the others)")
	fs.DurationVar(&o.rewardTimeout, "reward-timeout", time.Minute, "time a reward program or server has to answer one batch")
	fs.StringSliceVar(&o.rolloutServers, "rollout-servers", nil, "rollout servers (URLs of tools/rollout-server) to generate with instead of the in-process engine; weights are pushed after each step")
	fs.StringVar(&o.overlap, "overlap", "auto", "overlapped rollouts: generate step s+1's rollouts while step s trains, on weights one step stale (corrected by --tis-cap, 2 unless given): on, off, or auto (on with --rollout-servers and --max-staleness 1; the in-process engine cannot gain on the CPU)")
	fs.IntVar(&o.maxStaleness, "max-staleness", prorl.MaxStaleness, "most steps the rollouts' weights may be behind the policy's: 1 allows --overlap, 0 forbids it")

	fs.StringVar(&o.out, "out", "", "run directory (default runs/<date-time>)")
	fs.StringVar(&o.config, "config", "", "YAML or JSON file of flag values (keys are flag names); flags given on the command line win")
	fs.Uint64Var(&o.seed, "seed", prorl.Seed, "seed of everything: model init, data order, sampling")
	fs.IntVar(&o.steps, "steps", d.Steps, "GRPO steps in all")
	fs.BoolVar(&o.resume, "resume", false, "continue the run in --out from its latest run state (flags given now override the saved ones)")
	fs.IntVar(&o.resumeStep, "resume-step", -1, "with --resume: continue from this saved step instead of the latest (an older run state kept by --keep)")
	fs.IntVar(&o.saveEvery, "save-every", d.SaveEvery, "save a run state (weights, reference, optimizer, data position) every so many steps and at the end; 0: only at the end")
	fs.IntVar(&o.keep, "keep", d.Keep, "run states kept (the oldest are removed after a save)")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress bar")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile (go tool pprof) to this file")
	fs.StringVar(&o.device, "device", "auto", "where the policy trains and generates: auto (the GPU when one is there, else the CPU), cpu or cuda")
	fs.StringVar(&o.matmulPrecision, "matmul-precision", "auto", "CPU matmuls: auto or fp32 (fp32 training), or bf16 (training and rollout matmuls as bf16 dot products with fp32 sums, like autocast; needs a CPU with AVX512_BF16)")

	fs.BoolVar(&o.sftOnly, "sft", false, "default job: run only the supervised warm start and report its held-out accuracy")
	fs.IntVar(&o.sftSteps, "sft-steps", quickstart.DefaultSFT().Steps, "default job: optimizer steps of the supervised warm start")
	fs.Float64Var(&o.sftLR, "sft-lr", quickstart.DefaultSFT().LR, "default job: peak learning rate of the warm start (cosine schedule)")
	fs.BoolVar(&o.cot, "cot", quickstart.DefaultSFT().CoT, "default job: warm start on worked answers (\"8+7-5=\" -> \"15-5=10 <answer>10</answer>\")")
	fs.Float64Var(&o.sftNoise, "sft-noise", quickstart.DefaultSFT().NoiseFrac, "default job: share of warm-start targets whose final answer is replaced by a wrong one")
	fs.IntVar(&o.trainProblems, "train-problems", 3000, "default job: distinct training problems")
	fs.StringVar(&o.task, "task", taskDefault, "default job: the tasks: default ("+quickstart.TaskSpec+") or suite (arithmetic chains and countdown, held out at and above the training difficulty, per family: docs/prolonged.md; --eval-size is per held-out set)")
	fs.StringVar(&o.writeData, "write-task-data", "", "write the default task's training and held-out prompts to DIR/train.jsonl and DIR/heldout.jsonl (the --data format) and exit")

	fs.IntVar(&o.prompts, "prompts", prorl.PromptsPerStep, "prompts (groups) per rollout step")
	fs.IntVar(&o.samples, "n", prorl.SamplesPerPrompt, "samples per prompt")
	fs.Float64Var(&o.temperature, "temperature", flagDefault(prorl.Temperature), "rollout temperature; the loss sees log-probs at it too")
	fs.Float64Var(&o.topP, "top-p", flagDefault(prorl.TopP), "rollout top-p")
	fs.IntVar(&o.maxResponseLen, "max-response", prorl.MaxResponseTokens, "maximum response tokens")
	fs.Float64Var(&o.overlongPenalty, "overlong-penalty", prorl.OverlongPenalty, "overlong penalty factor: with --overlong-buffer > 0, DAPO's soft overlong punishment (0 up to --max-response minus the buffer, then falling linearly to minus this at --max-response) added to the reward; with --overlong-buffer 0, subtracted from the reward of a response cut at --max-response; 0: none")
	fs.IntVar(&o.overlongBuffer, "overlong-buffer", prorl.OverlongBuffer, "DAPO's overlong buffer L_cache in tokens (verl overlong_buffer.len), below --max-response; 0: the flat penalty of --overlong-penalty")
	fs.BoolVar(&o.maskTruncated, "mask-truncated", prorl.MaskTruncated, "leave responses cut at --max-response out of the loss (DAPO's overlong filtering; they still count in their group's advantages)")
	fs.IntVar(&o.miniBatches, "mini-batches", prorl.MiniBatches, "policy updates per rollout step (the rollout batch is split into this many)")
	fs.IntVar(&o.microBatchTokens, "micro-batch-tokens", prorl.MicroBatchTokens, "tokens per forward/backward; gradients accumulate over micro-batches")
	fs.BoolVar(&o.noDynamic, "no-dynamic-sampling", !prorl.DynamicSampling, "keep groups whose rewards are all equal (ProRL drops them and samples more)")
	fs.IntVar(&o.maxRounds, "max-sampling-rounds", prorl.MaxSamplingRounds, "dynamic sampling: most rollout rounds per step to fill the batch")

	fs.StringVar(&o.policyLoss, "policy-loss", string(prorl.Loss.Mode), "policy loss (verl policy_loss.loss_mode): grpo (token-level clipped surrogate), gspo (sequence-level ratio, arXiv 2507.18071; its policy term is seq-mean-token-mean whatever --loss-agg), clip-cov or kl-cov (grpo's loss with the entropy-preserving Clip-Cov / KL-Cov updates, arXiv 2505.22617)")
	fs.Float64Var(&o.clipLow, "clip-low", prorl.Loss.ClipLow, "lower clip bound eps_low: the ratio is clipped at 1-eps_low")
	fs.Float64Var(&o.clipHigh, "clip-high", prorl.Loss.ClipHigh, "upper clip bound eps_high (clip-higher; 0.2 is plain PPO/GRPO)")
	fs.Float64Var(&o.dualClip, "dual-clip", prorl.Loss.DualClip, "dual-clip constant c > 1 bounding the loss of negative-advantage tokens (verl clip_ratio_c); with --policy-loss grpo and clip-cov; 0: off")
	fs.Float64Var(&o.gspoClipLow, "gspo-clip-low", prorl.Loss.GSPOClipLow, "--policy-loss gspo: the sequence ratio is clipped at 1 minus this")
	fs.Float64Var(&o.gspoClipHigh, "gspo-clip-high", prorl.Loss.GSPOClipHigh, "--policy-loss gspo: the sequence ratio is clipped at 1 plus this")
	fs.Float64Var(&o.clipCovRatio, "clip-cov-ratio", prorl.Loss.ClipCovRatio, "--policy-loss clip-cov: fraction of tokens whose gradient is dropped (at least one per micro-batch)")
	fs.Float64Var(&o.clipCovLB, "clip-cov-lb", prorl.Loss.ClipCovLow, "--policy-loss clip-cov: the dropped tokens are drawn from those whose covariance (A - mean A)(logp - mean logp) is above this")
	fs.Float64Var(&o.clipCovUB, "clip-cov-ub", prorl.Loss.ClipCovHigh, "--policy-loss clip-cov: ... and below this")
	fs.Float64Var(&o.klCovRatio, "kl-cov-ratio", prorl.Loss.KLCovRatio, "--policy-loss kl-cov: fraction of tokens (those of largest covariance; at least one per micro-batch) penalised by --kl-cov-coef * |logp - old logp|")
	fs.Float64Var(&o.klCovCoef, "kl-cov-coef", prorl.Loss.KLCovCoef, "--policy-loss kl-cov: weight of its penalty (verl ppo_kl_coef)")
	fs.Float64Var(&o.tisCap, "tis-cap", prorl.Loss.TISCap, "truncated importance sampling: the policy term of each token is weighted by min(p_trainer / p_rollout, this), correcting for the rollout engine's other numbers (verl rollout_is_threshold, e.g. 2); 0: off")
	fs.Float64Var(&o.klCoef, "kl-coef", prorl.Loss.KLCoef, "beta, the weight of the KL penalty to the reference in the loss; 0: no reference")
	fs.StringVar(&o.klEstimator, "kl-estimator", string(prorl.Loss.KL), "KL estimator: k1, k2 (mse) or k3 (low-variance)")
	fs.Float64Var(&o.entropyCoef, "entropy-coef", prorl.Loss.EntropyCoef, "weight of an entropy bonus (ProRL: none)")
	fs.StringVar(&o.agg, "loss-agg", string(prorl.Loss.Agg), "loss aggregation: token-mean, seq-mean-token-sum or seq-mean-token-mean")
	fs.StringVar(&o.advEstimator, "adv-estimator", string(prorl.Advantage.Estimator), "advantage estimator: grpo, rloo or reinforce_plus_plus_baseline")
	fs.BoolVar(&o.noStdNorm, "no-std-norm", prorl.Advantage.NoStdNorm, "GRPO advantages without the division by the group's standard deviation (Dr. GRPO)")

	fs.Float64Var(&o.lr, "lr", d.Optimizer.LR, "learning rate (AdamW; constant after --warmup)")
	fs.IntVar(&o.warmup, "warmup", d.WarmupSteps, "optimizer steps of linear learning-rate warm-up")
	fs.Float64Var(&o.beta1, "beta1", d.Optimizer.Beta1, "AdamW beta1")
	fs.Float64Var(&o.beta2, "beta2", d.Optimizer.Beta2, "AdamW beta2")
	fs.Float64Var(&o.weightDecay, "weight-decay", d.Optimizer.WeightDecay, "AdamW decoupled weight decay (not on norms and biases)")
	fs.Float64Var(&o.clipNorm, "clip-norm", d.Optimizer.ClipNorm, "global gradient-norm clipping; 0: off")
	fs.BoolVar(&o.recompute, "recompute", d.Recompute, "recompute each layer's activations in the backward pass (less memory, ~1/3 more compute)")
	fs.StringSliceVar(&o.freeze, "freeze", nil, "regular expressions over HF weight names not to train (e.g. '^model\\.embed_tokens\\.')")

	fs.IntVar(&o.resetEvery, "ref-reset-every", prorl.RefResetEvery, "reference reset (reference := policy, optimizer state zeroed) every so many steps; 0: never")
	fs.IntVar(&o.resetPlateau, "ref-reset-on-plateau", prorl.RefResetOnPlateau, "also reset the reference when held-out accuracy has not improved for this many evaluations; 0: never")

	fs.IntVar(&o.evalEvery, "eval-every", d.Eval.Every, "held-out evaluation every so many steps (and at the start and the end)")
	fs.IntVar(&o.evalSize, "eval-size", 200, "held-out problems per evaluation (at most)")
	fs.Float64Var(&o.evalTemp, "eval-temperature", flagDefault(d.Eval.Temperature), "sampling temperature of held-out evaluation (0: greedy)")
	fs.Float64Var(&o.evalTopP, "eval-top-p", flagDefault(d.Eval.TopP), "top-p of held-out evaluation")
	fs.IntVar(&o.evalSamples, "eval-samples", d.Eval.Samples, "samples per held-out problem: pass@1 is averaged over them, pass@k up to this k")
	return fs
}

// defaultJobFlags are the values the default job (no --model) uses where they differ from the
// ProRL defaults: a 2.4M-parameter model, short answers, minutes on 2 cores.
var defaultJobFlags = map[string]string{
	"steps": "200", "prompts": "16", "n": "8", "max-response": "24", "mini-batches": "2", "lr": "5e-5",
	"beta2": "0.99", "weight-decay": "0", "eval-samples": "4",
}

// usage writes --help: what the program does and each flag with one default, the default
// job's own value beside it where that differs.
func usage(w io.Writer, fs *pflag.FlagSet) {
	fmt.Fprint(w, "Usage: go run ./tools/train [--model DIR --data FILE] [--out RUNDIR] [flags]\n\n"+
		"Runs GRPO with the ProRL recipe. Without --model it trains the embedded default job.\n"+
		"Flags (defaults are ProRL's; the default job's own value follows where it differs):\n")
	saved := map[string]string{}
	for name, v := range defaultJobFlags {
		if f := fs.Lookup(name); f != nil {
			saved[name] = f.DefValue
			f.DefValue += "; default job: " + v
		}
	}
	fmt.Fprint(w, fs.FlagUsages())
	for name, v := range saved {
		fs.Lookup(name).DefValue = v
	}
}

// parseOptions parses args: the command line first, then --config for flags not given there,
// then the default job's values for flags still unset when there is no --model.
func parseOptions(args []string) (*options, *pflag.FlagSet, error) {
	o := new(options)
	fs := newFlags(o)
	if err := fs.Parse(args); err != nil {
		return o, fs, err
	}
	if fs.NArg() > 0 {
		return o, fs, fmt.Errorf("unexpected arguments %q (every setting is a --flag)", fs.Args())
	}
	if o.config != "" {
		if err := applyConfigFile(fs, o.config); err != nil {
			return o, fs, err
		}
	}
	if o.model == "" && !o.resume {
		if err := setSuiteFlags(o, fs); err != nil { // first: they win over defaultJobFlags
			return o, fs, err
		}
		for name, v := range defaultJobFlags {
			if !fs.Changed(name) {
				if err := fs.Set(name, v); err != nil {
					return o, fs, err
				}
			}
		}
	}
	return o, fs, nil
}

// The --task values.
const (
	taskDefault = "default"
	taskSuite   = "suite"
)

// suiteJobFlags are the values --task suite uses where they differ from the default job's:
// room for the worked answers of longer chains.
var suiteJobFlags = map[string]string{"max-response": "48"}

// setSuiteFlags checks --task and, for the suite, sets the flags of suiteJobFlags not given.
func setSuiteFlags(o *options, fs *pflag.FlagSet) error {
	switch o.task {
	case taskDefault:
		return nil
	case taskSuite:
	default:
		return fmt.Errorf("--task %q: want %s or %s", o.task, taskDefault, taskSuite)
	}
	for name, v := range suiteJobFlags {
		if !fs.Changed(name) {
			if err := fs.Set(name, v); err != nil {
				return err
			}
		}
	}
	return nil
}

func main() {
	terminal := clilog.Setup("train")
	o, fs, err := parseOptions(os.Args[1:])
	if errors.Is(err, pflag.ErrHelp) {
		usage(os.Stdout, fs)
		return
	}
	if err != nil {
		slog.Error(err.Error() + " (see --help)")
		os.Exit(2)
	}
	o.terminal = terminal
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			slog.Error("--cpuprofile", "err", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, fs); err != nil {
		pprof.StopCPUProfile()
		if errors.As(err, new(usageError)) {
			slog.Error(err.Error() + " (see --help)")
			os.Exit(2)
		}
		slog.Error(err.Error())
		if ctx.Err() != nil && o.out != "" {
			slog.Info(fmt.Sprintf("interrupted: continue with  go run ./tools/train --out %s --resume", o.out))
		}
		os.Exit(1)
	}
}

// flagValues returns every flag's value: a string, or a list of strings for list flags (what a
// run state keeps to resume with the same settings).
func flagValues(fs *pflag.FlagSet) map[string]any {
	m := map[string]any{}
	fs.VisitAll(func(f *pflag.Flag) {
		if v, ok := f.Value.(pflag.SliceValue); ok {
			m[f.Name] = append([]string{}, v.GetSlice()...) // [] rather than null when empty
			return
		}
		m[f.Name] = f.Value.String()
	})
	return m
}

// notFromFile are flags a config file or a saved run cannot set: they say where the run is.
var notFromFile = map[string]bool{"config": true, "resume": true, "resume-step": true, "out": true}

// applyConfigFile sets the flags not given on the command line from a YAML (or JSON) file
// whose keys are flag names (verl-style underscores are accepted: clip_high).
func applyConfigFile(fs *pflag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return applyValues(fs, m, "config file "+path)
}

// applyValues sets each flag named in m that the command line did not set.
func applyValues(fs *pflag.FlagSet, m map[string]any, from string) error {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, key := range names {
		name := strings.ReplaceAll(key, "_", "-")
		f := fs.Lookup(name)
		switch {
		case f == nil:
			return fmt.Errorf("%s: unknown setting %q (not a flag of tools/train; see --help)", from, key)
		case notFromFile[name]:
			return fmt.Errorf("%s: setting %q can only be given on the command line", from, key)
		case fs.Changed(name):
			continue
		}
		var err error
		switch v := m[key].(type) {
		case nil:
			err = errors.New("no value")
		case []any, []string:
			sv, ok := f.Value.(pflag.SliceValue)
			if !ok {
				err = errors.New("a list given to a flag that takes one value")
				break
			}
			var items []string
			if ss, ok := v.([]string); ok {
				items = ss
			} else {
				for _, it := range v.([]any) {
					items = append(items, fmt.Sprint(it))
				}
			}
			if err = sv.Replace(items); err == nil {
				f.Changed = true
			}
		case map[string]any:
			err = errors.New("a mapping given to a flag")
		default:
			err = fs.Set(name, fmt.Sprint(v))
		}
		if err != nil {
			return fmt.Errorf("%s: setting %q: %w", from, key, err)
		}
	}
	return nil
}
