// Package disttest runs the trainer data-parallel under Open MPI's mpirun (issue 32): the
// commands of docs/distributed.md, the 1-process default job and the same under mpirun -np 2.
// np3test runs it with 3 ranks and faulttest kills and stops ranks, each a test binary of its
// own so that each stays within go test's 10 minutes.
package disttest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/tools/train/disttest/internal/disthelp"
)

// docCommands are the commands of docs/distributed.md's "Train on several ranks" section (its
// first sh block), one a line.
func docCommands(t *testing.T) []string {
	t.Helper()
	doc, err := os.ReadFile("../../../docs/distributed.md")
	if err != nil {
		t.Fatal(err)
	}
	sec := string(doc)
	i := strings.Index(sec, "## Train on several ranks")
	if i < 0 {
		t.Fatal(`docs/distributed.md has no "## Train on several ranks" section`)
	}
	blocks := strings.Split(sec[i:], "```")
	if len(blocks) < 2 || !strings.HasPrefix(blocks[1], "sh\n") {
		t.Fatal(`docs/distributed.md's "Train on several ranks" section lacks its sh block`)
	}
	return strings.Split(strings.TrimSpace(strings.TrimPrefix(blocks[1], "sh\n")), "\n")
}

// TestDataParallelDoc runs the commands of docs/distributed.md's "Train on several ranks" as
// written (paths moved into a temporary folder, every process on GOMAXPROCS=2 threads, the ranks
// unbound): the default job `--steps 2 --seed 1` in one process, then under mpirun with 2 ranks.
// The 2-rank run must write one run directory with its exports, log the 1-process run's step-1
// metrics (score mean, policy loss, entropy, gradient norm, ...) to 1e-6 relative, and end with
// the same weights on every rank (each rank logs its weights' checksum at the save).
func TestDataParallelDoc(t *testing.T) {
	disthelp.Mpirun(t)
	cmds := docCommands(t)
	if len(cmds) != 3 || !strings.HasPrefix(cmds[2], "mpirun ") || !strings.Contains(cmds[2], " -np 2 ") {
		t.Fatalf("the doc's commands changed (want build, 1-process run, mpirun -np 2): %q", cmds)
	}
	tmp := t.TempDir()
	bin, one, two := filepath.Join(tmp, "train"), filepath.Join(tmp, "one"), filepath.Join(tmp, "two")
	script := strings.NewReplacer("/tmp/train", bin, "/tmp/one", one, "/tmp/two", two).Replace(strings.Join(cmds, "\n"))
	cmd := disthelp.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = "../../.."
	_, stderr := disthelp.Run(t, cmd)
	disthelp.CheckDefaultJob(t, two, 2, disthelp.Metrics(t, one), stderr, disthelp.DefaultJobTolerances(1e-6))
}
