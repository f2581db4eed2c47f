//go:build unix

package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/prolong-rl/prolong/onnx/onnxpb"
	"github.com/prolong-rl/prolong/tools/internal/tooltest"
)

// TestModelFiles runs the real program on model directories whose files lead out of them
// (symlinks to a copy elsewhere) or are named pipes: each is refused at once, exit status 1,
// the error naming the file (and the tensor, for ONNX external data) and where the link leads,
// and nothing is written. The same models laid out as a Hugging Face cache snapshot (relative
// symlinks into the repository's blobs/) convert. A huge dimension in a model without
// config.json is refused naming the tensor and the dimension.
func TestModelFiles(t *testing.T) {
	bin := tooltest.Build(t, ".", false)
	base := t.TempDir()
	ext := filepath.Join("..", "..", "onnx", "testdata", "qwen3_past_ext")
	hf := filepath.Join(base, "hf")
	mustConvert(t, "-i", fixture("qwen2_past"), "-o", hf)
	elsewhere := filepath.Join(base, "elsewhere")
	os.MkdirAll(elsewhere, 0o755)
	sameFileCopy(t, filepath.Join(ext, "model.onnx.data"), filepath.Join(elsewhere, "model.onnx.data"))
	sameFileCopy(t, filepath.Join(hf, "model.safetensors"), filepath.Join(elsewhere, "model.safetensors"))
	os.WriteFile(filepath.Join(elsewhere, "tokenizer.json"), []byte(`{"secret": true}`), 0o644)
	link := func(target, path string) {
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
	}
	pipe := func(path string) {
		if err := syscall.Mkfifo(path, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// model makes a copy of the ONNX model with external data (onnx) or of hf, with the file
	// name replaced by what replace makes.
	model := func(name string, onnx bool, file string, replace func(path string)) string {
		d := filepath.Join(base, name)
		src := hf
		if onnx {
			src = ext
		}
		if err := os.CopyFS(d, os.DirFS(src)); err != nil {
			t.Fatal(err)
		}
		os.Remove(filepath.Join(d, file))
		replace(filepath.Join(d, file))
		return d
	}
	extArgs := []string{"--max-position-embeddings", "128"}
	for _, tc := range []struct {
		name string
		in   string
		args []string
		says []string
	}{
		{"external data linked out", model("data-out", true, "model.onnx.data", func(p string) { link(filepath.Join(elsewhere, "model.onnx.data"), p) }), extArgs,
			[]string{": external data: ", "model.onnx.data leads to " + filepath.Join(elsewhere, "model.onnx.data") + ", outside the model directory"}},
		{"external data a named pipe", model("data-pipe", true, "model.onnx.data", pipe), extArgs,
			[]string{": external data: ", "model.onnx.data is a named pipe"}},
		{"weights linked out", model("st-out", false, "model.safetensors", func(p string) { link("../elsewhere/model.safetensors", p) }), []string{"--to", "onnx"},
			[]string{"model.safetensors leads to " + filepath.Join(elsewhere, "model.safetensors")}},
		{"weights a named pipe", model("st-pipe", false, "model.safetensors", pipe), []string{"--to", "onnx"},
			[]string{"model.safetensors is a named pipe"}},
		{"tokenizer linked out", model("tok-out", true, "tokenizer.json", func(p string) { link(filepath.Join(elsewhere, "tokenizer.json"), p) }), extArgs,
			[]string{"tokenizer.json leads to " + filepath.Join(elsewhere, "tokenizer.json")}},
		{"tokenizer a named pipe", model("tok-pipe", false, "tokenizer.json", pipe), []string{"--to", "onnx"},
			[]string{"tokenizer.json is a named pipe"}},
		{"huge dimension", hugeDim(t, base), nil,
			[]string{"tensor model.embed_tokens.weight: dims [1099511627776 64]: over 2^34 elements"}},
	} {
		parent := t.TempDir()
		r := tooltest.Run(t, bin, append([]string{"-i", tc.in, "-o", filepath.Join(parent, "out"), "--quiet"}, tc.args...)...)
		if r.Code != 1 {
			t.Errorf("%s: exit %d, want 1:\n%s%s", tc.name, r.Code, r.Stdout, r.Stderr)
		}
		for _, s := range tc.says {
			if !strings.Contains(r.Stderr, s) {
				t.Errorf("%s: stderr does not say %q:\n%s", tc.name, s, r.Stderr)
			}
		}
		if got := tooltest.Names(parent); got != "" {
			t.Errorf("%s: %s holds %q", tc.name, parent, got)
		}
	}

	// Hugging Face cache snapshots: the files are relative symlinks into ../../blobs/.
	for _, tc := range []struct {
		name, src string
		args      []string
	}{{"onnx", ext, extArgs}, {"safetensors", hf, []string{"--to", "onnx"}}} {
		repo := filepath.Join(base, "hub", "models--org--"+tc.name)
		snap := filepath.Join(repo, "snapshots", "0123")
		os.MkdirAll(filepath.Join(repo, "blobs"), 0o755)
		os.MkdirAll(snap, 0o755)
		entries, _ := os.ReadDir(tc.src)
		for _, e := range entries {
			sameFileCopy(t, filepath.Join(tc.src, e.Name()), filepath.Join(repo, "blobs", "b-"+e.Name()))
			link("../../blobs/b-"+e.Name(), filepath.Join(snap, e.Name()))
		}
		r := tooltest.Run(t, bin, append([]string{"-i", snap, "-o", filepath.Join(t.TempDir(), "out"), "--quiet"}, tc.args...)...)
		if r.Code != 0 {
			t.Errorf("Hub snapshot of %s: exit %d:\n%s%s", tc.name, r.Code, r.Stdout, r.Stderr)
		}
	}
}

// hugeDim writes a copy of the qwen2_past fixture (no config.json beside it) whose embedding
// claims 2^40 rows, and returns its directory.
func hugeDim(t *testing.T, base string) string {
	b, err := os.ReadFile(fixture("qwen2_past"))
	if err != nil {
		t.Fatal(err)
	}
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, in := range m.Graph.Initializer {
		if in.GetName() == "model.embed_tokens.weight" {
			in.Dims[0] = 1 << 40
		}
	}
	if b, err = proto.Marshal(&m); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "huge")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "model.onnx"), b, 0o644)
	return dir
}

// TestUnreadableInput: a model directory the user may not read is reported as such, naming
// it, not as "no model here" (the program runs as nobody when the test runs as root).
func TestUnreadableInput(t *testing.T) {
	bin := tooltest.Build(t, ".", false)
	in := filepath.Join(tooltest.OpenDir(t), "model")
	os.MkdirAll(in, 0o755)
	sameFileCopy(t, fixture("qwen2_past"), filepath.Join(in, "model.onnx"))
	tooltest.Unreadable(t, bin, in, func(out string) []string { return []string{"-i", in, "-o", out} })
}
