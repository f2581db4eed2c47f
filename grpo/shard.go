package grpo

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/dist"
)

// ZeRO-1 (RunConfig.ShardOptimizer): the policy's AdamW moments sharded over the ranks
// (engine.Trainer.ShardOptimizer). The optimizer step reduce-scatters the gradients instead
// of all-reducing them, updates each rank's shard and all-gathers the weights.
//
// A run state saved by such a run holds no optimizer.safetensors: each rank writes its shard
// to STATE/optimizer-shards/step-NNNNNN/optimizer-rank-R-of-N.safetensors (atomically) before
// rank 0 writes the step directory, whose state.json records under extra.optimizer_shards the
// number of ranks and each file's size and SHA-256. A resume loads each rank's file, checked
// against them. A resume on another number of ranks, or without --shard-optimizer, re-shards:
// each rank reads its new range from the old shards that hold it (restoreShard).

// ShardsDir is the folder of a run's state directory that holds the optimizer shards, one
// folder per saved step.
const ShardsDir = "optimizer-shards"

// shardsKey names the shards' record in a run state's extra values.
const shardsKey = "optimizer_shards"

// optimizerShards is the record of a sharded optimizer's state in a run state.
type optimizerShards struct {
	Ranks int         `json:"ranks"`
	Total int         `json:"elements"` // trainable elements, flat
	Step  int         `json:"optimizer_step"`
	Files []shardFile `json:"files"` // by rank
}

// shardFile is a rank's shard file: its name in the step's shards folder, size and SHA-256.
type shardFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// shardName is the file name of rank's shard in a run of ranks ranks.
func shardName(rank, ranks int) string {
	return fmt.Sprintf("optimizer-rank-%d-of-%d.safetensors", rank, ranks)
}

// shardsDir is the folder of step's shards in the run directory dir.
func shardsDir(dir string, step int) string {
	return filepath.Join(dir, StateDir, ShardsDir, checkpoints.StepDirName(int64(step)))
}

// shardComm is the policy's view of the ranks for its sharded optimizer step: the host fp32
// collectives of engine.ShardComm over the run's communicator, recorded (progress, bytes and
// seconds) as the gradient all-reduce is.
type shardComm struct{ d *dataParallel }

func (s shardComm) Rank() int { return s.d.rank }
func (s shardComm) Size() int { return s.d.size }

func (s shardComm) ReduceScatter(send, recv []float32) error {
	s.d.enter(fmt.Sprintf("reduce-scatter of gradients (%d values)", len(send)))
	t0 := time.Now()
	err := s.d.comm.ReduceScatter(dist.HostF32(send), dist.HostF32(recv))
	s.d.gradSeconds += time.Since(t0).Seconds()
	s.d.gradBytes += 4 * len(send)
	return err
}

func (s shardComm) AllGather(send, recv []float32) error {
	s.d.enter(fmt.Sprintf("all-gather of %d values (optimizer shards)", len(recv)))
	t0 := time.Now()
	err := s.d.comm.AllGather(dist.HostF32(send), dist.HostF32(recv))
	s.d.gradSeconds += time.Since(t0).Seconds()
	s.d.gradBytes += 4 * len(recv)
	return err
}

// waitGrads is the barrier before a sharded optimizer step (the gradients' reduce-scatter is
// part of the step), timed as the wait before the gradient all-reduce is.
func (d *dataParallel) waitGrads() error {
	t0 := time.Now()
	d.enter("barrier before the gradients")
	err := d.comm.Barrier()
	d.gradWait += time.Since(t0).Seconds()
	return err
}

