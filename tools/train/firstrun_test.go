package main

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/quickstart"
	"github.com/prolong-rl/prolong/onnx"
)

func quickstartConfig() *engine.Config { return quickstart.ModelConfig() }

// The tests of this file follow a newcomer's first runs (issue 30, point 8): what the program
// says of the device, of a model directory, of data rows and of bad flags, and its progress.

// TestFlagErrorsBeforeWork: each bad flag is refused before anything is loaded or written,
// naming the flag, its value and the range: no device line, no model read (the --model path
// does not exist, and its error does not come), no run directory.
func TestFlagErrorsBeforeWork(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none")
	custom := []string{"--model", missing + "/model", "--data", missing + "/data.jsonl"}
	for _, tc := range []struct {
		args []string
		want string
		job  []string // nil: a --model run (custom)
	}{
		{[]string{"--lr", "-5e-5"}, "--lr: must be a finite value >= 0, got -5e-05", nil},
		{[]string{"--eval-every", "0"}, "--eval-every: must be >= 1, got 0", nil},
		{[]string{"--clip-low", "1"}, "--clip-low: must be in [0, 1) (the ratio is clipped at 1 - clip-low), got 1", nil},
		{[]string{"--clip-low", "-0.1"}, "--clip-low: must be in [0, 1) (the ratio is clipped at 1 - clip-low), got -0.1", nil},
		{[]string{"--clip-high", "-0.2"}, "--clip-high: must be a finite value >= 0, got -0.2", nil},
		{[]string{"--policy-loss", "clip-cov", "--clip-cov-lb", "5", "--clip-cov-ub", "1"}, "--clip-cov-ub: must be a finite value above --clip-cov-lb 5, got 1", nil},
		{[]string{"--policy-loss", "clip-cov", "--clip-cov-ratio", "0"}, "--clip-cov-ratio: must be in (0, 1], got 0", nil},
		{[]string{"--policy-loss", "gspo", "--gspo-clip-low", "1.5"}, "--gspo-clip-low: must be in [0, 1), got 1.5", nil},
		{[]string{"--policy-loss", "kl-cov", "--kl-cov-coef", "-1"}, "--kl-cov-coef: must be a finite value >= 0, got -1", nil},
		{[]string{"--n", "1"}, "--n: must be >= 2 (group advantages need a group), got 1", nil},
		{[]string{"--prompts", "0"}, "--prompts: must be >= 1, got 0", nil},
		{[]string{"--temperature", "0"}, "--temperature: must be a finite value > 0, got 0", nil},
		{[]string{"--temperature", "-1"}, "--temperature: must be a finite value > 0, got -1", nil},
		{[]string{"--eval-temperature", "-0.5"}, "--eval-temperature: must be a finite value >= 0, got -0.5", nil},
		{[]string{"--top-p", "1.5"}, "--top-p: must be in [0, 1] (0: off), got 1.5", nil},
		{[]string{"--eval-top-p", "-0.1"}, "--eval-top-p: must be in [0, 1] (0: off), got -0.1", nil},
		{[]string{"--max-response", "0"}, "--max-response: must be >= 1, got 0", nil},
		{[]string{"--max-response", "8", "--overlong-buffer", "8"}, "--overlong-buffer: must be in [0, --max-response 8), got 8", nil},
		{[]string{"--overlong-penalty", "-1"}, "--overlong-penalty: must be a finite value >= 0, got -1", nil},
		{[]string{"--mini-batches", "0"}, "--mini-batches: must be >= 1, got 0", nil},
		{[]string{"--micro-batch-tokens", "0"}, "--micro-batch-tokens: must be >= 1, got 0", nil},
		{[]string{"--max-sampling-rounds", "0"}, "--max-sampling-rounds: must be >= 1 with dynamic sampling, got 0", nil},
		{[]string{"--dual-clip", "0.5"}, "--dual-clip: must be 0 (off) or a finite value > 1, got 0.5", nil},
		{[]string{"--kl-coef", "-0.001"}, "--kl-coef: must be a finite value >= 0, got -0.001", nil},
		{[]string{"--entropy-coef", "NaN"}, "--entropy-coef: must be a finite value, got NaN", nil},
		{[]string{"--tis-cap", "-2"}, "--tis-cap: must be a finite value >= 0, got -2", nil},
		{[]string{"--beta1", "1"}, "--beta1: must be in [0, 1), got 1", nil},
		{[]string{"--beta2", "-0.5"}, "--beta2: must be in [0, 1), got -0.5", nil},
		{[]string{"--weight-decay", "-0.01"}, "--weight-decay: must be a finite value >= 0, got -0.01", nil},
		{[]string{"--clip-norm", "-1"}, "--clip-norm: must be a finite value >= 0, got -1", nil},
		{[]string{"--warmup", "-1"}, "--warmup: must be >= 0, got -1", nil},
		{[]string{"--ref-reset-every", "-1"}, "--ref-reset-every: must be >= 0, got -1", nil},
		{[]string{"--ref-reset-on-plateau", "-3"}, "--ref-reset-on-plateau: must be >= 0, got -3", nil},
		{[]string{"--eval-size", "0"}, "--eval-size: must be >= 1, got 0", nil},
		{[]string{"--eval-samples", "0"}, "--eval-samples: must be >= 1, got 0", nil},
		{[]string{"--val-fraction", "1"}, "--val-fraction: must be in [0, 1), got 1", nil},
		{[]string{"--max-prompt-tokens", "0"}, "--max-prompt-tokens: must be >= 1, got 0", nil},
		{[]string{"--reward-timeout", "0s"}, "--reward-timeout: must be a positive duration, got 0s", nil},
		{[]string{"--steps", "-1"}, "--steps: must be >= 0, got -1", nil},
		{[]string{"--save-every", "-1"}, "--save-every: must be >= 0, got -1", nil},
		{[]string{"--keep", "-1"}, "--keep: must be >= 0, got -1", nil},
		{[]string{"--max-staleness", "2"}, "--max-staleness 2: want 0 or 1 (rollouts run at most one step ahead)", nil},
		{[]string{"--overlap", "on", "--max-staleness", "0"}, "--overlap on needs --max-staleness 1", nil},
		{[]string{"--policy-loss", "ppo"}, "--policy-loss: ", nil},
		{[]string{"--kl-estimator", "k4"}, "--kl-estimator: ", nil},
		{[]string{"--loss-agg", "sum"}, `--loss-agg "sum": want token-mean, seq-mean-token-sum or seq-mean-token-mean`, nil},
		{[]string{"--adv-estimator", "ppo"}, `--adv-estimator "ppo": want grpo, rloo or reinforce_plus_plus_baseline`, nil},
		{[]string{"--matmul-precision", "fp16"}, `--matmul-precision: matmul precision "fp16": want auto, fp32 or bf16`, nil},
		{[]string{"--freeze", "(embed"}, `--freeze "(embed": error parsing regexp`, nil},
		{[]string{"--reward-cmd", "true", "--reward-url", "http://127.0.0.1:1"}, "--reward-cmd and --reward-url: give one", nil},
		{[]string{"--reward-for", "math"}, "--reward-for names the data_sources of --reward-cmd or --reward-url", nil},
		{[]string{"--sft-steps", "0"}, "--sft-steps: must be >= 1, got 0", []string{}},
		{[]string{"--sft-lr", "0"}, "--sft-lr: must be a finite value > 0, got 0", []string{}},
		{[]string{"--sft-noise", "2"}, "--sft-noise: must be in [0, 1], got 2", []string{}},
		{[]string{"--train-problems", "0"}, "--train-problems: must be >= 1, got 0", []string{}},
		{[]string{"--lr", "-1"}, "--lr: must be a finite value >= 0, got -1", []string{}},
		{[]string{"--data", missing}, "--model and --data go together", []string{}},
		{[]string{"--sft"}, "--sft builds the default job's model; it does not apply with --model", nil},
	} {
		out := filepath.Join(t.TempDir(), "run")
		job := tc.job
		if job == nil {
			job = custom
		}
		args := append(append([]string{"--quiet", "--out", out}, job...), tc.args...)
		stdout, log, err := captured(t, args...)
		name := strings.Join(tc.args, " ")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", name, err, tc.want)
		}
		if !errors.As(err, new(usageError)) {
			t.Errorf("%s: %v is not a usage error (exit status 2)", name, err)
		}
		if strings.Contains(err.Error(), missing+"/model") {
			t.Errorf("%s: the model was read first: %v", name, err)
		}
		if _, serr := os.Stat(out); !errors.Is(serr, os.ErrNotExist) {
			t.Errorf("%s: the run directory was created (%v)", name, serr)
		}
		if stdout != "" || log != "" {
			t.Errorf("%s: work started:\n%s%s", name, stdout, log)
		}
	}
	// Every bad flag is named at once.
	_, _, err := captured(t, append(custom, "--quiet", "--out", filepath.Join(t.TempDir(), "run"), "--lr", "-1", "--n", "1", "--eval-every", "0")...)
	want := "--n: must be >= 2 (group advantages need a group), got 1\n--lr: must be a finite value >= 0, got -1\n--eval-every: must be >= 1, got 0"
	if err == nil || err.Error() != want {
		t.Errorf("three bad flags:\n got %v\nwant %s", err, want)
	}
}

