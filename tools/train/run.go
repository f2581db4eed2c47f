package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	_ "github.com/prolong-rl/prolong/cuda" // registers --device cuda
	"github.com/prolong-rl/prolong/engine" // also registers --device cpu, auto's fallback
	"github.com/prolong-rl/prolong/engine/dist"
	"github.com/prolong-rl/prolong/grpo"
)

// run trains: a new run in o.Out, or (o.Resume) the continuation of the one there. The run
// itself (steps, evaluation, metrics, run states, exports; the run directory's layout) is
// grpo.Run's; run turns the flags into its configuration and reports.
func run(ctx context.Context, o *options, fs *pflag.FlagSet) error {
	switch {
	case o.Resume && o.Out == "":
		return usageError{errors.New("--resume needs --out, the run directory to continue")}
	case !o.Resume && fs.Changed("resume-step"):
		return usageError{errors.New("--resume-step goes with --resume")}
	case !o.Resume:
		if err := validate(o); err != nil { // before any work: nothing is read or written
			return err
		}
	}
	if o.Out == "" {
		o.Out = filepath.Join("runs", time.Now().Format("20060102-150405"))
	}
	if o.WriteData != "" {
		return writeTaskData(*o, o.WriteData)
	}
	var resume *grpo.ResumePoint
	if o.Resume {
		var err error
		if resume, err = resumeFlags(o.Out, o.ResumeStep, fs); err != nil {
			return err
		}
		// The flags are the saved ones and those given now: checked before the run goes on.
		if err := validate(o); err != nil {
			return err
		}
		fmt.Printf("resuming %s at step %d\n", o.Out, resume.Step)
	}
	cfg, err := runConfig(*o, fs)
	if err != nil {
		return err
	}
	if cfg.Cluster.Rank() != 0 {
		o.Quiet = true
	}
	cfg.Resume = resume
	rep := &report{o: *o}
	cfg.Hooks = rep.hooks()
	res, err := grpo.Run(ctx, cfg, func(ctx context.Context, resuming bool) (*grpo.Job, error) {
		rep.start = time.Now()
		if o.Model == "" {
			return defaultJob(ctx, *o, cfg.Backend, !resuming)
		}
		return customJob(ctx, *o, !resuming)
	})
	if cfg.Cluster.Size() > 1 {
		if err != nil { // every rank ends now, saying why (MPI_Abort does not return)
			cfg.Cluster.Abort(fmt.Sprintf("rank %d: %v", cfg.Cluster.Rank(), err))
		}
		if cerr := cfg.Cluster.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("--dist: %w", cerr)
		}
		if cfg.Cluster.Rank() != 0 && err == nil {
			return nil // rank 0 reports
		}
	}
	if errors.Is(err, grpo.ErrRunExists) {
		return fmt.Errorf("%w; continue it with --resume or choose another --out", err)
	}
	if err != nil || o.SFTOnly {
		return err
	}
	rep.finish(res)
	return nil
}

// resumeFlags loads the latest run state in dir and sets the flags not given on the command
// line to the values saved with it.
func resumeFlags(dir string, step int, fs *pflag.FlagSet) (*grpo.ResumePoint, error) {
	rp, err := grpo.ResumeFrom(dir, step)
	var se *grpo.RunStateError
	switch {
	case errors.Is(err, grpo.ErrNoRun):
		return nil, fmt.Errorf("--resume: there is no run in %s: start one there without --resume", dir)
	case errors.Is(err, grpo.ErrNoRunState):
		return nil, fmt.Errorf("--resume: %s has no saved run state (its run stopped before its first save; --save-every sets how often runs save): start it again without --resume", dir)
	case errors.As(err, &se) && len(se.Kept) > 0:
		return nil, fmt.Errorf("--resume: %w; older run states kept: steps %s: continue from one with --resume --resume-step %d",
			err, strings.Trim(strings.Join(strings.Fields(fmt.Sprint(se.Kept)), ", "), "[]"), se.Kept[len(se.Kept)-1])
	case err != nil:
		return nil, fmt.Errorf("--resume: %w", err)
	}
	var saved map[string]any
	if err := json.Unmarshal(rp.Settings, &saved); err != nil {
		return nil, fmt.Errorf("--resume: run state of step %d: flags: %w", rp.Step, err)
	}
	for name := range notFromFile {
		delete(saved, name)
	}
	if m, ok := saved["model"].(string); ok && fs.Changed("model") && fs.Lookup("model").Value.String() != m {
		return nil, fmt.Errorf("--resume: --model %s, but the run in %s trains %s: a run continues its own model (start another run with a new --out)",
			fs.Lookup("model").Value.String(), dir, orDefaultJob(m))
	}
	if _, ok := saved["overlap"]; !ok {
		saved["overlap"] = "off" // a run saved before --overlap goes on as it ran: synchronous
	}
	if err := applyValues(fs, saved, fmt.Sprintf("run state %s step %d", dir, rp.Step)); err != nil {
		return nil, err
	}
	return rp, nil
}

