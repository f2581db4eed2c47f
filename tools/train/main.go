// Command train runs the ProRL recipe. With no arguments it trains the project's default job on
// the CPU: it builds the small default model by a seeded supervised warm start on the default
// task (short multi-step arithmetic), then improves it with GRPO (clip-higher, k3 KL to a
// reference policy, dynamic sampling, a reference reset), evaluating on held-out problems,
// logging metrics.jsonl and drawing PNG plots in the run directory.
//
//	go run ./tools/train                    # the default job
//	go run ./tools/train --sft              # only the supervised warm start, with its accuracy
//	go run ./tools/train --steps 50 --seed 2 --out runs/try
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/quickstart"
	"github.com/prolong-rl/prolong/grpo/tasks"
	"github.com/prolong-rl/prolong/onnx"
)

type options struct {
	out            string
	seed           uint64
	steps          int
	sftOnly        bool
	sftSteps       int
	sftLR          float64
	evalEvery      int
	evalSize       int
	resetEvery     int
	lr             float64
	prompts        int
	samples        int
	noDynamic      bool
	quiet          bool
	klCoef         float64
	clipHigh       float64
	trainProblems  int
	maxResponseLen int
	evalTemp       float64
	evalTopP       float64
	evalSamples    int
	resetPlateau   int
	cot            bool
	cpuProfile     string
	sftNoise       float64
}

// newFlags declares every flag of the program into o, with the defaults of the default job.
func newFlags(o *options) *pflag.FlagSet {
	fs := pflag.NewFlagSet("train", pflag.ContinueOnError)
	fs.StringVar(&o.out, "out", "", "run directory (default runs/<date-time>)")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of everything: model init, data, sampling")
	fs.IntVar(&o.steps, "steps", 200, "GRPO steps")
	fs.BoolVar(&o.sftOnly, "sft", false, "run only the supervised warm start and report its held-out accuracy")
	fs.IntVar(&o.sftSteps, "sft-steps", quickstart.DefaultSFT().Steps, "optimizer steps of the supervised warm start")
	fs.Float64Var(&o.sftLR, "sft-lr", quickstart.DefaultSFT().LR, "peak learning rate of the supervised warm start (cosine schedule)")
	fs.IntVar(&o.evalEvery, "eval-every", 25, "held-out evaluation every so many steps")
	fs.IntVar(&o.evalSize, "eval-size", 200, "held-out problems per evaluation")
	fs.Float64Var(&o.evalTemp, "eval-temperature", 0.6, "sampling temperature of held-out evaluation (ProRL: 0.6; 0: greedy)")
	fs.Float64Var(&o.evalTopP, "eval-top-p", 0.95, "top-p of held-out evaluation (ProRL: 0.95)")
	fs.IntVar(&o.evalSamples, "eval-samples", 4, "samples per held-out problem; accuracy is pass@1 averaged over them")
	fs.IntVar(&o.resetEvery, "ref-reset-every", 100, "reference reset (reference := policy, optimizer state zeroed) every so many steps; 0: never")
	fs.IntVar(&o.resetPlateau, "ref-reset-on-plateau", 0, "also reset the reference when held-out accuracy has not improved for this many evaluations; 0: never")
	fs.BoolVar(&o.cot, "cot", quickstart.DefaultSFT().CoT, "warm start on worked answers (\"8+7-5=\" -> \"15-5=10 <answer>10</answer>\")")
	fs.Float64Var(&o.sftNoise, "sft-noise", quickstart.DefaultSFT().NoiseFrac, "share of warm-start targets whose final answer is replaced by a wrong one")
	fs.Float64Var(&o.lr, "lr", 5e-5, "GRPO learning rate (AdamW, constant)")
	fs.IntVar(&o.prompts, "prompts", 16, "prompts per rollout step (groups)")
	fs.IntVar(&o.samples, "n", 8, "samples per prompt")
	fs.BoolVar(&o.noDynamic, "no-dynamic-sampling", false, "keep groups whose rewards are all equal")
	fs.Float64Var(&o.klCoef, "kl-coef", grpo.DefaultKLCoef, "weight of the k3 KL penalty to the reference")
	fs.Float64Var(&o.clipHigh, "clip-high", grpo.DefaultClipHigh, "upper clip bound eps_high (clip-higher; 0.2 is plain PPO/GRPO)")
	fs.IntVar(&o.trainProblems, "train-problems", 3000, "distinct training problems")
	fs.IntVar(&o.maxResponseLen, "max-response", 24, "maximum response tokens")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress bar")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile (go tool pprof) to this file")
	return fs
}