// TestFlagRangesCoverGRPO: whatever grpo.Run (its run, trainer and loss checks) and the
// engine's AdamW refuse, the flag check refuses first, naming the flag: every numeric flag of
// the run, under each policy loss, at values in and out of range, is given to grpo.Run on a
// tiny model whenever validate accepts it, and grpo.Run must get as far as the first rollout
// (the run's context is cancelled there).
func TestFlagRangesCoverGRPO(t *testing.T) {
	c := &engine.Config{ModelType: "qwen2", VocabSize: 24, HiddenSize: 16, NumHiddenLayers: 1, NumAttentionHeads: 2,
		NumKeyValueHeads: 1, HeadDim: 8, IntermediateSize: 32, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 1 << 15}
	weights := engine.RandomWeights(c, 1, 0.02)
	backend := cpu.New()
	prompts := []grpo.Prompt{{Tokens: []int32{1, 2, 3}, Kind: "t"}, {Tokens: []int32{4, 5}, Kind: "t"}}
	// Values tried for each flag: at and around the ends of every range validate knows.
	floats := []float64{-1, -1e-9, 0, 0.5, 1, 1.5, math.Inf(1), math.NaN()}
	ints := []int{-2, -1, 0, 1, 2}
	// Flags that never reach grpo.Run or the engine (the data, the default job's warm start, the
	// program's own files and timeouts): validate's own ranges, tested above.
	notRun := map[string]bool{"val-fraction": true, "max-prompt-tokens": true, "reward-timeout": true, "resume-step": true,
		"sft-steps": true, "sft-lr": true, "sft-noise": true, "train-problems": true, "eval-size": true, "seed": true,
		"keep": true, "max-staleness": true}
	dir := t.TempDir()
	runs, refused := 0, 0
	for _, mode := range []string{"grpo", "gspo", "clip-cov", "kl-cov"} {
		o0, fs0, err := parseOptions([]string{"--model", "m", "--data", "d", "--policy-loss", mode})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		fs0.VisitAll(func(f *pflag.Flag) {
			if (f.Value.Type() == "float64" || f.Value.Type() == "int") && !notRun[f.Name] {
				names = append(names, f.Name)
			}
		})
		_ = o0
		for _, name := range names {
			var values []string
			if fs0.Lookup(name).Value.Type() == "float64" {
				for _, v := range floats {
					values = append(values, strconv.FormatFloat(v, 'g', -1, 64))
				}
			} else {
				for _, v := range ints {
					values = append(values, strconv.Itoa(v))
				}
			}
			for _, v := range values {
				o, _, err := parseOptions([]string{"--model", "m", "--data", "d", "--policy-loss", mode, "--steps", "1", "--" + name, v})
				if err != nil {
					t.Fatal(err)
				}
				verr := validate(o)
				if verr != nil {
					if !strings.Contains(verr.Error(), "--"+name) {
						t.Errorf("%s --%s %s: refused without naming the flag: %v", mode, name, v, verr)
					}
					continue
				}
				overlap, err := overlapOn(*o)
				if err != nil {
					t.Fatal(err)
				}
				o.Out = filepath.Join(dir, strconv.Itoa(runs))
				runs++
				cfg, err := flagsConfig(*o, overlap)
				if err != nil {
					t.Fatalf("%s --%s %s: validated, but %v", mode, name, v, err)
				}
				cfg.Backend = backend
				ctx, cancel := context.WithCancel(context.Background())
				_, err = grpo.Run(ctx, cfg, func(context.Context, bool) (*grpo.Job, error) {
					cancel() // the run stops at its first rollout, after every check
					return &grpo.Job{Model: c, Weights: weights, Train: prompts, Held: prompts[:1],
						Reward: func(context.Context, grpo.Prompt, string) (float64, error) { return 0, nil },
						Decode: func([]int32) string { return "" }, StopTokens: []int32{0}}, nil
				})
				cancel()
				if !errors.Is(err, context.Canceled) {
					refused++
					t.Errorf("%s --%s %s: validated, but grpo.Run refuses it: %v", mode, name, v, err)
				}
			}
		}
	}
	if runs < 300 {
		t.Errorf("only %d settings reached grpo.Run", runs)
	}
	t.Logf("%d settings accepted by validate ran into grpo.Run; %d refused there", runs, refused)
}