// orDefaultJob names a --model value, "" being the default job's model.
func orDefaultJob(model string) string {
	if model == "" {
		return "the default job's model"
	}
	return model
}

// runConfig is the run the flags describe, on the device --device opens, as one rank of a
// data-parallel run when a launcher started this process (--dist).
func runConfig(o options, fs *pflag.FlagSet) (grpo.RunConfig, error) {
	cl, err := openCluster(o)
	if err != nil {
		return grpo.RunConfig{}, err
	}
	// Each rank takes the GPU of its local rank.
	dev, err := engine.OpenDevice(o.Device, engine.DeviceOptions{MatMulPrecision: o.MatmulPrecision, Index: cl.Launch.LocalRank})
	if err != nil {
		return grpo.RunConfig{}, err
	}
	tb, ok := dev.Backend.(engine.TrainBackend)
	if !ok {
		dev.Close()
		return grpo.RunConfig{}, fmt.Errorf("--device %s: backend %s cannot train", o.Device, dev.Info.Name)
	}
	fmt.Printf("device: %s\n", dev.Chosen)
	overlap, err := overlapOn(o)
	if err != nil {
		return grpo.RunConfig{}, err
	}
	if overlap && !fs.Changed("tis-cap") { // a flag value, saved with the run and resumed as such
		if err := fs.Set("tis-cap", strconv.FormatFloat(overlapTISCap, 'g', -1, 64)); err != nil {
			return grpo.RunConfig{}, err
		}
		o.Run.Trainer.Loss.TISCap = overlapTISCap // o is a copy: fs.Set reached the caller's
	}
	cfg, err := flagsConfig(o, overlap)
	if err != nil {
		return cfg, err
	}
	cfg.Backend = tb
	cfg.Rollouts = remoteRolloutSource(o, cl.Rank(), cl.Size())
	cfg.Cluster = cl
	settings := flagValues(fs) // what a run state keeps to resume with the same flags
	delete(settings, "quiet")
	delete(settings, "cpuprofile")
	delete(settings, "device") // a resumed run may continue on another machine's device
	delete(settings, "dist")   // ... and on another number of ranks
	delete(settings, "dist-timeout")
	cfg.Settings = settings
	return cfg, nil
}

// openCluster detects the launcher and opens the communicator --dist asks for, and says so: a
// data-parallel run logs its rank and launcher on every rank, and only rank 0 prints to stdout
// from then on.
func openCluster(o options) (*grpo.Cluster, error) {
	cl, err := grpo.OpenCluster(o.Run.Dist, o.Run.DistTimeout, o.Device)
	if err != nil {
		return nil, fmt.Errorf("--dist %s: %w", o.Run.Dist, err)
	}
	l := cl.Launch
	switch {
	case cl.Size() > 1:
		slog.Info(fmt.Sprintf("dist: rank %d of %d (local rank %d), launched by %s (%s), backend %s", cl.Rank(), cl.Size(), l.LocalRank, l.Launcher, l.Source, cl.Comm.Backend()),
			"pid", os.Getpid(), "mpi", strings.SplitN(dist.MPIVersion(cl.Comm), ",", 2)[0], "timeout", o.Run.DistTimeout)
		if cl.Rank() != 0 {
			if null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0); err == nil {
				os.Stdout = null
			}
		}
	case l.Launcher != dist.LaunchNone:
		slog.Info(fmt.Sprintf("dist: %v: a single rank, no data parallelism", l))
	}
	return cl, nil
}

