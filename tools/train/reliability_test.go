package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/checkpoints/tokenizer"
	"github.com/prolong-rl/prolong/grpo/quickstart"
)

// TestResumeOtherModel: a run resumed with another --model, or with a model whose tokenizer
// changed, is refused, and the run's own tokenizer (what tools/export exports with) is left as
// it was.
func TestResumeOtherModel(t *testing.T) {
	model, out := byoModel(t), t.TempDir()
	args := []string{"--quiet", "--device", "cpu", "--model", model, "--data", byoData(t, fiveRows...), "--steps", "1",
		"--prompts", "2", "--n", "2", "--max-response", "8", "--out", out}
	if err := runArgs(t, args...); err != nil {
		t.Fatal(err)
	}
	err := runArgs(t, "--quiet", "--out", out, "--resume", "--steps", "2", "--model", byoModel(t))
	if err == nil || !strings.Contains(err.Error(), "a run continues its own model") {
		t.Errorf("resume with another --model: %v", err)
	}
	runTok := filepath.Join(out, "tokenizer", "tokenizer.json")
	before, err := os.ReadFile(runTok)
	if err != nil {
		t.Fatal(err)
	}
	q := quickstart.NewTokenizer()
	swapped := append([]string{}, q.Tokens...)
	swapped[len(swapped)-1], swapped[len(swapped)-2] = swapped[len(swapped)-2], swapped[len(swapped)-1]
	tok, err := tokenizer.NewCharLevel(swapped, []string{quickstart.Pad, quickstart.BOS, quickstart.EOS}, quickstart.EOS)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Save(model); err != nil {
		t.Fatal(err)
	}
	err = runArgs(t, "--quiet", "--out", out, "--resume", "--steps", "2")
	if err == nil || !strings.Contains(err.Error(), "tokenizer differs") {
		t.Errorf("resume with a changed tokenizer: %v", err)
	}
	if after, _ := os.ReadFile(runTok); !bytes.Equal(before, after) {
		t.Error("the run's tokenizer was overwritten by a refused resume")
	}
}

// TestResumeRedoesFinalExport: a run whose final export was cut short (config and weights
// only, as a kill during the export left it before exports were atomic) gets it written whole
// by --resume, which has no step left to train.
func TestResumeRedoesFinalExport(t *testing.T) {
	out := t.TempDir()
	if err := runArgs(t, append(append([]string{}, shortRun...), "--out", out, "--ref-reset-every", "0")...); err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(out, "checkpoints", "step-000004")
	for _, f := range []string{"model.onnx", "tokenizer.json"} {
		if err := os.Remove(filepath.Join(final, f)); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(out, "checkpoints", ".step-000004.tmp-123"), 0o755) // a killed export's temporary folder
	if err := runArgs(t, "--quiet", "--out", out, "--resume"); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"model.onnx", "tokenizer.json", "model.safetensors"} {
		if _, err := os.Stat(filepath.Join(final, f)); err != nil {
			t.Errorf("after --resume: %v", err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(out, "checkpoints", ".*")); len(left) > 0 {
		t.Errorf("temporary export folders left: %v", left)
	}
}

// TestKillCampaign kills the trainer (the built program, kill -9) at 50 random moments of a
// short default job saving every step, continues it each time (with --resume once it has a
// run state, else by starting it again), and checks that it ends with the weights, reference
// and optimizer state of an uninterrupted run, bit for bit.
func TestKillCampaign(t *testing.T) {
	if testing.Short() {
		t.Skip("50 runs of the program")
	}
	bin := filepath.Join(t.TempDir(), "train")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
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
