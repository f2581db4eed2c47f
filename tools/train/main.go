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
	"github.com/prolong-rl/prolong/grpo/knob"
	"github.com/prolong-rl/prolong/grpo/quickstart"
	"github.com/prolong-rl/prolong/tools/internal/clilog"
)

// options are the program's flags. Each is defined once, by the tags of its field (package
// grpo/knob): its flag name, default, range and help. The run's own knobs are those of
// grpo.RunConfig (Run), tagged there; the fields here are the program's: what to train on,
// where the run is, the default job.
type options struct {
	// What to train on.
	Model           string        `flag:"model" help:"model to train: a Hugging Face directory (config.json, *.safetensors, tokenizer.json), a .onnx file, or a Hugging Face model id ORG/NAME[@REVISION] (from the Hugging Face cache, downloaded when missing; HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE apply); empty: the default job's model"`
	Data            string        `flag:"data" help:"training prompts: JSONL or Parquet (fields prompt or messages, data_source, ground_truth / reward_model.ground_truth, extra_info)"`
	ValData         string        `flag:"val-data" help:"held-out prompts (same format); empty: --val-fraction of --data"`
	ValFraction     float64       `flag:"val-fraction" default:"0.02" check:"[0,1)" help:"share of --data held out for evaluation when --val-data is not given"`
	DefaultKind     string        `flag:"default-kind" help:"task kind (reward) of rows without data_source; empty: such rows are errors"`
	MaxPromptTokens int           `flag:"max-prompt-tokens" default:"1024" check:">=1" help:"prompts longer than this many tokens are dropped (named in the log)"`
	MaxLineBytes    int           `flag:"max-line-bytes" default:"8388608" check:">=1" help:"data lines (Parquet rows) longer than this many bytes are skipped unread (named in the log)"`
	NoChatTemplate  bool          `flag:"no-chat-template" help:"feed prompt text as is, without the tokenizer's chat template"`
	RewardCmd       string        `flag:"reward-cmd" help:"a reward program, run by /bin/sh -c, that scores responses: JSON lines on its stdin and stdout, a batch a line (docs/reward-programs.md)"`
	RewardURL       string        `flag:"reward-url" help:"a reward server that scores responses: each batch POSTed as JSON (docs/reward-programs.md)"`
	RewardFor       []string      `flag:"reward-for" help:"data_sources that --reward-cmd or --reward-url scores (empty: every data_source of the data; the built-in rewards score the others)"`
	RewardTimeout   time.Duration `flag:"reward-timeout" default:"1m" check:">0" help:"time a reward program or server has to answer one batch"`
	RolloutServers  []string      `flag:"rollout-servers" help:"rollout servers (URLs of tools/rollout-server) to generate with instead of the in-process engine; weights are pushed after each step"`
	Overlap         string        `flag:"overlap" default:"auto" help:"overlapped rollouts: generate step s+1's rollouts while step s trains, on weights one step stale (corrected by --tis-cap, 2 unless given): on, off, or auto (on with --rollout-servers and --max-staleness 1; the in-process engine cannot gain on the CPU)"`

	// The run.
	Out             string `flag:"out" help:"run directory (default runs/<date-time>)"`
	Config          string `flag:"config" help:"YAML or JSON file of flag values (keys are flag names); flags given on the command line win"`
	Resume          bool   `flag:"resume" help:"continue the run in --out from its latest run state (flags given now override the saved ones)"`
	ResumeStep      int    `flag:"resume-step" default:"-1" check:">=-1" want:"must be a saved step (>= 0), or -1 for the latest" help:"with --resume: continue from this saved step instead of the latest (an older run state kept by --keep)"`
	Quiet           bool   `flag:"quiet" help:"no progress bar"`
	CPUProfile      string `flag:"cpuprofile" help:"write a CPU profile (go tool pprof) to this file"`
	Device          string `flag:"device" default:"auto" help:"where the policy trains and generates: auto (the GPU when one is there, else the CPU), cpu or cuda"`
	MatmulPrecision string `flag:"matmul-precision" default:"auto" help:"matmul arithmetic: auto (the CPU trains in fp32; CUDA multiplies in bf16 with fp32 sums), fp32 (exact fp32 everywhere; on CUDA as --device cuda-fp32), or bf16 (on the CPU training and rollout matmuls as bf16 dot products with fp32 sums, like autocast; needs a CPU with AVX512_BF16 or AMX)"`
	terminal        bool   // stderr is a terminal: progress bars (else plain progress lines)

	// The default job's warm start (defaults: quickstart.DefaultSFT's).
	SFTOnly       bool    `flag:"sft" help:"default job: run only the supervised warm start and report its held-out accuracy"`
	SFTSteps      int     `flag:"sft-steps" check:">=1" help:"default job: optimizer steps of the supervised warm start"`
	SFTLR         float64 `flag:"sft-lr" check:">0" help:"default job: peak learning rate of the warm start (cosine schedule)"`
	CoT           bool    `flag:"cot" help:"default job: warm start on worked answers (\"8+7-5=\" -> \"15-5=10 <answer>10</answer>\")"`
	SFTNoise      float64 `flag:"sft-noise" check:"[0,1]" help:"default job: share of warm-start targets whose final answer is replaced by a wrong one"`
	TrainProblems int     `flag:"train-problems" default:"3000" check:">=1" help:"default job: distinct training problems"`
	Task          string  `flag:"task" default:"default" help:"default job: the tasks: default ({TaskSpec}) or suite (arithmetic chains and countdown, held out at and above the training difficulty, per family: docs/prolonged.md; --eval-size is per held-out set)"`
	WriteData     string  `flag:"write-task-data" help:"write the default task's training and held-out prompts to DIR/train.jsonl and DIR/heldout.jsonl (the --data format) and exit"`

	// Run is the run's configuration: every knob of GRPO, the optimizer and the evaluation.
	Run grpo.RunConfig

	// EvalSize is the held-out set's size.
	EvalSize int `flag:"eval-size" default:"200" check:">=1" help:"held-out problems per evaluation (at most)"`
}