// flagsConfig is the run the flags describe (the flags are bound to o.Run's knobs), without
// its backend, rollout source and saved settings, checked (grpo.RunConfig.CheckKnobs); overlap
// is --overlap resolved (overlapOn).
func flagsConfig(o options, overlap bool) (grpo.RunConfig, error) {
	cfg := o.Run
	cfg.Dir, cfg.EvalOnly = o.Out, o.SFTOnly
	cfg.Trainer.Overlap = overlap
	return cfg, cfg.CheckKnobs()
}

// overlapTISCap is --tis-cap's value with --overlap when it is not given (verl's example
// rollout_is_threshold).
const overlapTISCap = 2

// overlapOn resolves --overlap: auto is on with --rollout-servers (they generate from their own
// weights while the policy trains) and --max-staleness 1, off otherwise.
// (--max-staleness's range is grpo's: Config.CheckKnobs.)
func overlapOn(o options) (bool, error) {
	switch o.Overlap {
	case "on":
		if o.Run.Trainer.MaxStaleness < 1 {
			return false, fmt.Errorf("--overlap on needs --max-staleness 1 (overlapped rollouts are one step stale); --max-staleness is %d", o.Run.Trainer.MaxStaleness)
		}
		return true, nil
	case "off":
		return false, nil
	case "auto":
		return len(o.RolloutServers) > 0 && o.Run.Trainer.MaxStaleness >= 1, nil
	}
	return false, fmt.Errorf("--overlap %q: want auto, on or off", o.Overlap)
}

// report prints what a run does: the starting model's held-out accuracy, progress over the
// GRPO steps, and where everything is at the end.
type report struct {
	o            options
	start, train time.Time // the job's start, GRPO's start
	bar          *progress
	zeroSteps    int // steps so far whose every reward was 0
	// The latest held-out evaluation of this session and its step: the progress shows it with
	// its step, not as if it were measured at every step since.
	eval     *grpo.EvalResult
	evalStep int
}

// zeroWarnAfter is the number of steps in a row without any reward after which the run warns
// that the rewards may not fit the model's responses.
const zeroWarnAfter = 5

func (r *report) hooks() grpo.RunHooks {
	return grpo.RunHooks{
		Evaluated: func(step int, res *grpo.EvalResult) {
			r.eval, r.evalStep = res, step
			if step == 0 {
				fmt.Printf("before GRPO (%.0fs): held-out accuracy %.1f%% (pass@1 at temperature %g, top-p %g)%s\n",
					time.Since(r.start).Seconds(), 100*res.Accuracy, r.o.Run.Eval.Temperature, r.o.Run.Eval.TopP, passAtKText(res))
				printByKind(res)
			}
		},
		Training: func(first, last int) { // a resumed run counts on from its step: GRPO 41/50
			r.train = time.Now()
			r.bar = newProgress(r.o, first-1, last, "GRPO")
		},
		Stepped: func(m *grpo.Metrics, _ *grpo.EvalResult) {
			r.bar.Step(r.stepText(m))
			r.noticeZeroRewards(m)
		},
	}
}

// stepText is what the progress says of a step: its mean reward and the latest held-out
// accuracy of this session, with the step it was measured at unless that is this step
// ("reward 0.41 held-out 61.0% @ step 175"). A resumed run shows none until it evaluates.
func (r *report) stepText(m *grpo.Metrics) string {
	s := fmt.Sprintf("reward %.2f", m.RewardMean)
	switch {
	case r.eval == nil:
	case r.evalStep == m.Step:
		s += fmt.Sprintf(" held-out %.1f%%", 100*r.eval.Accuracy)
	default:
		s += fmt.Sprintf(" held-out %.1f%% @ step %d", 100*r.eval.Accuracy, r.evalStep)
	}
	return s
}

