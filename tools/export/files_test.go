//go:build unix

package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/tools/internal/tooltest"
)

// TestModelFiles runs the real program on inputs whose files lead out of their directory
// (symlinks to a copy elsewhere) or are named pipes: a Hugging Face directory's weights and
// config, a training run's tokenizer files and weights. Each is refused at once, exit status
// 1, the error naming the file and where the link leads, and nothing is written. The Hugging
// Face directory laid out as a cache snapshot (relative symlinks into the repository's
// blobs/) exports.
func TestModelFiles(t *testing.T) {
	bin := tooltest.Build(t, ".", false)
	base := t.TempDir()
	hf := filepath.Join(base, "hf")
	mustExport(t, "-i", fixtureRun, "-o", hf, "--format", "safetensors")
	elsewhere := filepath.Join(base, "elsewhere")
	if err := os.CopyFS(elsewhere, os.DirFS(hf)); err != nil {
		t.Fatal(err)
	}
	link := func(target string) func(string) {
		return func(path string) {
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}
	}
	pipe := func(path string) {
		if err := syscall.Mkfifo(path, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// input makes a copy of src with its file name replaced by what replace makes.
	input := func(name, src, file string, replace func(path string)) string {
		d := filepath.Join(base, name)
		if err := os.CopyFS(d, os.DirFS(src)); err != nil {
			t.Fatal(err)
		}
		os.Remove(filepath.Join(d, file))
		replace(filepath.Join(d, file))
		return d
	}
	step := filepath.Join("state", checkpoints.StepDirName(4), "model.safetensors")
	for _, tc := range []struct {
		name string
		in   string
		says string
	}{
		{"weights linked out", input("st-out", hf, "model.safetensors", link(filepath.Join(elsewhere, "model.safetensors"))),
			"model.safetensors leads to " + filepath.Join(elsewhere, "model.safetensors") + ", outside the model directory"},
		{"config linked out", input("cfg-out", hf, "config.json", link("../elsewhere/config.json")),
			"config.json leads to " + filepath.Join(elsewhere, "config.json")},
		{"weights a named pipe", input("st-pipe", hf, "model.safetensors", pipe), "model.safetensors is a named pipe"},
		{"run tokenizer linked out", input("tok-out", fixtureRun, "tokenizer/tokenizer.json", link(filepath.Join(elsewhere, "config.json"))),
			"tokenizer.json leads to " + filepath.Join(elsewhere, "config.json")},
		{"run tokenizer a named pipe", input("tok-pipe", fixtureRun, "tokenizer/tokenizer_config.json", pipe), "tokenizer_config.json is a named pipe"},
		{"run weights a named pipe", input("run-pipe", fixtureRun, step, pipe), step + " is a named pipe"},
	} {
		parent := t.TempDir()
		r := tooltest.Run(t, bin, "-i", tc.in, "-o", filepath.Join(parent, "out"), "--quiet")
		if r.Code != 1 || !strings.Contains(r.Stderr, tc.says) {
			t.Errorf("%s: exit %d, want 1 saying %q:\n%s%s", tc.name, r.Code, tc.says, r.Stdout, r.Stderr)
		}
		if got := tooltest.Names(parent); got != "" {
			t.Errorf("%s: %s holds %q", tc.name, parent, got)
		}
	}

	repo := filepath.Join(base, "hub", "models--org--tiny")
	snap := filepath.Join(repo, "snapshots", "0123")
	os.MkdirAll(filepath.Join(repo, "blobs"), 0o755)
	os.MkdirAll(snap, 0o755)
	entries, _ := os.ReadDir(hf)
	for _, e := range entries {
		if err := os.Rename(filepath.Join(elsewhere, e.Name()), filepath.Join(repo, "blobs", "b-"+e.Name())); err != nil {
			t.Fatal(err)
		}
		link("../../blobs/b-" + e.Name())(filepath.Join(snap, e.Name()))
	}
	if r := tooltest.Run(t, bin, "-i", snap, "-o", filepath.Join(t.TempDir(), "out"), "--quiet"); r.Code != 0 {
		t.Errorf("Hub snapshot: exit %d:\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
}

// TestUnreadableInput: a training run the user may not read is reported as such, naming it,
// not as "no model here" (the program runs as nobody when the test runs as root).
func TestUnreadableInput(t *testing.T) {
	bin := tooltest.Build(t, ".", false)
	in := filepath.Join(tooltest.OpenDir(t), "run")
	if err := os.CopyFS(in, os.DirFS(fixtureRun)); err != nil {
		t.Fatal(err)
	}
	tooltest.Unreadable(t, bin, in, func(out string) []string { return []string{"-i", in, "-o", out} })
}