func main() {
	var o options
	fs := newFlags(&o)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		os.Exit(2)
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			slog.Error("cpu profile", "err", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, o); err != nil {
		pprof.StopCPUProfile()
		slog.Error("train failed", "err", err)
		os.Exit(1)
	}
}

// promptStream hands out the training prompts in a seeded order, reshuffled every epoch.
type promptStream struct {
	ps    []grpo.Prompt
	order []int
	pos   int
	epoch uint64
	seed  uint64
}

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

func run(ctx context.Context, o options) error {
	if o.out == "" {
		o.out = filepath.Join("runs", time.Now().Format("20060102-150405"))
	}
	if _, err := os.Stat(filepath.Join(o.out, "metrics.jsonl")); err == nil {
		return fmt.Errorf("run directory %s already holds a run (metrics.jsonl); choose another --out", o.out)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	tok := quickstart.NewTokenizer()
	f := quickstart.Task()
	heldTasks, err := tasks.Generate(f, tasks.GenerateConfig{Split: tasks.HeldOut, N: o.evalSize, Seed: o.seed + 1000})
	if err != nil {
		return err
	}
	held, err := tok.Prompts(heldTasks)
	if err != nil {
		return err
	}
	trainTasks, err := tasks.Generate(f, tasks.GenerateConfig{Split: tasks.Train, N: o.trainProblems, Seed: o.seed + 2000})
	if err != nil {
		return err
	}
	train, err := tok.Prompts(trainTasks)
	if err != nil {
		return err
	}

	// 1. The default model: a seeded supervised warm start.
	fmt.Printf("default model: Qwen2-shaped, %.2fM parameters; task %s (train %d, held-out %d problems)\n",
		float64(quickstart.ModelConfig().NumParams())/1e6, quickstart.TaskSpec, len(train), len(held))
	sft := quickstart.DefaultSFT()
	sft.Seed, sft.Steps, sft.LR, sft.CoT, sft.NoiseFrac = o.seed, o.sftSteps, o.sftLR, o.cot, o.sftNoise
	bar := newBar(o, sft.Steps, "warm start (SFT)")
	sft.Progress = func(step int, loss float64) {
		bar.Describe(fmt.Sprintf("warm start (SFT) loss %.3f", loss))
		bar.Add(1)
	}
	t0 := time.Now()
	policy, err := quickstart.SFT(ctx, sft)
	if err != nil {
		return err
	}
	bar.Finish()
	gen, err := engine.NewGenerator(policy.Model, engine.GeneratorOptions{})
	if err != nil {
		return err
	}
	defer gen.Close()

	cfg := grpo.DefaultConfig()
	cfg.Seed = o.seed
	cfg.PromptsPerStep, cfg.SamplesPerPrompt = o.prompts, o.samples
	cfg.MaxResponseTokens = o.maxResponseLen
	cfg.StopTokens = []int32{tok.ID(quickstart.EOS)}
	cfg.DynamicSampling = !o.noDynamic
	cfg.RefResetEvery = o.resetEvery
	cfg.RefResetOnPlateau = o.resetPlateau
	cfg.Loss.KLCoef = o.klCoef
	cfg.Loss.ClipHigh = o.clipHigh
	if err := policy.SetOptimizer(engine.AdamWConfig{LR: o.lr, Beta2: 0.99, ClipNorm: 1}); err != nil {
		return err
	}
	g, err := grpo.NewTrainer(policy, grpo.EngineRollouts{Gen: gen}, &promptStream{ps: train, seed: o.seed}, quickstart.Reward(), tok.Decode, cfg)
	if err != nil {
		return err
	}
	eval := func() (*grpo.EvalResult, error) {
		n := o.evalSamples
		if o.evalTemp == 0 {
			n = 1
		}
		return g.Evaluate(ctx, held, n, float32(o.evalTemp), float32(o.evalTopP))
	}
	before, err := eval()
	if err != nil {
		return err
	}
	fmt.Printf("after the warm start (%.0fs): held-out accuracy %.1f%% (pass@1 at temperature %g, top-p %g)\n",
		time.Since(t0).Seconds(), 100*before.Accuracy, o.evalTemp, o.evalTopP)
	if o.sftOnly {
		return nil
	}

	// 2. GRPO.
	log, err := grpo.OpenMetricsLog(filepath.Join(o.out, "metrics.jsonl"))
	if err != nil {
		return err
	}
	defer log.Close()
	if err := log.Append(grpo.Record{Metrics: &grpo.Metrics{Step: 0}, Eval: before}); err != nil {
		return err
	}
	if _, err := g.AfterEval(before, nil); err != nil {
		return err
	}
	var resets []int
	var exported []string
	export := func(step int) error {
		dir, err := exportCheckpoint(o.out, step, policy.Model)
		if err == nil {
			exported = append(exported, dir)
		}
		return err
	}
	g.OnReset = func(step int) error {
		resets = append(resets, step)
		return export(step)
	}
	bar = newBar(o, o.steps, "GRPO")
	t1 := time.Now()
	last := before
	for s := 1; s <= o.steps; s++ {
		m, err := g.Step(ctx)
		if err != nil {
			return err
		}
		rec := grpo.Record{Metrics: m}
		if s%o.evalEvery == 0 || s == o.steps {
			if rec.Eval, err = eval(); err != nil {
				return err
			}
			last = rec.Eval
			if _, err := g.AfterEval(rec.Eval, m); err != nil {
				return err
			}
		}
		if err := log.Append(rec); err != nil {
			return err
		}
		bar.Describe(fmt.Sprintf("GRPO reward %.2f held-out %.1f%%", m.RewardMean, 100*last.Accuracy))
		bar.Add(1)
	}
	bar.Finish()
	if len(resets) == 0 || resets[len(resets)-1] != o.steps {
		if err := export(o.steps); err != nil {
			return err
		}
	}
	recs, err := grpo.ReadMetrics(filepath.Join(o.out, "metrics.jsonl"))
	if err != nil {
		return err
	}
	plots, err := grpo.PlotMetrics(recs, o.out)
	if err != nil {
		return err
	}
	fmt.Printf("\nheld-out accuracy: %.1f%% -> %.1f%% after %d GRPO steps (%.0fs); reference resets at steps %v\n",
		100*before.Accuracy, 100*last.Accuracy, o.steps, time.Since(t1).Seconds(), resets)
	fmt.Printf("run directory %s:\n  metrics.jsonl\n", o.out)
	for _, p := range plots {
		fmt.Printf("  %s\n", filepath.Base(p))
	}
	for _, d := range exported {
		rel, _ := filepath.Rel(o.out, d)
		fmt.Printf("  %s/{model.safetensors,config.json,model.onnx}\n", rel)
	}
	return nil
}

// exportCheckpoint writes the policy at a step under out/checkpoints/step-NNNNNN as a Hugging
// Face directory (model.safetensors, config.json, generation_config.json) and as ONNX
// (model.onnx, KV-cache inputs and outputs, loadable by ONNX Runtime).
func exportCheckpoint(out string, step int, m *engine.Model) (string, error) {
	dir := filepath.Join(out, "checkpoints", fmt.Sprintf("step-%06d", step))
	w, err := m.HostWeights()
	if err != nil {
		return "", err
	}
	if err := checkpoints.SaveHF(dir, m.Config, w, checkpoints.F32); err != nil {
		return "", err
	}
	return dir, onnx.Export(filepath.Join(dir, "model.onnx"), m.Config, w, onnx.ExportOptions{})
}

// shuffled returns a seeded permutation of 0..n-1 for one epoch.
func shuffled(n int, seed, epoch uint64) []int {
	r := rand.New(rand.NewPCG(seed, epoch))
	return r.Perm(n)
}
func newBar(o options, n int, what string) *progressbar.ProgressBar {
	if o.quiet {
		return progressbar.DefaultSilent(int64(n), what)
	}
	return progressbar.NewOptions(n, progressbar.OptionSetDescription(what), progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(30), progressbar.OptionSetWriter(os.Stderr), progressbar.OptionClearOnFinish(),
		progressbar.OptionShowElapsedTimeOnFinish())
}
