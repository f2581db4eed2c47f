// Package disthelp holds what the trainer's data-parallel tests (tools/train/disttest and its
// sub-packages, one test binary each so that each stays within go test's 10 minutes) share: the
// launcher, the built program, and reading runs.
package disthelp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Mpirun is the launcher's path; the test fails when it is missing and PROLONG_REQUIRE_MPI=1
// (CI sets it), else skips saying what to install.
func Mpirun(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("mpirun")
	if err == nil {
		return p
	}
	if os.Getenv("PROLONG_REQUIRE_MPI") == "1" {
		t.Fatal("PROLONG_REQUIRE_MPI=1 but mpirun is not on PATH (apt-get install openmpi-bin)")
	}
	t.Skip("mpirun not found: apt-get install openmpi-bin (set PROLONG_REQUIRE_MPI=1 to make this a failure)")
	return ""
}

var built struct {
	once sync.Once
	bin  string
	err  error
}

// Trainer builds tools/train once per test binary, as it ships: without cgo.
func Trainer(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "disttest")
		if err != nil {
			built.err = err
			return
		}
		built.bin = filepath.Join(dir, "train")
		cmd := exec.Command("go", "build", "-o", built.bin, "github.com/prolong-rl/prolong/tools/train")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.bin
}

// Threads is the CPU backend's thread count in every process of these tests: the split of some
// reductions follows it (engine/cpu WithThreads), so the 1-process run and the ranks use the
// same, whatever cores the machine or mpirun's binding gives.
const Threads = "2"

// MPIArgs start np ranks of the trainer with args: as root where the tests run as root, more
// ranks than cores allowed, unbound (the ranks' threads share the cores).
func MPIArgs(np int, bin string, args ...string) []string {
	return append([]string{"--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
		"-np", strconv.Itoa(np), bin}, args...)
}

// Command is exec.Command with GOMAXPROCS=Threads, and Open MPI's ranks unbound and yielding
// their core while they wait (the machine is shared), for mpirun and the processes it starts.
func Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS="+Threads, "OMPI_MCA_hwloc_base_binding_policy=none", "OMPI_MCA_mpi_yield_when_idle=1")
	return cmd
}

// Run runs cmd to its end and returns its stdout and stderr; a failure is fatal.
func Run(t *testing.T, cmd *exec.Cmd) (string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(cmd.Args, " "), err, stdout.String(), stderr.String())
	}
	t.Logf("%s: %v", strings.Join(cmd.Args, " "), time.Since(start).Round(time.Second))
	return stdout.String(), stderr.String()
}

// Metrics reads a run's metrics.jsonl: one map per line, by step.
func Metrics(t *testing.T, dir string) map[int]map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]map[string]any{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		out[int(m["step"].(float64))] = m
	}
	return out
}

// checksumLine is the line each rank logs at a save: its weights' SHA-256.
var checksumLine = regexp.MustCompile(`dist: weights checksum rank=(\d+) step=(\d+) sha256=([0-9a-f]{64})`)

// Tolerance is how far (relative) a data-parallel run's step-1 metric may be from the 1-process
// run's.
type Tolerance struct {
	Key string
	Rel float64
}

