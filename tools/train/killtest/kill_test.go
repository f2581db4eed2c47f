// Package killtest holds the trainer's kill -9 campaign (issue 20): 50 runs of the built
// program killed at random moments, in a package of its own so that its minutes do not add up
// with tools/train's own tests under one test binary's timeout.
package killtest

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
)

// TestKillCampaign kills the trainer (the built program, kill -9) at 50 random moments of a
// short default job saving every step, continues it each time (with --resume once it has a
// run state, else by starting it again), and checks that it ends with the weights, reference
// and optimizer state of an uninterrupted run, bit for bit.
func TestKillCampaign(t *testing.T) {
	if testing.Short() {
		t.Skip("50 runs of the program")
	}
	bin := filepath.Join(t.TempDir(), "train")
	if out, err := exec.Command("go", "build", "-o", bin, "..").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	args := []string{"--quiet", "--seed", "2", "--steps", "6", "--sft-steps", "6", "--sft-lr", "3e-3", "--eval-every", "2",
		"--eval-size", "6", "--ref-reset-every", "3", "--prompts", "2", "--n", "4", "--train-problems", "40",
		"--max-response", "6", "--eval-samples", "2", "--save-every", "1", "--keep", "2", "--device", "cpu"}
	ref := filepath.Join(t.TempDir(), "ref")
	start := time.Now()
	if out, err := exec.Command(bin, append(args, "--out", ref)...).CombinedOutput(); err != nil {
		t.Fatalf("uninterrupted run: %v\n%s", err, out)
	}
	whole := time.Since(start)
	a, err := checkpoints.LoadRunState(filepath.Join(ref, "state"), checkpoints.Latest)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(20, 20))
	kills := 0
	var dir string
	for round := 0; kills < 50; round++ { // a round: one run killed until it ends
		dir = filepath.Join(t.TempDir(), "killed")
		for kills < 50 && !finished(dir, 6) {
			if runKilled(t, bin, args, dir, time.Duration(rng.Float64()*float64(whole))) {
				kills++
			}
		}
		for !finished(dir, 6) { // the kills are spent: run it to its end
			runKilled(t, bin, args, dir, time.Hour)
		}
		b, err := checkpoints.LoadRunState(filepath.Join(dir, "state"), checkpoints.Latest)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %d kills so far; an uninterrupted run takes %v", round, kills, whole)
		sameRunState(t, a, b)
	}
	for _, f := range []string{"checkpoints/step-000006/model.onnx", "checkpoints/step-000003/model.onnx"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
}

// finished reports whether the run in dir has saved its last step.
func finished(dir string, last int64) bool {
	steps, _ := checkpoints.ListSteps(filepath.Join(dir, "state"))
	return len(steps) > 0 && steps[len(steps)-1] == last
}

// runKilled runs the program on dir (resuming once there is a run state, else starting it
// again) and kills it with SIGKILL after d unless it ends first; it reports whether it killed.
func runKilled(t *testing.T, bin string, args []string, dir string, d time.Duration) bool {
	t.Helper()
	cmdArgs := append(append([]string{}, args...), "--out", dir)
	if steps, _ := checkpoints.ListSteps(filepath.Join(dir, "state")); len(steps) > 0 {
		cmdArgs = []string{"--quiet", "--out", dir, "--resume"}
	}
	cmd := exec.Command(bin, cmdArgs...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-time.After(d):
		cmd.Process.Signal(syscall.SIGKILL)
		<-done
		return true
	case err := <-done:
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", bin, strings.Join(cmdArgs, " "), err, stderr.String())
		}
		return false
	}
}

// sameRunState fails unless b has a's weights, reference and optimizer state, bit for bit.
func sameRunState(t *testing.T, a, b *checkpoints.RunState) {
	t.Helper()
	for name, w := range a.Weights {
		if !bytes.Equal(f32bytes(w.Data), f32bytes(b.Weights[name].Data)) || !bytes.Equal(f32bytes(a.Reference[name].Data), f32bytes(b.Reference[name].Data)) {
			t.Fatalf("%s differs from the uninterrupted run", name)
		}
	}
	for g, ts := range a.Optimizer.Groups {
		for name, x := range ts {
			if !bytes.Equal(f32bytes(x.Data), f32bytes(b.Optimizer.Groups[g][name].Data)) {
				t.Fatalf("optimizer %s/%s differs from the uninterrupted run", g, name)
			}
		}
	}
}

// f32bytes is the bit pattern of v, so that comparisons are bit for bit (NaN included).
func f32bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}
