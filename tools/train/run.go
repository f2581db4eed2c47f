package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/data"
	"github.com/prolong-rl/prolong/onnx"
)

// A run directory holds:
//
//	metrics.jsonl                 one line per step (+ the step-0 evaluation)
//	*.png                         plots, redrawn at every evaluation
//	checkpoints/step-NNNNNN/      exports after each reference reset and at the end:
//	                              model.safetensors, config.json, generation_config.json,
//	                              tokenizer files, model.onnx
//	state/                        run states to resume from (checkpoints.SaveRunState)
const (
	metricsFile = "metrics.jsonl"
	stateDir    = "state"
)

// savedEvals are the evaluations a run state carries for the summary.
type savedEvals struct {
	First *grpo.EvalResult `json:"first"`
	Last  *grpo.EvalResult `json:"last"`
}

// run trains: a new run in o.out, or (o.resume) the continuation of the one there.
func run(ctx context.Context, o *options, fs *pflag.FlagSet) error {
	if o.out == "" {
		if o.resume {
			return errors.New("--resume needs --out, the run directory to continue")
		}
		o.out = filepath.Join("runs", time.Now().Format("20060102-150405"))
	}
	if o.writeData != "" {
		return writeTaskData(*o, o.writeData)
	}
	var st *checkpoints.RunState
	if o.resume {
		var err error
		if st, err = checkpoints.LoadRunState(filepath.Join(o.out, stateDir), checkpoints.Latest); err != nil {
			return fmt.Errorf("--resume: %w", err)
		}
		var saved map[string]any
		if err := json.Unmarshal(st.Extra["flags"], &saved); err != nil {
			return fmt.Errorf("--resume: run state of step %d: flags: %w", st.Step, err)
		}
		for name := range notFromFile {
			delete(saved, name)
		}
		if err := applyValues(fs, saved, fmt.Sprintf("run state %s step %d", o.out, st.Step)); err != nil {
			return err
		}
		fmt.Printf("resuming %s at step %d\n", o.out, st.Step)
	} else if _, err := os.Stat(filepath.Join(o.out, metricsFile)); err == nil {
		return fmt.Errorf("run directory %s already holds a run (%s); continue it with --resume or choose another --out", o.out, metricsFile)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}

	// 1. The job: model, prompts, reward.
	t0 := time.Now()
	var j *job
	var err error
	if o.model == "" {
		j, err = defaultJob(ctx, *o, st == nil)
	} else {
		if o.sftOnly {
			return errors.New("--sft builds the default job's model; it does not apply with --model")
		}
		j, err = customJob(ctx, *o, st == nil)
	}
	if err != nil {
		return err
	}
	if j.tokenizerFiles != nil { // the run's tokenizer, for tools/export of its run states
		if err := j.tokenizerFiles(filepath.Join(o.out, "tokenizer")); err != nil {
			return fmt.Errorf("run directory %s: tokenizer: %w", o.out, err)
		}
	}
	cfg, weights := j.cfg, j.weights
	if st != nil {
		cfg, weights = st.Config, st.Weights
	}
	policy, err := newPolicy(*o, cfg, weights)
	if err != nil {
		return err
	}
	if st != nil && st.Optimizer != nil {
		if err := policy.LoadOptimizerState(engineOptimizer(st.Optimizer)); err != nil {
			return fmt.Errorf("--resume: optimizer state: %w", err)
		}
	}
	rollouts, closeRollouts, err := newRollouts(ctx, *o, policy)
	if err != nil {
		return err
	}
	defer closeRollouts()
	gcfg, err := grpoConfig(*o, j.stop)
	if err != nil {
		return err
	}
	g, err := grpo.NewTrainer(policy, rollouts, j.train, j.reward, j.decode, gcfg)
	if err != nil {
		return err
	}
	evals := savedEvals{}
	if st != nil {
		var ts grpo.State
		var pos streamPosition
		if err := errors.Join(json.Unmarshal(st.Extra["trainer"], &ts), json.Unmarshal(st.DataPosition, &pos), json.Unmarshal(st.Metrics, &evals)); err != nil {
			return fmt.Errorf("--resume: run state of step %d: %w", st.Step, err)
		}
		if err := g.Restore(ts, st.Reference); err != nil {
			return fmt.Errorf("--resume: %w", err)
		}
		if err := j.train.restore(pos); err != nil {
			return fmt.Errorf("--resume: %s: %w", o.data, err)
		}
	}
	eval := func() (*grpo.EvalResult, error) {
		if len(j.held) == 0 {
			return nil, nil
		}
		n := o.evalSamples
		if o.evalTemp == 0 {
			n = 1
		}
		return g.Evaluate(ctx, j.held, n, float32(o.evalTemp), float32(o.evalTopP))
	}
	if st == nil {
		if evals.First, err = eval(); err != nil {
			return err
		}
		evals.Last = evals.First
		if evals.First != nil {
			fmt.Printf("before GRPO (%.0fs): held-out accuracy %.1f%% (pass@1 at temperature %g, top-p %g)%s\n",
				time.Since(t0).Seconds(), 100*evals.First.Accuracy, o.evalTemp, o.evalTopP, passAtKText(evals.First))
		}
	}
	if o.sftOnly {
		return nil
	}

	// 2. GRPO.
	mpath := filepath.Join(o.out, metricsFile)
	if st != nil {
		// Steps logged after the run state was saved are run again: drop their lines.
		if err := truncateMetrics(mpath, int(st.Step)); err != nil {
			return err
		}
	}
	log, err := grpo.OpenMetricsLog(mpath)
	if err != nil {
		return err
	}
	defer log.Close()
	if st == nil {
		if err := log.Append(grpo.Record{Metrics: &grpo.Metrics{Step: 0}, Eval: evals.First}); err != nil {
			return err
		}
		if evals.First != nil {
			if _, err := g.AfterEval(evals.First, nil); err != nil {
				return err
			}
		}
	}
	exported := map[int]string{}
	export := func(step int) error {
		dir, err := exportCheckpoint(o.out, step, policy.Model, j.tokenizerFiles)
		if err == nil {
			exported[step] = dir
		}
		return err
	}
	g.OnReset = export
	save := func() error {
		s, err := runState(g, policy, cfg, j.train, evals, fs)
		if err != nil {
			return err
		}
		return checkpoints.SaveRunState(filepath.Join(o.out, stateDir), s, checkpoints.SaveRunOptions{Keep: o.keep})
	}
	plot := func() error {
		recs, err := grpo.ReadMetrics(mpath)
		if err == nil {
			_, err = grpo.PlotMetrics(recs, o.out)
		}
		return err
	}

	first := g.StepNumber() + 1
	bar := newBar(*o, o.steps-first+1, "GRPO")
	t1 := time.Now()
	for s := first; s <= o.steps; s++ {
		m, err := g.Step(ctx)
		if err != nil {
			return err
		}
		if err := pushWeights(ctx, rollouts, policy); err != nil {
			return err
		}
		rec := grpo.Record{Metrics: m}
		if s%o.evalEvery == 0 || s == o.steps {
			if rec.Eval, err = eval(); err != nil {
				return err
			}
			if rec.Eval != nil {
				evals.Last = rec.Eval
				if _, err := g.AfterEval(rec.Eval, m); err != nil {
					return err
				}
			}
		}
		if err := log.Append(rec); err != nil {
			return err
		}
		if rec.Eval != nil {
			if err := plot(); err != nil {
				return err
			}
		}
		if (o.saveEvery > 0 && s%o.saveEvery == 0) || s == o.steps {
			if err := save(); err != nil {
				return err
			}
		}
		desc := fmt.Sprintf("GRPO reward %.2f", m.RewardMean)
		if evals.Last != nil {
			desc += fmt.Sprintf(" held-out %.1f%%", 100*evals.Last.Accuracy)
		}
		bar.Describe(desc)
		bar.Add(1)
	}
	bar.Finish()
	if _, ok := exported[o.steps]; !ok && first <= o.steps {
		if err := export(o.steps); err != nil {
			return err
		}
	}
	if err := plot(); err != nil {
		return err
	}

	// 3. Where everything is.
	ts := g.State()
	if evals.First != nil && evals.Last != nil {
		fmt.Printf("\nheld-out accuracy: %.1f%% -> %.1f%% after %d GRPO steps (%.0fs this session)%s; reference resets at steps %v\n",
			100*evals.First.Accuracy, 100*evals.Last.Accuracy, o.steps, time.Since(t1).Seconds(), passAtKText(evals.Last), ts.Resets)
	}
	fmt.Printf("run directory %s:\n  metrics.jsonl\n", o.out)
	if pngs, _ := filepath.Glob(filepath.Join(o.out, "*.png")); len(pngs) > 0 {
		for _, p := range pngs {
			fmt.Printf("  %s\n", filepath.Base(p))
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(o.out, "checkpoints", "step-*"))
	for _, d := range dirs {
		rel, _ := filepath.Rel(o.out, d)
		fmt.Printf("  %s/{model.safetensors,config.json,model.onnx}\n", rel)
	}
	fmt.Printf("  %s/ (run state of step %d: continue with --out %s --resume --steps N)\n", stateDir, o.steps, o.out)
	return nil
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

// runState gathers what resuming needs.
func runState(g *grpo.Trainer, policy *engine.Trainer, cfg *engine.Config, ps *promptStream, evals savedEvals, fs *pflag.FlagSet) (*checkpoints.RunState, error) {
	w, err := policy.Model.HostWeights()
	if err != nil {
		return nil, err
	}
	var ref map[string]engine.HostTensor
	if g.Reference != nil {
		if ref, err = g.Reference.HostWeights(); err != nil {
			return nil, err
		}
	}
	opt, err := policy.OptimizerState()
	if err != nil {
		return nil, err
	}
	flags := flagValues(fs)
	delete(flags, "quiet")
	delete(flags, "cpuprofile")
	marshal := func(v any) json.RawMessage { b, _ := json.Marshal(v); return b }
	return &checkpoints.RunState{
		Step: int64(g.StepNumber()), Config: cfg, Weights: w, Reference: ref,
		Optimizer:    &checkpoints.OptimizerState{Step: int64(opt.Step), Groups: map[string]map[string]engine.HostTensor{"m": opt.M, "v": opt.V}},
		DataPosition: marshal(ps.position()), Metrics: marshal(evals),
		Extra: map[string]json.RawMessage{"flags": marshal(flags), "trainer": marshal(g.State())},
	}, nil
}

// engineOptimizer converts a checkpoint's optimizer state to the engine's AdamW state.
func engineOptimizer(s *checkpoints.OptimizerState) *engine.OptimizerState {
	return &engine.OptimizerState{Step: int(s.Step), M: s.Groups["m"], V: s.Groups["v"]}
}

// truncateMetrics keeps the lines of metrics.jsonl up to step (atomically).
func truncateMetrics(path string, step int) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--resume: %w", err)
	}
	var keep bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for n := 1; sc.Scan(); n++ {
		var r struct {
			Step *int `json:"step"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil || r.Step == nil {
			return fmt.Errorf("--resume: %s line %d: not a metrics record", path, n)
		}
		if *r.Step <= step {
			keep.Write(sc.Bytes())
			keep.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("--resume: %s: %w", path, err)
	}
	return data.WriteFileAtomic(path, func(w io.Writer) error { _, err := w.Write(keep.Bytes()); return err })
}

// exportCheckpoint writes the policy at a step under out/checkpoints/step-NNNNNN as a Hugging
// Face directory (model.safetensors, config.json, generation_config.json, tokenizer files) and
// as ONNX (model.onnx, KV-cache inputs and outputs, loadable by ONNX Runtime).
func exportCheckpoint(out string, step int, m *engine.Model, tokenizerFiles func(string) error) (string, error) {
	dir := filepath.Join(out, "checkpoints", fmt.Sprintf("step-%06d", step))
	w, err := m.HostWeights()
	if err != nil {
		return "", err
	}
	if err := checkpoints.SaveHF(dir, m.Config, w, checkpoints.F32); err != nil {
		return "", err
	}
	if tokenizerFiles != nil {
		if err := tokenizerFiles(dir); err != nil {
			return "", fmt.Errorf("export %s: tokenizer: %w", dir, err)
		}
	}
	return dir, onnx.Export(filepath.Join(dir, "model.onnx"), m.Config, w, onnx.ExportOptions{})
}

func newBar(o options, n int, what string) *progressbar.ProgressBar {
	if o.quiet {
		return progressbar.DefaultSilent(int64(n), what)
	}
	return progressbar.NewOptions(n, progressbar.OptionSetDescription(what), progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(30), progressbar.OptionSetWriter(os.Stderr), progressbar.OptionClearOnFinish(),
		progressbar.OptionShowElapsedTimeOnFinish(), progressbar.OptionSetPredictTime(true))
}