// newOptions returns the options at their defaults: the default tags, grpo.DefaultRunConfig
// (the ProRL recipe, docs/recipe.md) and quickstart.DefaultSFT. The default job (no
// --model) scales some of them down to a few-minute CPU run, see defaultJobFlags.
func newOptions() *options {
	o := new(options)
	knob.Defaults(o)
	o.Run = grpo.DefaultRunConfig()
	sft := quickstart.DefaultSFT()
	o.SFTSteps, o.SFTLR, o.CoT, o.SFTNoise = sft.Steps, sft.LR, sft.CoT, sft.NoiseFrac
	return o
}

// newFlags declares every flag of the program, bound to the fields of o (knob.Bind), with
// their current values as defaults.
func newFlags(o *options) *pflag.FlagSet {
	fs := pflag.NewFlagSet("train", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard) // main prints --help (on stdout) and errors (on stderr) itself
	fs.Usage = func() {}
	knob.Bind(fs, o)
	task := fs.Lookup("task")
	task.Usage = strings.ReplaceAll(task.Usage, "{TaskSpec}", quickstart.TaskSpec)
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
	o := newOptions()
	fs := newFlags(o)
	if err := fs.Parse(args); err != nil {
		return o, fs, err
	}
	if fs.NArg() > 0 {
		return o, fs, fmt.Errorf("unexpected arguments %q (every setting is a --flag)", fs.Args())
	}
	if o.Config != "" {
		if err := applyConfigFile(fs, o.Config); err != nil {
			return o, fs, err
		}
	}
	if o.Model == "" && !o.Resume {
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
	switch o.Task {
	case taskDefault:
		return nil
	case taskSuite:
	default:
		return fmt.Errorf("--task %q: want %s or %s", o.Task, taskDefault, taskSuite)
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
	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
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
		if ctx.Err() != nil && o.Out != "" {
			slog.Info(fmt.Sprintf("interrupted: continue with  go run ./tools/train --out %s --resume", o.Out))
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
