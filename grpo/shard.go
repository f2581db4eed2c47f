package grpo

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
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
// against them; a resume on another number of ranks is refused, naming both.

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

// restoreShard restores this rank's optimizer shard from the run state being resumed, when
// that state holds shards (newPolicy sharded the optimizer; a whole optimizer state, saved by
// an unsharded run, was loaded there: each rank kept its part). A state sharded over another
// number of ranks, or resumed without sharding, is an error naming the numbers of ranks.
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
	if !r.policy.OptimizerSharded() {
		return fmt.Errorf("resume: the run state of step %d holds the optimizer sharded over %d ranks (--shard-optimizer), and this run does not shard it: resume with --shard-optimizer on %d ranks", rp.Step, rec.Ranks, rec.Ranks)
	}
	if rec.Ranks != r.dp.size {
		return fmt.Errorf("resume: the run state of step %d holds the optimizer sharded over %d ranks, and this run has %d ranks: resume it on %d ranks (re-sharding is not supported)", rp.Step, rec.Ranks, r.dp.size, rec.Ranks)
	}
	return r.loadShard(rec)
}

// loadShard reads this rank's shard of the run state being resumed (rec, its record) and
// loads it into the policy's optimizer.
func (r *runSession) loadShard(rec *optimizerShards) error {
	step, rank := r.cfg.Resume.Step, r.dp.rank
	if len(rec.Files) != rec.Ranks {
		return fmt.Errorf("resume: run state of step %d: %s lists %d files for %d ranks", step, shardsKey, len(rec.Files), rec.Ranks)
	}
	f := rec.Files[rank]
	path := filepath.Join(shardsDir(r.cfg.Dir, step), f.Name)
	if f.Name != shardName(rank, rec.Ranks) {
		return fmt.Errorf("resume: run state of step %d: rank %d's optimizer shard is named %q, want %q", step, rank, f.Name, shardName(rank, rec.Ranks))
	}
	d, err := digest(path)
	if err != nil {
		return fmt.Errorf("resume: optimizer shard: %w", err)
	}
	if d != f {
		return fmt.Errorf("resume: optimizer shard %s: %d bytes with SHA-256 %s, the run state of step %d recorded %d bytes with %s", path, d.Size, d.SHA256, step, f.Size, f.SHA256)
	}
	st, err := checkpoints.ReadSafetensors(path)
	if err != nil {
		return fmt.Errorf("resume: optimizer shard: %w", err)
	}
	meta := func(k string) int {
		v, perr := strconv.Atoi(st.Metadata[k])
		if perr != nil && err == nil {
			err = fmt.Errorf("resume: optimizer shard %s: metadata %q: %w", path, k, perr)
		}
		return v
	}
	sh := &engine.OptimizerShard{Step: meta("optimizer_step"), Rank: meta("rank"), Ranks: meta("ranks"), Lo: meta("lo"), Hi: meta("hi"),
		Total: meta("elements"), M: st.Tensors["m"].Data, V: st.Tensors["v"].Data}
	if err != nil {
		return err
	}
	if err := r.policy.LoadOptimizerShard(sh); err != nil {
		return fmt.Errorf("resume: %s: %w", path, err)
	}
	return nil
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
