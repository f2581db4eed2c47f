// Package disttest runs the trainer data-parallel under Open MPI's mpirun (issue 32), in a
// package of its own so that its minutes do not add up with tools/train's own tests under one
// test binary's timeout.
package disttest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
)

// mpirun is the launcher's path; the test fails when it is missing and PROLONG_REQUIRE_MPI=1
// (CI sets it), else skips saying what to install.
func mpirun(t *testing.T) string {
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

// trainer builds the program once, as it ships: without cgo.
func trainer(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "disttest")
		if err != nil {
			built.err = err
			return
		}
		built.bin = filepath.Join(dir, "train")
		cmd := exec.Command("go", "build", "-o", built.bin, "..")
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

// threads is the CPU backend's thread count in every process of these tests: the split of some
// reductions follows it (engine/cpu WithThreads), so the 1-process run and the ranks use the
// same, whatever cores the machine or mpirun's binding gives.
const threads = "2"

// mpiArgs start np ranks of the trainer with args: as root where the tests run as root, more
// ranks than cores allowed, unbound (the ranks' threads share the cores).
func mpiArgs(np int, bin string, args ...string) []string {
	return append([]string{"--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "GOMAXPROCS=" + threads,
		"-np", strconv.Itoa(np), bin}, args...)
}

func command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS="+threads)
	return cmd
}

// run runs cmd to its end and returns its stdout and stderr; a failure is fatal.
func run(t *testing.T, cmd *exec.Cmd) (string, string) {
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

var reference struct {
	once sync.Once
	dir  string
	err  error
}

// referenceRun is the 1-process default job `--steps 2 --seed 1`, run once.
func referenceRun(t *testing.T, bin string) string {
	t.Helper()
	reference.once.Do(func() {
		dir, err := os.MkdirTemp("", "disttest-ref")
		if err != nil {
			reference.err = err
			return
		}
		reference.dir = filepath.Join(dir, "run")
		cmd := command(bin, "--quiet", "--out", reference.dir, "--steps", "2", "--seed", "1")
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			reference.err = fmt.Errorf("1-process run: %v\n%s", err, out)
		}
		t.Logf("1-process default job --steps 2: %v", time.Since(start).Round(time.Second))
	})
	if reference.err != nil {
		t.Fatal(reference.err)
	}
	return reference.dir
}

// metrics reads a run's metrics.jsonl: one map per line, by step.
func metrics(t *testing.T, dir string) map[int]map[string]any {
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

// checksums are the weights checksums the ranks logged for step: by rank.
func checksums(log string, step int) map[int]string {
	out := map[int]string{}
	for _, m := range checksumLine.FindAllStringSubmatch(log, -1) {
		if s, _ := strconv.Atoi(m[2]); s == step {
			r, _ := strconv.Atoi(m[1])
			out[r] = m[3]
		}
	}
	return out
}

// TestDataParallelDefaultJob runs the default job `--steps 2 --seed 1` under mpirun with 2 and
// 3 ranks (3: uneven shares of the 16 prompts) and checks that it writes one run directory
// with its exports, that its step-1 metrics are the 1-process run's to 1e-6 relative, and
// that every rank ends with the same weights (each rank logs its checksum at the save).
func TestDataParallelDefaultJob(t *testing.T) {
	launcher := mpirun(t)
	bin := trainer(t)
	ref := metrics(t, referenceRun(t, bin))
	for _, np := range []int{2, 3} {
		t.Run(fmt.Sprintf("np%d", np), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "run")
			_, stderr := run(t, command(launcher, mpiArgs(np, bin, "--quiet", "--out", dir, "--steps", "2", "--seed", "1")...))
			for _, f := range []string{"metrics.jsonl", "checkpoints/step-000002/model.onnx", "checkpoints/step-000002/model.safetensors", "tokenizer", "reward.png"} {
				if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
					t.Error(err)
				}
			}
			if evs, _ := filepath.Glob(filepath.Join(dir, "events.out.tfevents.*")); len(evs) != 1 {
				t.Errorf("TensorBoard event files %v: want one, rank 0's", evs)
			}
			got := metrics(t, dir)
			if len(got) != 3 {
				t.Errorf("metrics.jsonl has %d lines, want 3 (steps 0-2, rank 0's alone)", len(got))
			}
			for _, key := range []string{"critic/score/mean", "actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/kl_loss",
				"loss", "response_length/mean", "groups_kept", "groups_dropped", "sampling_rounds", "train_tokens", "rollout_corr/k3_kl"} {
				a, b := ref[1][key].(float64), got[1][key].(float64)
				if rel := math.Abs(a-b) / math.Max(math.Abs(a), 1e-30); rel > 1e-6 {
					t.Errorf("step 1 %s: %d ranks %.9g, 1 process %.9g (relative difference %.2g)", key, np, b, a, rel)
				}
			}
			if got[1]["perf/grad_allreduce_bytes"] == nil {
				t.Errorf("step 1 logs no gradient all-reduce bytes: %v", got[1])
			}
			sums := checksums(stderr, 2)
			if len(sums) != np {
				t.Fatalf("%d ranks logged a weights checksum at step 2, want %d:\n%s", len(sums), np, stderr)
			}
			for r := 1; r < np; r++ {
				if sums[r] != sums[0] {
					t.Errorf("rank %d's weights %s differ from rank 0's %s", r, sums[r], sums[0])
				}
			}
		})
	}
}