// noModelHere is what tools/train and tools/rollout-server say of a directory without a model.
const noModelHere = ": no model here (want model.onnx, config.json with model.safetensors, or a training run's state/)"

// TestFirstRunMessages: on a machine without a GPU the device line says so in a few words
// (not the library search of the CUDA driver, which --device cuda keeps); a directory without
// a model gets the rollout server's message, and one holding model.onnx without config.json
// trains; a row without data_source names --default-kind.
func TestFirstRunMessages(t *testing.T) {
	empty := t.TempDir()
	stdout, _, err := captured(t, "--quiet", "--model", empty, "--data", byoData(t, fiveRows...), "--out", filepath.Join(t.TempDir(), "run"))
	if err == nil || err.Error() != "--model "+empty+noModelHere {
		t.Errorf("--model of an empty directory:\n got %v\nwant --model %s%s", err, empty, noModelHere)
	}
	if strings.HasPrefix(stdout, "device: cuda (") { // a GPU machine: the line without one is checked in engine and cuda too
		if !strings.HasSuffix(stdout, " (auto: cuda opened)\n") {
			t.Errorf("device line on a GPU machine: %q", stdout)
		}
	} else {
		d, err := engine.OpenDevice("cpu", engine.DeviceOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if want := "device: " + d.Info.Name + ", no GPU found\n"; stdout != want {
			t.Errorf("device line on a machine without a GPU:\n got %q\nwant %q", stdout, want)
		}
	}

	// model.onnx and its tokenizer, no config.json: it trains.
	onnxDir := t.TempDir()
	c := quickstartConfig()
	if err := onnx.Export(filepath.Join(onnxDir, "model.onnx"), c, engine.RandomWeights(c, 1, 0.02), onnx.ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := quickstartTokenizerFiles(onnxDir); err != nil {
		t.Fatal(err)
	}
	if _, _, err := captured(t, "--quiet", "--device", "cpu", "--model", onnxDir, "--data", byoData(t, fiveRows...), "--steps", "1",
		"--prompts", "2", "--n", "2", "--max-response", "4", "--out", filepath.Join(t.TempDir(), "run")); err != nil {
		t.Errorf("--model of a directory with model.onnx and no config.json: %v", err)
	}

	noSource := byoData(t, `{"prompt": "<bos>1+2=", "ground_truth": "3"}`)
	_, _, err = captured(t, "--quiet", "--device", "cpu", "--model", onnxDir, "--data", noSource, "--steps", "1", "--out", filepath.Join(t.TempDir(), "run"))
	want := noSource + ":1: data_source: missing: set it in each row, or give rows without one a default kind (tools/train --default-kind KIND)"
	if err == nil || err.Error() != want {
		t.Errorf("a row without data_source:\n got %v\nwant %s", err, want)
	}
}

// heldOutRe reads a plain progress line of the GRPO steps.
var heldOutRe = regexp.MustCompile(`INFO  train: GRPO (\d+)/(\d+) reward \d+\.\d\d(?: held-out (\d+\.\d)%(?: @ step (\d+))?)?\n`)

// TestProgressSteps: the progress of a run shows the held-out accuracy with the step it was
// measured at (it repeated the last one as if it were current), and a resumed run counts its
// steps from where it stopped, out of the run's total (it counted "GRPO 1/2" for steps 5-6).
func TestProgressSteps(t *testing.T) {
	var args []string
	for _, a := range shortRun {
		if a != "--quiet" {
			args = append(args, a)
		}
	}
	dir := filepath.Join(t.TempDir(), "run")
	_, log1, err := captured(t, append(args, "--out", dir, "--save-every", "2")...)
	if err != nil {
		t.Fatal(err)
	}
	// A bad flag given to a resumed run is refused before it goes on, as for a new run.
	if _, _, err := captured(t, "--out", dir, "--resume", "--steps", "6", "--eval-every", "0"); err == nil || err.Error() != "--eval-every: must be >= 1, got 0" {
		t.Errorf("--resume --eval-every 0: %v", err)
	}
	_, log2, err := captured(t, "--out", dir, "--resume", "--steps", "6")
	if err != nil {
		t.Fatal(err)
	}
	recs, err := grpo.ReadMetrics(filepath.Join(dir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	acc := func(step int) string { return strconv.FormatFloat(100*recs[step].Eval.Accuracy, 'f', 1, 64) }
	// --eval-every 2 over steps 1-4, then steps 5-6 resumed from step 4's state (its evaluation
	// is not this session's: none shown until step 6 evaluates).
	want := [][]string{
		{"1", "4", acc(0), "0"}, {"2", "4", acc(2), ""}, {"3", "4", acc(2), "2"}, {"4", "4", acc(4), ""},
		{"5", "6", "", ""}, {"6", "6", acc(6), ""},
	}
	var got [][]string
	for _, m := range heldOutRe.FindAllStringSubmatch(log1+log2, -1) {
		got = append(got, m[1:])
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("progress lines (step, of, held-out, measured at):\n got %q\nwant %q\nlog:\n%s%s", got, want, log1, log2)
	}
}

// TestProgressBarResumed: a bar that starts part-way shows the whole run's count and its own
// estimate of the time left.
func TestProgressBarResumed(t *testing.T) {
	var buf strings.Builder
	p := newProgressTo(&buf, options{terminal: true}, 40, 50, "GRPO")
	p.Step("reward 0.50")
	p.Finish()
	if s := buf.String(); !strings.Contains(s, "(41/50") || !strings.Contains(s, "GRPO reward 0.50 (") || !strings.Contains(s, "s left)") {
		t.Errorf("resumed bar: %q", s)
	}
}
