package onnx

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx/onnxpb"
)

// importWithin imports path, failing the test when Import blocks (on a named pipe) for 10s.
func importWithin(t *testing.T, path string, opts ImportOptions) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { _, _, err := Import(path, opts); done <- err }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("import %s still blocked after 10s", path)
		return nil
	}
}

// TestImportModelFiles: the external data and config.json of an ONNX model are read only
// from regular files inside its directory (or, in a Hugging Face cache snapshot, inside its
// repository folder): a symlink out of it is refused naming the tensor and where the link
// leads, a named pipe as the model, its data or its config is refused at once.
func TestImportModelFiles(t *testing.T) {
	src := filepath.Join("testdata", "qwen3_past_ext")
	model, err := os.ReadFile(filepath.Join(src, "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(src, "model.onnx.data"))
	if err != nil {
		t.Fatal(err)
	}
	opts := ImportOptions{Hints: &engine.Config{MaxPositionEmbeddings: 128}}
	base := t.TempDir()
	write := func(path string, b []byte) {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, path string) {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
	}
	outside := filepath.Join(base, "elsewhere", "weights.bin")
	write(outside, data)
	write(filepath.Join(base, "elsewhere", "config.json"), []byte(`{"model_type": "qwen3"}`))
	// The layout of the Hugging Face cache imports.
	repo := filepath.Join(base, "hub", "models--org--tiny")
	write(filepath.Join(repo, "blobs", "m"), model)
	write(filepath.Join(repo, "blobs", "d"), data)
	snap := filepath.Join(repo, "snapshots", "abc")
	link("../../blobs/m", filepath.Join(snap, "model.onnx"))
	link("../../blobs/d", filepath.Join(snap, "model.onnx.data"))
	if err := importWithin(t, filepath.Join(snap, "model.onnx"), opts); err != nil {
		t.Errorf("Hub snapshot: %v", err)
	}

	for _, tc := range []struct {
		name  string
		setup func(dir string)
		err   error
		says  []string
	}{
		{"data linked out", func(dir string) { link(outside, filepath.Join(dir, "model.onnx.data")) },
			checkpoints.ErrOutsideModel, []string{"tensor model.embed_tokens.weight: external data", "leads to " + outside}},
		{"data linked out relatively", func(dir string) { link("../elsewhere/weights.bin", filepath.Join(dir, "model.onnx.data")) },
			checkpoints.ErrOutsideModel, []string{"leads to " + outside}},
		{"data a pipe", func(dir string) { syscall.Mkfifo(filepath.Join(dir, "model.onnx.data"), 0o644) },
			checkpoints.ErrNotRegular, []string{"tensor model.embed_tokens.weight", "model.onnx.data is a named pipe"}},
		{"config linked out", func(dir string) {
			write(filepath.Join(dir, "model.onnx.data"), data)
			link("../elsewhere/config.json", filepath.Join(dir, "config.json"))
		}, checkpoints.ErrOutsideModel, []string{"config.json leads to " + filepath.Join(base, "elsewhere", "config.json")}},
		{"config a pipe", func(dir string) {
			write(filepath.Join(dir, "model.onnx.data"), data)
			syscall.Mkfifo(filepath.Join(dir, "config.json"), 0o644)
		}, checkpoints.ErrNotRegular, []string{"config.json is a named pipe"}},
		{"model a pipe", func(dir string) {
			os.Remove(filepath.Join(dir, "model.onnx"))
			syscall.Mkfifo(filepath.Join(dir, "model.onnx"), 0o644)
		}, checkpoints.ErrNotRegular, []string{"model.onnx is a named pipe"}},
		{"snapshot data linked into another repository", func(dir string) {
			other := filepath.Join(base, "hub", "models--org--other", "blobs", "d")
			write(other, data)
			s := filepath.Join(repo, "snapshots", "evil")
			link("../../blobs/m", filepath.Join(s, "model.onnx"))
			link("../../../models--org--other/blobs/d", filepath.Join(s, "model.onnx.data"))
			link(s, filepath.Join(dir, "snapshot")) // where the test looks for the model below
		}, checkpoints.ErrOutsideModel, []string{"leads to " + filepath.Join(base, "hub", "models--org--other", "blobs", "d"), "outside the model directory " + repo}},
	} {
		dir := filepath.Join(base, strings.ReplaceAll(tc.name, " ", "-"))
		write(filepath.Join(dir, "model.onnx"), model)
		tc.setup(dir)
		path := filepath.Join(dir, "model.onnx")
		if _, err := os.Lstat(filepath.Join(dir, "snapshot")); err == nil {
			path = filepath.Join(dir, "snapshot", "model.onnx")
		}
		err := importWithin(t, path, opts)
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.err)
			continue
		}
		for _, s := range tc.says {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: %v does not say %q", tc.name, err, s)
			}
		}
	}
}

// TestInferBadDims: a graph without config.json whose weights' dims cannot be a model's is
// refused naming the weight, its tensor and the dimension at fault, not with a config field
// the graph could not fill.
func TestInferBadDims(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "qwen2_past", "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		dims []int64
		says []string
	}{
		{"huge first dim", []int64{1 << 40, 64}, []string{"tensor model.embed_tokens.weight: dims [1099511627776 64]: over 2^34 elements"}},
		{"huge second dim", []int64{256, 1 << 40}, []string{"tensor model.embed_tokens.weight: dims [256 1099511627776]: over 2^34 elements"}},
		{"large but countable", []int64{1 << 27, 64}, []string{"tensor model.embed_tokens.weight: raw_data has 65536 bytes"}},
	} {
		c := proto.Clone(&m).(*onnxpb.ModelProto)
		found := false
		for _, in := range c.Graph.Initializer {
			if in.GetName() == engine.EmbedWeight {
				in.Dims, found = tc.dims, true
			}
		}
		if !found {
			t.Fatal("no embedding initializer in the fixture")
		}
		out, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".onnx")
		os.WriteFile(path, out, 0o644)
		_, _, err = Import(path, ImportOptions{})
		if err == nil {
			t.Errorf("%s: imported", tc.name)
			continue
		}
		for _, s := range tc.says {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: %v does not say %q", tc.name, err, s)
			}
		}
	}
}
