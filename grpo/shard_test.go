package grpo

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine/dist"
)

// runRanks runs tinyRun of steps on ranks ranks of the local communicator in dir, with
// --shard-optimizer set to shard and resume (nil: a new run) from step resume; it returns each
// rank's error.
func runRanks(t *testing.T, ranks int, dir string, steps int, shard bool, resume int) []error {
	t.Helper()
	comms := dist.NewLocalGroup(ranks, dist.Options{Timeout: time.Minute})
	errs := make([]error, ranks)
	var wg sync.WaitGroup
	for r := range comms {
		cfg, job := tinyRun(t, dir, steps)
		cfg.Keep, cfg.ShardOptimizer = 0, shard
		cfg.Cluster = &Cluster{Comm: comms[r]}
		if resume > 0 {
			rp, err := ResumeFrom(dir, resume)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Resume = rp
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[r] = Run(context.Background(), cfg, job)
		}()
	}
	wg.Wait()
	return errs
}

// metricLines are the records of a run's metrics.jsonl by step, without the timings.
func metricLines(t *testing.T, dir string) map[int]map[string]any {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, MetricsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[int]map[string]any{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		for k := range m {
			if strings.HasPrefix(k, "timing_s/") || strings.HasSuffix(k, "_per_s") || k == "train_s" {
				delete(m, k)
			}
		}
		out[int(m["step"].(float64))] = m
	}
	return out
}