// CheckDefaultJob checks the data-parallel default job `--steps 2` of np ranks in dir against
// the 1-process run ref (its metrics): one run directory with its exports, written by rank 0
// alone; step 1's metrics within tols; and the same weights checksum logged by every rank
// (stderr: the ranks' log) at the final save.
func CheckDefaultJob(t *testing.T, dir string, np int, ref map[int]map[string]any, stderr string, tols []Tolerance) {
	t.Helper()
	for _, f := range []string{"metrics.jsonl", "checkpoints/step-000002/model.onnx", "checkpoints/step-000002/model.safetensors", "tokenizer", "reward.png"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	if evs, _ := filepath.Glob(filepath.Join(dir, "events.out.tfevents.*")); len(evs) != 1 {
		t.Errorf("TensorBoard event files %v: want one, rank 0's", evs)
	}
	got := Metrics(t, dir)
	if len(got) != 3 {
		t.Errorf("metrics.jsonl has %d lines, want 3 (steps 0-2, rank 0's alone)", len(got))
	}
	for _, c := range tols {
		a, b := ref[1][c.Key].(float64), got[1][c.Key].(float64)
		rel := math.Abs(a-b) / math.Max(math.Abs(a), 1e-30)
		if rel > c.Rel {
			t.Errorf("step 1 %s: %d ranks %.9g, 1 process %.9g (relative difference %.2g, allowed %g)", c.Key, np, b, a, rel, c.Rel)
		} else {
			t.Logf("step 1 %s: %d ranks %.9g, 1 process %.9g (relative difference %.2g)", c.Key, np, b, a, rel)
		}
	}
	if got[1]["perf/grad_allreduce_bytes"] == nil || ref[1]["perf/grad_allreduce_bytes"] != nil {
		t.Errorf("gradient all-reduce bytes at step 1: %d ranks %v, 1 process %v (want some, none)", np, got[1]["perf/grad_allreduce_bytes"], ref[1]["perf/grad_allreduce_bytes"])
	}
	sums := map[int]string{}
	for _, m := range checksumLine.FindAllStringSubmatch(stderr, -1) {
		if s, _ := strconv.Atoi(m[2]); s == 2 {
			r, _ := strconv.Atoi(m[1])
			sums[r] = m[3]
		}
	}
	if len(sums) != np {
		t.Fatalf("%d ranks logged a weights checksum at step 2, want %d:\n%s", len(sums), np, stderr)
	}
	for r := 1; r < np; r++ {
		if sums[r] != sums[0] {
			t.Errorf("rank %d's weights %s differ from rank 0's %s", r, sums[r], sums[0])
		}
	}
}

// RunDefaultJob runs the default job `--steps 2 --seed 1` in one process and under mpirun -np
// np with the further flags (every process through Command), checks the np-rank run against the
// 1-process run with CheckDefaultJob and DefaultJobTolerances(pgTol), and returns the np-rank
// run's directory.
func RunDefaultJob(t *testing.T, np int, pgTol float64, flags ...string) string {
	t.Helper()
	launcher := Mpirun(t)
	bin := Trainer(t)
	tmp := t.TempDir()
	one, ranks := filepath.Join(tmp, "one"), filepath.Join(tmp, fmt.Sprintf("np%d", np))
	args := []string{"--quiet", "--steps", "2", "--seed", "1", "--out"}
	Run(t, Command(bin, append(args, one)...))
	_, stderr := Run(t, Command(launcher, MPIArgs(np, bin, append(append(args, ranks), flags...)...)...))
	CheckDefaultJob(t, ranks, np, Metrics(t, one), stderr, DefaultJobTolerances(pgTol))
	return ranks
}

// DefaultJobTolerances are the step-1 metrics compared, with how close they must be to the
// 1-process run's. Those of the rollouts and the first update are the same to rounding; the
// policy loss and the gradient norm sum both of the step's mini-batches, and the second one
// runs on weights that differ from the 1-process run's in the last bits (the first update's
// gradient sums its tokens in another order), amplified in the policy loss because it is a
// small sum of terms of both signs: pgTol for them (1e-6 at 2 ranks; 3 ranks measured 3.4e-6).
// The KL estimators are small differences of log-probs: 1e-4.
func DefaultJobTolerances(pgTol float64) []Tolerance {
	return []Tolerance{{"critic/score/mean", 1e-6}, {"actor/entropy", 1e-6}, {"response_length/mean", 1e-6}, {"accuracy", 1e-6},
		{"groups_kept", 1e-6}, {"groups_dropped", 1e-6}, {"sampling_rounds", 1e-6}, {"train_tokens", 1e-6}, {"actor/pg_clipfrac", 1e-6},
		{"actor/pg_loss", pgTol}, {"loss", pgTol}, {"actor/grad_norm", pgTol}, {"actor/kl_loss", 1e-4}, {"actor/ppo_kl", 1e-4}}
}
