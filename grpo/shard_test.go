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

	for _, c := range []struct {
		name  string
		ranks int
		shard bool
		want  string
	}{
		{"3 ranks", 3, true, "holds the optimizer sharded over 2 ranks, and this run has 3 ranks: resume it on 2 ranks"},
		{"unsharded", 2, false, "holds the optimizer sharded over 2 ranks (--shard-optimizer), and this run does not shard it"},
		{"1 process", 1, true, "--shard-optimizer shards the optimizer over the ranks of a data-parallel run, and this run has one process"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := t.TempDir()
			if err := os.CopyFS(d, os.DirFS(a)); err != nil {
				t.Fatal(err)
			}
			for r, err := range runRanks(t, c.ranks, d, 5, c.shard, 2) {
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Errorf("rank %d: %v, want an error saying %q", r, err, c.want)
				}
			}
		})
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