// TestRunShardedOptimizer: a run of 2 ranks (the local communicator) with the optimizer
// sharded (ZeRO-1) logs the 1-process run's step-1 metrics (1e-6 relative) and saves each
// rank's optimizer shard instead of optimizer.safetensors; resumed from its step 2 on 2 ranks
// it logs steps 3-5 as the uninterrupted run (a reference reset at step 3 zeroes the sharded
// moments) and saves the same weights, bit for bit; resumed on 3 ranks, in one process, or
// without --shard-optimizer, it is refused with an error naming the numbers of ranks.
func TestRunShardedOptimizer(t *testing.T) {
	oneDir, a := t.TempDir(), t.TempDir()
	cfg, job := tinyRun(t, oneDir, 1)
	if _, err := Run(context.Background(), cfg, job); err != nil {
		t.Fatal(err)
	}
	for r, err := range runRanks(t, 2, a, 5, true, 0) {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	one, got := metricLines(t, oneDir), metricLines(t, a)
	for _, k := range []string{"critic/score/mean", "actor/pg_loss", "actor/entropy", "actor/grad_norm", "optimizer_updates"} {
		x, y := one[1][k].(float64), got[1][k].(float64)
		if math.Abs(x-y) > 1e-6*math.Abs(x) {
			t.Errorf("step 1 %s: 2 ranks sharded %.9g, 1 process %.9g", k, y, x)
		}
	}
	if got[1]["optimizer_updates"].(float64) < 1 {
		t.Fatal("step 1 made no optimizer update: the test checks nothing")
	}
	for _, s := range []int{2, 4, 5} {
		for r := range 2 {
			if _, err := os.Stat(filepath.Join(shardsDir(a, s), shardName(r, 2))); err != nil {
				t.Error(err)
			}
		}
		if _, err := os.Stat(filepath.Join(a, StateDir, checkpoints.StepDirName(int64(s)), checkpoints.OptimizerFile)); err == nil {
			t.Errorf("step %d: a whole optimizer state was saved by a sharded run", s)
		}
	}

	b := t.TempDir()
	if err := os.CopyFS(b, os.DirFS(a)); err != nil {
		t.Fatal(err)
	}
	for r, err := range runRanks(t, 2, b, 5, true, 2) {
		if err != nil {
			t.Fatalf("resumed, rank %d: %v", r, err)
		}
	}
	resumed := metricLines(t, b)
	for s := 3; s <= 5; s++ {
		if !reflect.DeepEqual(resumed[s], got[s]) {
			t.Errorf("step %d: resumed %v\nuninterrupted %v", s, resumed[s], got[s])
		}
	}
	wa, err := checkpoints.LoadRunState(filepath.Join(a, StateDir), 5)
	if err != nil {
		t.Fatal(err)
	}
	wb, err := checkpoints.LoadRunState(filepath.Join(b, StateDir), 5)
	if err != nil {
		t.Fatal(err)
	}
	if ca, cb := weightsChecksum(wa.Weights), weightsChecksum(wb.Weights); ca != cb {
		t.Errorf("step 5's weights: resumed %s, uninterrupted %s", cb, ca)
	}

	// Another number of ranks, or no sharding, re-shards: each rank takes its new range from
	// the old shards. The ranks' sums round differently, so the later steps agree to rounding.
	for _, c := range []struct {
		name  string
		ranks int
		shard bool
	}{{"3 ranks", 3, true}, {"2 ranks unsharded", 2, false}, {"1 process", 1, false}} {
		t.Run(c.name, func(t *testing.T) {
			d := t.TempDir()
			if err := os.CopyFS(d, os.DirFS(a)); err != nil {
				t.Fatal(err)
			}
			for r, err := range runRanks(t, c.ranks, d, 5, c.shard, 2) {
				if err != nil {
					t.Fatalf("rank %d: %v", r, err)
				}
			}
			res := metricLines(t, d)
			for s := 3; s <= 5; s++ {
				for _, k := range []string{"actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/kl_loss"} {
					x, y := got[s][k].(float64), res[s][k].(float64)
					if math.Abs(x-y) > 1e-5*math.Abs(x)+1e-9 {
						t.Errorf("step %d %s: re-sharded %.9g, uninterrupted 2 ranks %.9g", s, k, y, x)
					}
				}
			}
			saved := filepath.Join(shardsDir(d, 5), shardName(0, c.ranks)) // a has 2 ranks' shards
			if !c.shard {
				saved = filepath.Join(d, StateDir, checkpoints.StepDirName(5), checkpoints.OptimizerFile)
			}
			if _, err := os.Stat(saved); err != nil {
				t.Errorf("step 5 saved no optimizer state: %v", err)
			}
		})
	}
	d := t.TempDir()
	if err := os.CopyFS(d, os.DirFS(a)); err != nil {
		t.Fatal(err)
	}
	want := "--shard-optimizer shards the optimizer over the ranks of a data-parallel run, and this run has one process"
	if errs := runRanks(t, 1, d, 5, true, 2); errs[0] == nil || !strings.Contains(errs[0].Error(), want) {
		t.Errorf("1 process with --shard-optimizer: %v, want an error saying %q", errs[0], want)
	}
}

// TestReadShards: the elements of any range come from the shard files that hold them, as
// saved; a shard file whose metadata does not fit the split is refused, naming it.
func TestReadShards(t *testing.T) {
	a := t.TempDir()
	for r, err := range runRanks(t, 3, a, 2, true, 0) {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	rp, err := ResumeFrom(a, 2)
	if err != nil {
		t.Fatal(err)
	}
	rec := &optimizerShards{}
	if err := json.Unmarshal(rp.state.Extra[shardsKey], rec); err != nil {
		t.Fatal(err)
	}
	var m, v []float32 // the shards, concatenated
	for q := range 3 {
		st, err := checkpoints.ReadSafetensors(filepath.Join(shardsDir(a, 2), shardName(q, 3)))
		if err != nil {
			t.Fatal(err)
		}
		m, v = append(m, st.Tensors["m"].Data...), append(v, st.Tensors["v"].Data...)
	}
	if len(m) != rec.Total || !slices.ContainsFunc(v, func(x float32) bool { return x != 0 }) {
		t.Fatalf("%d moments for %d elements (or all zero): the test checks nothing", len(m), rec.Total)
	}
	r := &runSession{cfg: RunConfig{Dir: a, Resume: rp}}
	for _, rg := range [][2]int{{0, rec.Total}, {rec.Total/3 - 5, rec.Total/3 + 7}, {1, 2}, {rec.Total - 3, rec.Total}} {
		gm, gv, err := r.readShards(rec, rg[0], rg[1])
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(gm, m[rg[0]:rg[1]]) || !slices.Equal(gv, v[rg[0]:rg[1]]) {
			t.Errorf("range %v: not the saved moments", rg)
		}
	}
	bad := *rec // 2 ranks' record over 3 ranks' files
	bad.Ranks, bad.Files = 2, rec.Files[:2]
	if _, _, err := r.readShards(&bad, 0, rec.Total); err == nil || !strings.Contains(err.Error(), `is named "optimizer-rank-0-of-3.safetensors", want "optimizer-rank-0-of-2.safetensors"`) {
		t.Errorf("a record of 2 ranks over 3 ranks' files: %v", err)
	}
	bad.Files = nil // the same files under 2 ranks' names, digests recorded: the metadata tells
	for q := range 2 {
		src, dst := filepath.Join(shardsDir(a, 2), shardName(q, 3)), filepath.Join(shardsDir(a, 2), shardName(q, 2))
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := digest(dst)
		if err != nil {
			t.Fatal(err)
		}
		bad.Files = append(bad.Files, f)
	}
	if _, _, err := r.readShards(&bad, 0, rec.Total); err == nil || !strings.Contains(err.Error(), shardName(0, 2)+`: metadata "hi" is`) {
		t.Errorf("3 ranks' shards read as 2 ranks': %v", err)
	}
}

// TestShardDigestChecked: a shard file that is not the one the run state recorded (here: the
// other rank's) is refused on resume, naming the file.
func TestShardDigestChecked(t *testing.T) {
	a := t.TempDir()
	for r, err := range runRanks(t, 2, a, 2, true, 0) {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	p0, p1 := filepath.Join(shardsDir(a, 2), shardName(0, 2)), filepath.Join(shardsDir(a, 2), shardName(1, 2))
	b1, err := os.ReadFile(p1)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p0, b1, 0o644); err != nil {
		t.Fatal(err)
	}
	errs := runRanks(t, 2, a, 3, true, 2)
	if errs[0] == nil || !strings.Contains(errs[0].Error(), fmt.Sprintf("optimizer shard %s: ", p0)) || !strings.Contains(errs[0].Error(), "the run state of step 2 recorded") {
		t.Errorf("rank 0: %v", errs[0])
	}
}

// TestShardResumeFromUnsharded: a run state saved by an unsharded 2-rank run resumes with
// the optimizer sharded (each rank keeps its part of the whole moments) and saves shards.
func TestShardResumeFromUnsharded(t *testing.T) {
	a := t.TempDir()
	for r, err := range runRanks(t, 2, a, 2, false, 0) {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	if _, err := os.Stat(filepath.Join(a, StateDir, checkpoints.StepDirName(2), checkpoints.OptimizerFile)); err != nil {
		t.Fatal(err)
	}
	for r, err := range runRanks(t, 2, a, 3, true, 2) {
		if err != nil {
			t.Fatalf("resumed sharded, rank %d: %v", r, err)
		}
	}
	for r := range 2 {
		if _, err := os.Stat(filepath.Join(shardsDir(a, 3), shardName(r, 2))); err != nil {
			t.Error(err)
		}
	}
}