// restoreShard restores this rank's optimizer state from the run state being resumed, when
// that state holds shards (a whole optimizer state, saved by an unsharded run, was loaded by
// newPolicy: a sharded policy kept its part). The shards may come from a run of another number
// of ranks: a sharded run takes the elements of its new shard from the old shards that hold
// them, an unsharded run (or a single process) takes them all, so a resume re-shards.
func (r *runSession) restoreShard() error {
	rp := r.cfg.Resume
	if rp == nil {
		return nil
	}
	raw, ok := rp.state.Extra[shardsKey]
	if !ok {
		return nil
	}
	rec := &optimizerShards{}
	if err := json.Unmarshal(raw, rec); err != nil {
		return fmt.Errorf("resume: run state of step %d: %s: %w", rp.Step, shardsKey, err)
	}
	size, rank := 1, 0
	if r.dp != nil {
		size, rank = r.dp.size, r.dp.rank
	}
	sharded := r.policy.OptimizerSharded()
	lo, hi := 0, rec.Total
	if sharded {
		lo, hi = engine.NewShardPlan(rec.Total, size).Range(rank)
	}
	m, v, err := r.readShards(rec, lo, hi)
	if err != nil {
		return err
	}
	if !sharded {
		ms, err := r.policy.SplitFlat(m)
		if err == nil {
			var vs map[string]engine.HostTensor
			if vs, err = r.policy.SplitFlat(v); err == nil {
				err = r.policy.LoadOptimizerState(&engine.OptimizerState{Step: rec.Step, M: ms, V: vs})
			}
		}
		if err != nil {
			return fmt.Errorf("resume: the optimizer shards of step %d: %w", rp.Step, err)
		}
	} else if err := r.policy.LoadOptimizerShard(&engine.OptimizerShard{Step: rec.Step, Rank: rank, Ranks: size, Lo: lo, Hi: hi, Total: rec.Total, M: m, V: v}); err != nil {
		return fmt.Errorf("resume: the optimizer shards of step %d: %w", rp.Step, err)
	}
	if sharded && size == rec.Ranks {
		return nil
	}
	to := "an unsharded optimizer"
	if sharded {
		to = fmt.Sprintf("%d shards", size)
	}
	if r.writes() {
		slog.Info("resume: re-sharded the optimizer state", "step", rp.Step, "from_shards", rec.Ranks, "to", to)
	}
	return nil
}

// readShards reads elements [lo, hi) of both AdamW moments, flat in TrainableNames order,
// from the shards of the run state being resumed (rec, its record): from every shard file that
// holds some of them, each checked against the size and SHA-256 the run state recorded and its
// metadata against the split of rec.Total elements over rec.Ranks ranks.
func (r *runSession) readShards(rec *optimizerShards, lo, hi int) (m, v []float32, err error) {
	step := r.cfg.Resume.Step
	if rec.Ranks < 1 || len(rec.Files) != rec.Ranks {
		return nil, nil, fmt.Errorf("resume: run state of step %d: %s lists %d files for %d ranks", step, shardsKey, len(rec.Files), rec.Ranks)
	}
	plan := engine.NewShardPlan(rec.Total, rec.Ranks)
	m, v = make([]float32, hi-lo), make([]float32, hi-lo)
	for q, f := range rec.Files {
		qlo, qhi := plan.Range(q)
		if max(lo, qlo) >= min(hi, qhi) {
			continue
		}
		path := filepath.Join(shardsDir(r.cfg.Dir, step), f.Name)
		if f.Name != shardName(q, rec.Ranks) {
			return nil, nil, fmt.Errorf("resume: run state of step %d: rank %d's optimizer shard is named %q, want %q", step, q, f.Name, shardName(q, rec.Ranks))
		}
		d, err := digest(path)
		if err != nil {
			return nil, nil, fmt.Errorf("resume: optimizer shard: %w", err)
		}
		if d != f {
			return nil, nil, fmt.Errorf("resume: optimizer shard %s: %d bytes with SHA-256 %s, the run state of step %d recorded %d bytes with %s", path, d.Size, d.SHA256, step, f.Size, f.SHA256)
		}
		st, err := checkpoints.ReadSafetensors(path)
		if err != nil {
			return nil, nil, fmt.Errorf("resume: optimizer shard: %w", err)
		}
		want := map[string]int{"optimizer_step": rec.Step, "rank": q, "ranks": rec.Ranks, "lo": qlo, "hi": qhi, "elements": rec.Total}
		for _, k := range slices.Sorted(maps.Keys(want)) {
			if got, perr := strconv.Atoi(st.Metadata[k]); perr != nil || got != want[k] {
				return nil, nil, fmt.Errorf("resume: optimizer shard %s: metadata %q is %q, want %d", path, k, st.Metadata[k], want[k])
			}
		}
		sm, sv := st.Tensors["m"].Data, st.Tensors["v"].Data
		if len(sm) != qhi-qlo || len(sv) != qhi-qlo {
			return nil, nil, fmt.Errorf("resume: optimizer shard %s: tensors m and v have %d and %d values, want %d", path, len(sm), len(sv), qhi-qlo)
		}
		a, b := max(lo, qlo), min(hi, qhi)
		copy(m[a-lo:b-lo], sm[a-qlo:b-qlo])
		copy(v[a-lo:b-lo], sv[a-qlo:b-qlo])
	}
	return m, v, nil
}

