// Package np3test runs the trainer's default job under mpirun with 3 ranks (issue 32): uneven
// shares of the step's 16 prompts (5, 5, 6).
package np3test

import (
	"testing"

	"github.com/prolong-rl/prolong/tools/train/disttest/internal/disthelp"
)

// TestDataParallelThreeRanks runs the default job `--steps 2 --seed 1` in one process and
// under mpirun -np 3 (every process on GOMAXPROCS=2 threads): the 3-rank run writes one run
// directory with its exports, logs the 1-process run's step-1 metrics (the policy loss and the
// gradient norm to 1e-5 relative: see disthelp.DefaultJobTolerances) and ends with the same
// weights on every rank.
func TestDataParallelThreeRanks(t *testing.T) {
	disthelp.RunDefaultJob(t, 3, 1e-5)
}
