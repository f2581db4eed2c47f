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

// TestInterrupt runs the real program on a copy of the fixture run and stops it with SIGINT
// once model.safetensors and model.onnx are written: it exits with status 130 and leaves the
// output's parent as it was (no temporary directory; an output that --force was replacing
// untouched). The run's tokenizer.json is a named pipe nobody writes, so the program blocks
// while copying it and cannot finish before the signal.
func TestInterrupt(t *testing.T) {
	bin := buildBinary(t, ".", "export")
	run := filepath.Join(t.TempDir(), "run")
	if err := os.CopyFS(run, os.DirFS(fixtureRun)); err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(run, "tokenizer", "tokenizer.json")
	os.Remove(tok)
	if err := syscall.Mkfifo(tok, 0o644); err != nil {
		t.Skipf("skipping: no named pipes here: %v", err)
	}
	tmpRe := regexp.MustCompile(`^\.release\.tmp-[0-9]+$`)
	for _, force := range []bool{false, true} {
		parent := t.TempDir()
		out := filepath.Join(parent, "release")
		args := []string{"-i", run, "-o", out}
		if force {
			os.MkdirAll(out, 0o755)
			os.WriteFile(filepath.Join(out, "model.onnx"), []byte("mine"), 0o644)
			args = append(args, "--force")
		}
		var stderr bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			m, _ := filepath.Glob(filepath.Join(parent, ".release.tmp-*", "model.onnx"))
			if len(m) == 1 && tmpRe.MatchString(filepath.Base(filepath.Dir(m[0]))) {
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("no temporary output appeared in %s\n%s", parent, stderr.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
		cmd.Process.Signal(syscall.SIGINT)
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 || !strings.Contains(stderr.String(), "stopped, nothing was written") {
			t.Errorf("--force=%v: exit %v, want status 130 saying nothing was written\n%s", force, err, stderr.String())
		}
		entries, _ := os.ReadDir(parent)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		want := ""
		if force {
			want = "release"
			if b, _ := os.ReadFile(filepath.Join(out, "model.onnx")); string(b) != "mine" {
				t.Errorf("the existing output was changed: %q", b)
			}
		}
		if strings.Join(names, " ") != want {
			t.Errorf("--force=%v: %s holds %q after the interrupt, want %q", force, parent, names, want)
		}
	}
}
