// Package shardnp3test runs the trainer's default job under mpirun -np 3 with the optimizer
// sharded over the ranks (--shard-optimizer, ZeRO-1; issue 32): uneven shares of the prompts,
// and 2,369,856 trainable elements in shards of 789,952.
package shardnp3test

import (
	"path/filepath"
	"testing"

	"github.com/prolong-rl/prolong/tools/train/disttest/internal/disthelp"
)

// TestShardOptimizerThreeRanks runs the default job `--steps 2 --seed 1` in one process and
// under mpirun -np 3 with --shard-optimizer (every process on GOMAXPROCS=2 threads): one run
// directory with its exports, the 1-process run's step-1 metrics (the policy loss and the
// gradient norm to 1e-5 relative, as the unsharded 3-rank run: disthelp.DefaultJobTolerances)
// and the same weights on every rank.
func TestShardOptimizerThreeRanks(t *testing.T) {
	launcher := disthelp.Mpirun(t)
	bin := disthelp.Trainer(t)
	tmp := t.TempDir()
	one, three := filepath.Join(tmp, "one"), filepath.Join(tmp, "three")
	args := []string{"--quiet", "--steps", "2", "--seed", "1", "--out"}
	disthelp.Run(t, disthelp.Command(bin, append(args, one)...))
	_, stderr := disthelp.Run(t, disthelp.Command(launcher, disthelp.MPIArgs(3, bin, append(args, three, "--shard-optimizer")...)...))
	disthelp.CheckDefaultJob(t, three, 3, disthelp.Metrics(t, one), stderr, disthelp.DefaultJobTolerances(1e-5))
}
