package grpo

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo/data"
	"github.com/prolong-rl/prolong/grpo/modeldir"
)

// RunStateError is LoadResumePoint's error for a run state that cannot be loaded; Kept lists
// the other steps saved in the run directory, which ResumeFrom can still continue from.
type RunStateError struct {
	Step int
	Kept []int
	Err  error
}

func (e *RunStateError) Error() string {
	return fmt.Sprintf("run state of step %d: %v", e.Step, e.Err)
}

func (e *RunStateError) Unwrap() error { return e.Err }

// ResumePoint is the latest run state of a run directory, to continue from.
type ResumePoint struct {
	// Step is the step the state was saved at.
	Step int
	// Settings are the RunConfig.Settings saved with it (JSON).
	Settings json.RawMessage
	state    *checkpoints.RunState
}

// LoadResumePoint reads the latest run state of the run directory dir. A directory that does
// not exist is ErrNoRun, one without a saved state ErrNoRunState, a state that cannot be
// loaded a *RunStateError listing the other steps kept.
func LoadResumePoint(dir string) (*ResumePoint, error) {
	return ResumeFrom(dir, int(checkpoints.Latest))
}

// ResumeFrom reads the run state of step (checkpoints.Latest: the latest) of the run
// directory dir, with LoadResumePoint's errors.
func ResumeFrom(dir string, step int) (*ResumePoint, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrNoRun, dir, err)
	}
	sd := filepath.Join(dir, StateDir)
	steps, _ := checkpoints.ListSteps(sd)
	if len(steps) == 0 {
		return nil, fmt.Errorf("%s: %w (its run stopped before its first save)", dir, ErrNoRunState)
	}
	st, err := checkpoints.LoadRunState(sd, int64(step))
	if err != nil {
		if step == int(checkpoints.Latest) {
			latest, _ := checkpoints.LatestStep(sd)
			step = int(latest)
		}
		e := &RunStateError{Step: step, Err: err}
		for _, s := range steps {
			if int(s) != step {
				e.Kept = append(e.Kept, int(s))
			}
		}
		return nil, e
	}
	return &ResumePoint{Step: int(st.Step), Settings: st.Extra[settingsKey], state: st}, nil
}

// restore puts back the trainer's state, the reference, the data position and the
// evaluations of a run state.
func (r *runSession) restore(st *checkpoints.RunState) error {
	var ts State
	if err := errors.Join(json.Unmarshal(st.Extra[trainerKey], &ts), json.Unmarshal(st.Metrics, &r.evals)); err != nil {
		return err
	}
	ref := st.Reference
	if r.policy.Model.Adapters != nil {
		ref = st.ReferenceAdapters
	}
	if err := r.trainer.Restore(ts, ref); err != nil {
		return err
	}
	return r.stream.restore(st.DataPosition)
}

// saveDue reports whether a run state is saved after step s.
func (r *runSession) saveDue(s int) bool {
	return (r.cfg.SaveEvery > 0 && s%r.cfg.SaveEvery == 0) || s == r.cfg.Steps
}

// save writes a run state: what resuming needs.
func (r *runSession) save() error {
	w, err := r.policy.Model.HostWeights() // a LoRA run's frozen base
	if err != nil {
		return err
	}
	step := r.trainer.StepNumber()
	if r.dp != nil {
		var ad map[string]engine.HostTensor // a LoRA run's trained weights
		if r.policy.Model.Adapters != nil {
			if ad, err = r.policy.Model.AdapterWeights(); err != nil {
				return err
			}
		}
		if err := r.dp.checkSameWeights(step, w, ad); err != nil {
			return err
		}
		r.shards = nil
		if r.policy.OptimizerSharded() {
			if r.shards, err = r.saveShards(step); err != nil {
				return err
			}
		}
		if r.dp.rank != 0 {
			err = nil
		} else {
			err = r.saveState(w)
		}
		err = r.dp.agree(fmt.Sprintf("saving the run state of step %d", step), err)
		if err == nil && r.shards != nil && r.dp.rank == 0 {
			pruneShards(r.cfg.Dir)
		}
		return err
	}
	return r.saveState(w)
}

