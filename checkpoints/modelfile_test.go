package checkpoints

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
)

// withTimeout runs f, failing the test when it has not returned within 10 seconds (a read of
// a named pipe nobody writes would block forever).
func withTimeout(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: still blocked after 10s", what)
	}
}

// TestOpenModelFile: files that resolve inside the model directory open, also through
// relative symlinks and a symlinked directory, and a Hub-cache snapshot's links into its
// repository's blobs/; a symlink out of the directory (or out of the repository folder) is
// refused naming where it leads; named pipes, devices and directories are refused as not
// regular files, at once.
func TestOpenModelFile(t *testing.T) {
	base := t.TempDir()
	mk := func(path, body string) {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, path string) {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
	}
	model := filepath.Join(base, "model")
	mk(filepath.Join(model, "a.bin"), "a")
	mk(filepath.Join(model, "sub", "b.bin"), "b")
	mk(filepath.Join(base, "secret"), "secret")
	link("sub/b.bin", filepath.Join(model, "inside"))
	link("../secret", filepath.Join(model, "outside"))
	link(filepath.Join(base, "secret"), filepath.Join(model, "absolute"))
	link("/dev/null", filepath.Join(model, "devnull"))
	link("..", filepath.Join(model, "up"))
	if err := syscall.Mkfifo(filepath.Join(model, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	link("model", filepath.Join(base, "alias"))
	// A Hub cache: snapshots link into their repository's blobs/, never into another's.
	repo := filepath.Join(base, "hub", "models--org--tiny")
	other := filepath.Join(base, "hub", "models--org--other")
	snap := filepath.Join(repo, "snapshots", "0123abc")
	mk(filepath.Join(repo, "blobs", "e1"), "blob")
	mk(filepath.Join(other, "blobs", "e2"), "other blob")
	link("../../blobs/e1", filepath.Join(snap, "model.safetensors"))
	link("../../../models--org--other/blobs/e2", filepath.Join(snap, "stolen.safetensors"))

	for _, tc := range []struct {
		dir, name string
		body      string // the contents when it opens
		err       error  // else the error wrapped
		says      string // and what the error says
	}{
		{model, "a.bin", "a", nil, ""},
		{model, "sub/b.bin", "b", nil, ""},
		{model, "inside", "b", nil, ""},
		{filepath.Join(base, "alias"), "a.bin", "a", nil, ""},
		{filepath.Join(base, "alias"), "inside", "b", nil, ""},
		{snap, "model.safetensors", "blob", nil, ""},
		{model, "outside", "", ErrOutsideModel, filepath.Join(model, "outside") + " leads to " + filepath.Join(base, "secret") + ", outside the model directory " + model},
		{model, "absolute", "", ErrOutsideModel, "leads to " + filepath.Join(base, "secret")},
		{model, "up/secret", "", ErrOutsideModel, "leads to " + filepath.Join(base, "secret")},
		{model, "devnull", "", ErrOutsideModel, "leads to /dev/null"},
		{snap, "stolen.safetensors", "", ErrOutsideModel, "outside the model directory " + repo},
		{model, "pipe", "", ErrNotRegular, filepath.Join(model, "pipe") + " is a named pipe, not a regular file"},
		{model, "sub", "", ErrNotRegular, "is a directory"},
		{model, "missing", "", os.ErrNotExist, "missing"},
	} {
		withTimeout(t, tc.name, func() {
			b, err := ReadModelFile(tc.dir, tc.name)
			switch {
			case tc.err == nil && (err != nil || string(b) != tc.body):
				t.Errorf("%s in %s: %q, %v; want %q", tc.name, tc.dir, b, err, tc.body)
			case tc.err != nil && (!errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.says)):
				t.Errorf("%s in %s: error %v, want %v saying %q", tc.name, tc.dir, err, tc.err, tc.says)
			}
		})
	}
	withTimeout(t, "OpenRegular", func() {
		if _, err := OpenRegular("/dev/null"); !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), "/dev/null is a device") {
			t.Errorf("OpenRegular(/dev/null): %v", err)
		}
		if _, err := OpenRegular(filepath.Join(model, "pipe")); !errors.Is(err, ErrNotRegular) {
			t.Errorf("OpenRegular(pipe): %v", err)
		}
		f, err := OpenRegular(filepath.Join(model, "outside")) // a file the user names may be anywhere
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	})
}

// TestLoadRefusesOutsideFiles: Load reads no weights or config through a symlink that leaves
// the model directory, and does not block on a named pipe; the error names the file.
func TestLoadRefusesOutsideFiles(t *testing.T) {
	cfg := tinyConfig()
	good := filepath.Join(t.TempDir(), "good")
	if err := Save(good, cfg, engine.RandomWeights(cfg, 1, 0.1), SaveOptions{ShardBytes: 4096}); err != nil {
		t.Fatal(err)
	}
	shards, _ := filepath.Glob(filepath.Join(good, "model-*.safetensors"))
	if len(shards) < 2 {
		t.Fatalf("want shards, got %v", shards)
	}
	for _, tc := range []struct {
		name     string
		replace  string // the file of good/ replaced
		pipe     bool   // by a named pipe, else by a symlink to the original outside
		err      error
		mentions string
	}{
		{"config symlink", ConfigFile, false, ErrOutsideModel, ConfigFile},
		{"index symlink", IndexFile, false, ErrOutsideModel, IndexFile},
		{"shard symlink", filepath.Base(shards[1]), false, ErrOutsideModel, filepath.Base(shards[1])},
		{"shard pipe", filepath.Base(shards[0]), true, ErrNotRegular, filepath.Base(shards[0])},
		{"config pipe", ConfigFile, true, ErrNotRegular, ConfigFile},
	} {
		dir := filepath.Join(t.TempDir(), "m")
		if err := os.CopyFS(dir, os.DirFS(good)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := Load(dir); err != nil {
			t.Fatalf("%s: the copy does not load: %v", tc.name, err)
		}
		path := filepath.Join(dir, tc.replace)
		os.Remove(path)
		if tc.pipe {
			if err := syscall.Mkfifo(path, 0o644); err != nil {
				t.Fatal(err)
			}
		} else if err := os.Symlink(filepath.Join(good, tc.replace), path); err != nil {
			t.Fatal(err)
		}
		withTimeout(t, tc.name, func() {
			_, _, err := Load(dir)
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), filepath.Join(dir, tc.mentions)) {
				t.Errorf("%s: %v, want %v naming %s", tc.name, err, tc.err, tc.mentions)
			}
		})
	}
	// model.safetensors as a named pipe, read directly.
	pipe := filepath.Join(t.TempDir(), WeightsFile)
	syscall.Mkfifo(pipe, 0o644)
	withTimeout(t, "ReadSafetensors", func() {
		if _, err := ReadSafetensors(pipe); !errors.Is(err, ErrNotRegular) {
			t.Errorf("ReadSafetensors(pipe): %v", err)
		}
	})
}
