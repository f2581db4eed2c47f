// Package shardtest runs the trainer's default job under mpirun -np 2 with the optimizer
// sharded over the ranks (--shard-optimizer, ZeRO-1; issue 32): its step-1 metrics are the
// 1-process run's. shardnp3test runs it on 3 ranks, shardresumetest resumes it.
package shardtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/prolong-rl/prolong/tools/train/disttest/internal/disthelp"
)

// TestShardOptimizer runs the default job `--steps 2 --seed 1` in one process and under
// mpirun -np 2 with --shard-optimizer (every process on GOMAXPROCS=2 threads): the 2-rank run
// writes one run directory with its exports, logs the 1-process run's step-1 metrics (1e-6
// relative, as the unsharded 2-rank run: disthelp.DefaultJobTolerances) and ends with the same
// weights on every rank; each rank wrote its own optimizer shard and no whole
// optimizer.safetensors was saved.
func TestShardOptimizer(t *testing.T) {
	two := disthelp.RunDefaultJob(t, 2, 1e-6, "--shard-optimizer")
	for _, f := range []string{"optimizer-rank-0-of-2.safetensors", "optimizer-rank-1-of-2.safetensors"} {
		if _, err := os.Stat(filepath.Join(two, "state", "optimizer-shards", "step-000002", f)); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(filepath.Join(two, "state", "step-000002", "optimizer.safetensors")); err == nil {
		t.Error("the run state holds a whole optimizer.safetensors: the optimizer was sharded")
	}
}