// saveState writes the run state with the policy's weights w.
func (r *runSession) saveState(w map[string]engine.HostTensor) error {
	var err error
	var ref, ad, refAd map[string]engine.HostTensor
	if r.policy.Model.Adapters != nil {
		// The reference of a LoRA run is its own copy of the adapters over the shared base.
		if ad, err = r.policy.Model.AdapterWeights(); err != nil {
			return err
		}
		if r.trainer.Reference != nil {
			if refAd, err = r.trainer.Reference.AdapterWeights(); err != nil {
				return err
			}
		}
	} else if r.trainer.Reference != nil {
		if ref, err = r.trainer.Reference.HostWeights(); err != nil {
			return err
		}
	}
	var optState *checkpoints.OptimizerState // nil when sharded: each rank saved its shard
	if r.shards == nil {
		opt, err := r.policy.OptimizerState()
		if err != nil {
			return err
		}
		optState = &checkpoints.OptimizerState{Step: int64(opt.Step), Groups: map[string]map[string]engine.HostTensor{"m": opt.M, "v": opt.V}}
	}
	marshal := func(v any) json.RawMessage { b, _ := json.Marshal(v); return b }
	st := &checkpoints.RunState{
		Step: int64(r.trainer.StepNumber()), Config: r.policy.Model.Config, Weights: w, Reference: ref,
		Adapters: ad, ReferenceAdapters: refAd,
		Optimizer:    optState,
		DataPosition: marshal(r.stream.s.State()), Metrics: marshal(r.evals),
		Extra: map[string]json.RawMessage{settingsKey: marshal(r.cfg.Settings), trainerKey: marshal(r.trainer.State())},
	}
	if r.shards != nil {
		st.Extra[shardsKey] = marshal(r.shards)
	}
	if ad != nil {
		// What the adapters are, for programs that read the run state (tools/export).
		st.Extra[LoRAKey] = marshal(modeldir.NewAdapterConfig(r.policy.Model.Adapters.Config, r.job.BaseModel))
	}
	return checkpoints.SaveRunState(filepath.Join(r.cfg.Dir, StateDir), st, checkpoints.SaveRunOptions{Keep: r.cfg.Keep})
}

// truncateMetrics keeps the lines of metrics.jsonl up to step (atomically).
func truncateMetrics(path string, step int) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var keep bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for n := 1; sc.Scan(); n++ {
		var rec struct {
			Step *int `json:"step"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil || rec.Step == nil {
			return fmt.Errorf("%s line %d: not a metrics record", path, n)
		}
		if *rec.Step <= step {
			keep.Write(sc.Bytes())
			keep.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return checkpoints.WriteFileAtomic(path, 0o644, func(w io.Writer) error { _, err := w.Write(keep.Bytes()); return err })
}

// promptStream hands the trainer prompts in grpo/data.Stream's order: the stream runs over
// one placeholder row per prompt, whose Index is the prompt's.
type promptStream struct {
	prompts []Prompt
	s       *data.Stream
}

func newPromptStream(prompts []Prompt, seed uint64) (*promptStream, error) {
	rows := make([]data.Row, len(prompts))
	for i := range rows {
		rows[i].Index = i
	}
	s, err := data.NewStream(rows, data.StreamConfig{Seed: seed})
	if err != nil {
		return nil, fmt.Errorf("grpo: training prompts: %w", err)
	}
	return &promptStream{prompts: prompts, s: s}, nil
}

// Next implements PromptSource.
func (p *promptStream) Next(n int) ([]Prompt, error) {
	rows, err := p.s.NextN(n)
	if err != nil {
		return nil, err
	}
	out := make([]Prompt, len(rows))
	for i, r := range rows {
		out[i] = p.prompts[r.Index]
	}
	return out, nil
}

// legacyPosition is the data position of run states written before the run moved into grpo
// (tools/train's own stream): Epoch counted the epochs started.
type legacyPosition struct {
	Epoch   int  `json:"epoch"`
	Pos     int  `json:"pos"`
	Prompts *int `json:"prompts"`
}

// restore moves the stream to a saved data position (a data.StreamState, or the legacy form).
func (p *promptStream) restore(raw json.RawMessage) error {
	var old legacyPosition
	if err := json.Unmarshal(raw, &old); err != nil {
		return fmt.Errorf("data position: %w", err)
	}
	st := p.s.State()
	if old.Prompts != nil {
		st.Size, st.Epoch, st.Pos = *old.Prompts, max(0, old.Epoch-1), old.Pos
	} else if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("data position: %w", err)
	}
	if st.Size != len(p.prompts) {
		return fmt.Errorf("the run state was saved with %d training prompts, the data now gives %d", st.Size, len(p.prompts))
	}
	return p.s.Restore(st)
}
