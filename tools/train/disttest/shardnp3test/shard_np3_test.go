// Package shardnp3test runs the trainer's default job under mpirun -np 3 with the optimizer
// sharded over the ranks (--shard-optimizer, ZeRO-1; issue 32): uneven shares of the prompts,
// and 2,369,856 trainable elements in shards of 789,952.
package shardnp3test

import (
	"testing"

	"github.com/prolong-rl/prolong/tools/train/disttest/internal/disthelp"
)

// TestShardOptimizerThreeRanks runs the default job `--steps 2 --seed 1` in one process and
// under mpirun -np 3 with --shard-optimizer (every process on GOMAXPROCS=2 threads): one run
// directory with its exports, the 1-process run's step-1 metrics (the policy loss and the
// gradient norm to 1e-5 relative, as the unsharded 3-rank run: disthelp.DefaultJobTolerances)
// and the same weights on every rank.
func TestShardOptimizerThreeRanks(t *testing.T) {
	disthelp.RunDefaultJob(t, 3, 1e-5, "--shard-optimizer")
}