// noticeZeroRewards warns, once, when the first steps of a run earn no reward at all: the
// rewards routed to the data (printed at the start) do not find what they read in the model's
// responses, and GRPO has nothing to learn from.
func (r *report) noticeZeroRewards(m *grpo.Metrics) {
	if r.zeroSteps < 0 {
		return
	}
	if m.RewardMean != 0 {
		r.zeroSteps = -1
		return
	}
	if r.zeroSteps++; r.zeroSteps == zeroWarnAfter {
		slog.Warn(fmt.Sprintf("no response has earned any reward in %d steps: GRPO has nothing to learn from; check that the model writes what its data_source's reward reads (listed at the start), e.g. math reads \\boxed{}", zeroWarnAfter))
		r.zeroSteps = -1
	}
}

// finish prints the held-out accuracy before and after and the run directory's contents.
func (r *report) finish(res *grpo.RunResult) {
	if r.bar != nil {
		r.bar.Finish()
	}
	o := r.o
	if res.First != nil && res.Last != nil {
		fmt.Printf("\nheld-out accuracy: %.1f%% -> %.1f%% after %d GRPO steps (%.0fs this session)%s; reference resets at steps %v\n",
			100*res.First.Accuracy, 100*res.Last.Accuracy, o.Run.Steps, time.Since(r.train).Seconds(), passAtKText(res.Last), res.Resets)
	}
	fmt.Printf("run directory %s:\n  %s\n", o.Out, grpo.MetricsFile)
	if evs, _ := filepath.Glob(filepath.Join(o.Out, "events.out.tfevents.*")); len(evs) > 0 {
		fmt.Printf("  %s (TensorBoard: tensorboard --logdir %s)\n", filepath.Base(evs[len(evs)-1]), filepath.Dir(o.Out))
	}
	pngs, _ := filepath.Glob(filepath.Join(o.Out, "*.png"))
	for _, p := range pngs {
		fmt.Printf("  %s\n", filepath.Base(p))
	}
	dirs, _ := filepath.Glob(filepath.Join(o.Out, "checkpoints", "step-*"))
	for _, d := range dirs {
		rel, _ := filepath.Rel(o.Out, d)
		fmt.Printf("  %s/{model.safetensors,config.json,model.onnx}\n", rel)
	}
	if b := res.Best; b != nil && b.Step > 0 {
		fmt.Printf("  checkpoints/%s/ (the best held-out evaluation: step %d, %.1f%%)\n", grpo.BestDir, b.Step, 100*b.Accuracy)
	}
	fmt.Printf("  %s/ (run state of step %d: continue with --out %s --resume --steps N)\n", grpo.StateDir, o.Run.Steps, o.Out)
}

// passAtKText renders an evaluation's pass@k beyond k = 1.
func passAtKText(r *grpo.EvalResult) string {
	s := ""
	for k := 2; r != nil && k <= 1<<20; k *= 2 {
		if v, ok := r.PassAtK[k]; ok {
			s += fmt.Sprintf(", pass@%d %.1f%%", k, 100*v)
		}
	}
	return s
}

// printByKind writes an evaluation's pass@1, pass@k and response length per held-out kind,
// when there is more than one kind (--task suite's sets).
func printByKind(r *grpo.EvalResult) {
	if len(r.PassAtKByKind) < 2 {
		return
	}
	for _, kind := range slices.Sorted(maps.Keys(r.PassAtKByKind)) {
		byK := r.PassAtKByKind[kind]
		fmt.Printf("  %-16s pass@1 %.1f%%%s, mean length %.1f tokens\n", kind, 100*byK[1],
			passAtKText(&grpo.EvalResult{PassAtK: byK}), r.LengthByKind[kind])
	}
}
