// Package faulttest kills and stops ranks of the trainer's data-parallel runs under mpirun
// (issue 32): the job must end, saying which rank failed, and --resume must finish it.
package faulttest

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/tools/train/disttest/internal/disthelp"
)

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
	launcher := disthelp.Mpirun(t)
	bin := disthelp.Trainer(t)
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
			cmd := disthelp.Command(launcher, disthelp.MPIArgs(c.np, bin, args...)...)
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
			disthelp.Run(t, disthelp.Command(launcher, disthelp.MPIArgs(c.np, bin, "--quiet", "--out", dir, "--resume")...))
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
