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
	launcher := disthelp.Mpirun(t)
	bin := disthelp.Trainer(t)
	tmp := t.TempDir()
	one, two := filepath.Join(tmp, "one"), filepath.Join(tmp, "two")
	args := []string{"--quiet", "--steps", "2", "--seed", "1", "--out"}
	disthelp.Run(t, disthelp.Command(bin, append(args, one)...))
	_, stderr := disthelp.Run(t, disthelp.Command(launcher, disthelp.MPIArgs(2, bin, append(args, two, "--shard-optimizer")...)...))
	disthelp.CheckDefaultJob(t, two, 2, disthelp.Metrics(t, one), stderr, disthelp.DefaultJobTolerances(1e-6))
	for _, f := range []string{"optimizer-rank-0-of-2.safetensors", "optimizer-rank-1-of-2.safetensors"} {
		if _, err := os.Stat(filepath.Join(two, "state", "optimizer-shards", "step-000002", f)); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(filepath.Join(two, "state", "step-000002", "optimizer.safetensors")); err == nil {
		t.Error("the run state holds a whole optimizer.safetensors: the optimizer was sharded")
	}
}
