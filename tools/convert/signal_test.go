//go:build unix

package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var tmpRe = regexp.MustCompile(`^\.hf\.tmp-[0-9]+$`)

// TestInterrupt runs the real program and stops it mid-write with SIGINT or SIGTERM: it exits
// with 128 + the signal's number, and leaves the output's parent as it was (no temporary
// directory, an existing output untouched). The input's tokenizer.json is a named pipe nobody
// writes, so the program blocks while copying it, after the weights are written, and cannot
// finish before the signal.
func TestInterrupt(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "convert")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	in := filepath.Join(t.TempDir(), "in")
	os.MkdirAll(in, 0o755)
	sameFileCopy(t, fixture("qwen2_past"), filepath.Join(in, "model.onnx"))
	if err := syscall.Mkfifo(filepath.Join(in, "tokenizer.json"), 0o644); err != nil {
		t.Skipf("skipping: no named pipes here: %v", err)
	}
	for _, tc := range []struct {
		name  string
		sig   syscall.Signal
		force bool
	}{
		{"SIGINT", syscall.SIGINT, false},
		{"SIGTERM", syscall.SIGTERM, false},
		{"SIGINT --force", syscall.SIGINT, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			out := filepath.Join(parent, "hf")
			args := []string{"-i", in, "-o", out}
			if tc.force {
				os.MkdirAll(out, 0o755)
				os.WriteFile(filepath.Join(out, "model.safetensors"), []byte("mine"), 0o644)
				args = append(args, "--force")
			}
			var stderr bytes.Buffer
			cmd := exec.Command(bin, args...)
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Wait until the weights are in the temporary directory (.hf.tmp-N, not the
			// .hf.tmp-N.tmp-M checkpoints.Save writes them in first).
			deadline := time.Now().Add(15 * time.Second)
			for {
				if m, _ := filepath.Glob(filepath.Join(parent, ".hf.tmp-*", "model.safetensors")); len(m) == 1 && tmpRe.MatchString(filepath.Base(filepath.Dir(m[0]))) {
					break
				}
				if time.Now().After(deadline) {
					cmd.Process.Kill()
					cmd.Wait()
					t.Fatalf("no temporary output appeared in %s\n%s", parent, stderr.String())
				}
				time.Sleep(5 * time.Millisecond)
			}
			cmd.Process.Signal(tc.sig)
			err := cmd.Wait()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 128+int(tc.sig) {
				t.Errorf("exit %v, want status %d\n%s", err, 128+int(tc.sig), stderr.String())
			}
			if !strings.Contains(stderr.String(), "stopped, nothing was written") {
				t.Errorf("stderr does not say nothing was written:\n%s", stderr.String())
			}
			entries, _ := os.ReadDir(parent)
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			want := ""
			if tc.force {
				want = "hf"
			}
			if strings.Join(names, " ") != want {
				t.Errorf("%s holds %q after the interrupt, want %q", parent, names, want)
			}
			if tc.force {
				if b, _ := os.ReadFile(filepath.Join(out, "model.safetensors")); string(b) != "mine" {
					t.Errorf("the existing output was changed: %q", b)
				}
			}
		})
	}
}