// small is a short job (a few seconds a run) for the fault tests: a tiny warm start, 2 prompts
// per step, a save every step.
var small = []string{"--quiet", "--seed", "2", "--steps", "4", "--sft-steps", "6", "--sft-lr", "3e-3", "--eval-every", "2",
	"--eval-size", "6", "--prompts", "4", "--n", "4", "--train-problems", "40", "--max-response", "6", "--eval-samples", "2",
	"--save-every", "1", "--keep", "2"}

// rankLine is the line each rank logs when it starts: its rank and process id.
var rankLine = regexp.MustCompile(`dist: rank (\d+) of \d+ .* pid=(\d+)`)

// TestRankFaults: a rank killed with SIGKILL (np 2 and 3) or stopped (SIGSTOP: it hangs, np 2,
// with --dist-timeout 5s) after the run saved step 1 ends the whole job; the hang's message
// names the stopped rank and the last step saved; --resume then finishes the run.
func TestRankFaults(t *testing.T) {
	launcher := mpirun(t)
	bin := trainer(t)
	for _, c := range []struct {
		name   string
		np     int
		sig    syscall.Signal
		victim int
		want   []string // in the job's output
	}{
		{"kill np2", 2, syscall.SIGKILL, 1, nil},
		{"kill np3", 3, syscall.SIGKILL, 2, nil},
		{"hang np2", 2, syscall.SIGSTOP, 1, []string{"failed: rank 1 (no sign of life", "last step saved: "}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "run")
			args := append(append([]string{}, small...), "--out", dir)
			if c.sig == syscall.SIGSTOP { // the others wait this long for the stopped rank
				args = append(args, "--dist-timeout", "30s")
			}
			cmd := command(launcher, mpiArgs(c.np, bin, args...)...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			pr, pw := io.Pipe()
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = io.MultiWriter(&out, pw), io.MultiWriter(&out, pw)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			pids := make(chan int, 1)
			go func() {
				sc := bufio.NewScanner(pr)
				for sc.Scan() {
					if m := rankLine.FindStringSubmatch(sc.Text()); m != nil && m[1] == strconv.Itoa(c.victim) {
						pid, _ := strconv.Atoi(m[2])
						pids <- pid
					}
				}
			}()
			done := make(chan error, 1)
			go func() { done <- cmd.Wait(); pw.Close() }()
			var pid int
			select {
			case pid = <-pids:
			case err := <-done:
				t.Fatalf("the job ended (%v) before rank %d said its pid:\n%s", err, c.victim, out.String())
			case <-time.After(3 * time.Minute):
				t.Fatalf("no pid from rank %d:\n%s", c.victim, out.String())
			}
			for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
				if steps, _ := checkpoints.ListSteps(filepath.Join(dir, "state")); len(steps) > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no run state saved:\n%s", out.String())
				}
			}
			syscall.Kill(pid, c.sig)
			killed := time.Now()
			select {
			case err := <-done:
				if err == nil {
					t.Fatalf("the job ended well although rank %d got %v (killed too late?):\n%s", c.victim, c.sig, out.String())
				}
				t.Logf("rank %d got %v; the job ended %v later: %v", c.victim, c.sig, time.Since(killed).Round(time.Millisecond), err)
			case <-time.After(2 * time.Minute):
				t.Fatalf("the job still runs 2 minutes after rank %d got %v:\n%s", c.victim, c.sig, out.String())
			}
			if c.sig == syscall.SIGSTOP {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			for _, line := range strings.Split(out.String(), "\n") {
				if strings.HasPrefix(line, "dist: aborting the job") {
					t.Log(line)
				}
			}
			for _, w := range c.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("the job's output lacks %q:\n%s", w, out.String())
				}
			}
			steps, _ := checkpoints.ListSteps(filepath.Join(dir, "state"))
			if len(steps) == 0 || steps[len(steps)-1] >= 4 {
				t.Fatalf("run states %v: want some, not the last step's", steps)
			}
			run(t, command(launcher, mpiArgs(c.np, bin, "--quiet", "--out", dir, "--resume")...))
			steps, _ = checkpoints.ListSteps(filepath.Join(dir, "state"))
			if len(steps) == 0 || steps[len(steps)-1] != 4 {
				t.Errorf("run states after --resume: %v, want up to step 4", steps)
			}
			if _, err := os.Stat(filepath.Join(dir, "checkpoints/step-000004/model.onnx")); err != nil {
				t.Error(err)
			}
		})
	}
}