// digest is the size and SHA-256 of the file at path.
func digest(path string) (shardFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return shardFile{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return shardFile{}, fmt.Errorf("%s: %w", path, err)
	}
	return shardFile{Name: filepath.Base(path), Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// saveShards writes every rank's optimizer shard of the current step (each rank its own file)
// and returns the record rank 0 keeps in the run state; every rank gets an error when one
// rank's write failed.
func (r *runSession) saveShards(step int) (*optimizerShards, error) {
	d := r.dp
	write := func() (shardFile, *engine.OptimizerShard, error) {
		sh, err := r.policy.OptimizerShard()
		if err != nil {
			return shardFile{}, nil, err
		}
		dir := shardsDir(r.cfg.Dir, step)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return shardFile{}, nil, err
		}
		path := filepath.Join(dir, shardName(sh.Rank, sh.Ranks))
		meta := map[string]string{"format": "prolong-optimizer-shard", "optimizer_step": strconv.Itoa(sh.Step), "rank": strconv.Itoa(sh.Rank),
			"ranks": strconv.Itoa(sh.Ranks), "lo": strconv.Itoa(sh.Lo), "hi": strconv.Itoa(sh.Hi), "elements": strconv.Itoa(sh.Total)}
		n := sh.Hi - sh.Lo
		err = checkpoints.WriteSafetensors(path, map[string]engine.HostTensor{"m": {Shape: []int{n}, Data: sh.M}, "v": {Shape: []int{n}, Data: sh.V}}, checkpoints.F32, meta)
		if err != nil {
			return shardFile{}, nil, err
		}
		f, err := digest(path)
		return f, sh, err
	}
	f, sh, err := write()
	type result struct {
		File       shardFile
		Total, Opt int
		Err        string
	}
	res := result{File: f}
	if sh != nil {
		res.Total, res.Opt = sh.Total, sh.Step
	}
	if err != nil {
		res.Err = fmt.Sprintf("optimizer shard of step %d: %v", step, err)
	}
	all, gerr := gather(d, fmt.Sprintf("the optimizer shards of step %d", step), res)
	if gerr != nil {
		return nil, errors.Join(err, gerr)
	}
	rec := &optimizerShards{Ranks: d.size, Total: all[0].Total, Step: all[0].Opt}
	var errs []error
	for rk, a := range all {
		if a.Err != "" {
			errs = append(errs, fmt.Errorf("rank %d: %s", rk, a.Err))
		}
		rec.Files = append(rec.Files, a.File)
	}
	return rec, errors.Join(errs...)
}

// pruneShards removes the shards of the steps whose run state is gone (pruned by Keep, or
// never completed); rank 0 calls it after a save.
func pruneShards(dir string) {
	sd := filepath.Join(dir, StateDir)
	steps, err := checkpoints.ListSteps(sd)
	if err != nil {
		return
	}
	entries, err := os.ReadDir(filepath.Join(sd, ShardsDir))
	if err != nil {
		return
	}
	for _, e := range entries {
		var s int64
		if _, err := fmt.Sscanf(e.Name(), "step-%d", &s); err != nil || e.Name() != checkpoints.StepDirName(s) {
			continue
		}
		if !slices.Contains(steps, s) {
			if err := os.RemoveAll(filepath.Join(sd, ShardsDir, e.Name())); err != nil {
				slog.Warn("grpo: removing old optimizer shards", "dir", e.Name(), "err", err)
			}
		}
	}
}
