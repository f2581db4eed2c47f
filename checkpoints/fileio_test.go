package checkpoints

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// listDir returns the names in dir.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestWriteFileAtomic: the file gets the bytes written and the mode asked for; a writer that
// fails (before writing, or after more than the buffer holds, so that bytes reached the
// temporary file), or a file that refuses bytes midway, leaves an existing file exactly as it was and no temporary file, and the
// error names the file and wraps the writer's.
func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f.bin")
	write := func(b []byte) func(io.Writer) error {
		return func(w io.Writer) error { _, err := w.Write(b); return err }
	}
	if err := WriteFileAtomic(path, 0o640, write([]byte("first"))); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "first" {
		t.Fatalf("content %q", b)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v, want 0640", st.Mode().Perm())
	}
	big := bytes.Repeat([]byte("x"), 3<<20)
	for _, fail := range []func(io.Writer) error{
		func(io.Writer) error { return errInjected },
		func(w io.Writer) error {
			if _, err := w.Write(big); err != nil {
				return err
			}
			return errInjected
		},
		nil, // the file itself refuses bytes after 2 MiB
	} {
		if fail == nil {
			testHookWriter = func(_ string, w io.Writer) io.Writer { return &failingWriter{w: w, n: 2 << 20} }
			fail = write(big)
		}
		err := WriteFileAtomic(path, 0o644, fail)
		testHookWriter = nil
		if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), path) {
			t.Fatalf("error %v, want the injected one naming %s", err, path)
		}
		if b, _ := os.ReadFile(path); string(b) != "first" {
			t.Fatalf("a failed write changed the file to %d bytes", len(b))
		}
		if names := listDir(t, dir); len(names) != 1 {
			t.Fatalf("a failed write left %v", names)
		}
	}
	if err := WriteFileAtomic(path, 0o644, write(big)); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, big) {
		t.Fatalf("replacing write: %d bytes, want %d", len(b), len(big))
	}
	missing := filepath.Join(dir, "no", "f")
	if err := WriteFileAtomic(missing, 0o644, write(nil)); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing directory: %v", err)
	}
}

// TestReplaceDir: a new directory appears whole; an existing one is replaced whole (none of
// its files survive); a build that fails leaves an existing directory as it was, creates
// nothing where there was none, and leaves no temporary directory; the temporary directory
// is named by the prefix, beside dir, and starts empty.
func TestReplaceDir(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "p") // ReplaceDir makes the parent
	dir := filepath.Join(parent, "out")
	build := func(files map[string]string) func(string) error {
		return func(tmp string) error {
			if filepath.Dir(tmp) != parent || !strings.HasPrefix(filepath.Base(tmp), ".out.tmp-") {
				t.Errorf("temporary directory %s is not .out.tmp-* beside %s", tmp, dir)
			}
			if names := listDir(t, tmp); len(names) != 0 {
				t.Errorf("temporary directory starts with %v", names)
			}
			for name, body := range files {
				if err := os.WriteFile(filepath.Join(tmp, name), []byte(body), 0o644); err != nil {
					return err
				}
			}
			return nil
		}
	}
	failing := func(tmp string) error {
		os.WriteFile(filepath.Join(tmp, "partial"), []byte("x"), 0o644)
		return errInjected
	}
	if err := ReplaceDir(dir, ".out.tmp-", failing); !errors.Is(err, errInjected) {
		t.Fatalf("failing build: %v", err)
	}
	if names := listDir(t, parent); len(names) != 0 {
		t.Fatalf("a failed build of a new directory left %v", names)
	}
	if err := ReplaceDir(dir, ".out.tmp-", build(map[string]string{"a": "1", "b": "2"})); err != nil {
		t.Fatal(err)
	}
	before := dirSnapshot(t, dir)
	if len(before) != 2 {
		t.Fatalf("new directory holds %v", before)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o755 {
		t.Fatalf("directory mode %v, want 0755", st.Mode().Perm())
	}
	if err := ReplaceDir(dir, ".out.tmp-", failing); !errors.Is(err, errInjected) {
		t.Fatalf("failing build: %v", err)
	}
	if after := dirSnapshot(t, dir); len(after) != 2 || after["a"] != before["a"] || after["b"] != before["b"] {
		t.Fatalf("a failed build changed the directory: %v", after)
	}
	if names := listDir(t, parent); len(names) != 1 {
		t.Fatalf("a failed build left %v", names)
	}
	if err := ReplaceDir(dir, ".out.tmp-", build(map[string]string{"c": "3"})); err != nil {
		t.Fatal(err)
	}
	if names := listDir(t, dir); len(names) != 1 || names[0] != "c" {
		t.Fatalf("replaced directory holds %v, want just c", names)
	}
	if names := listDir(t, parent); len(names) != 1 {
		t.Fatalf("the replacement left %v", names)
	}
}

// TestWriteConfigMatchesSave: WriteConfig writes config.json and generation_config.json byte
// for byte as Save does, for each dtype; a model_type without a transformers class is refused
// unless the config names its architectures.
func TestWriteConfigMatchesSave(t *testing.T) {
	tiny := func(modelType string) *engine.Config {
		return &engine.Config{ModelType: modelType, VocabSize: 24, HiddenSize: 16, NumHiddenLayers: 1, NumAttentionHeads: 2,
			NumKeyValueHeads: 1, HeadDim: 8, IntermediateSize: 32, RMSNormEps: 1e-6, RopeTheta: 10000,
			MaxPositionEmbeddings: 64, AttentionBias: modelType == "qwen2", QKNorm: modelType == "qwen3"}
	}
	one, two := 1, 2
	llama := tiny("llama")
	llama.RopeScaling = &engine.RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 32}
	llama.BOSTokenID, llama.EOSTokenIDs = &one, []int{2, 3}
	qwen3 := tiny("qwen3")
	qwen3.EOSTokenIDs, qwen3.TieWordEmbeddings = []int{two}, true
	qwen2 := tiny("qwen2")
	qwen2.Architectures = []string{"Qwen2Model"}
	for i, cfg := range []*engine.Config{tiny("qwen2"), qwen2, llama, qwen3} {
		dt := []DType{F32, BF16, F16, F32}[i]
		a, b := t.TempDir(), filepath.Join(t.TempDir(), "hf")
		if err := WriteConfig(a, cfg, dt); err != nil {
			t.Fatal(err)
		}
		if err := Save(b, cfg, engine.RandomWeights(cfg, 1, 0.1), SaveOptions{DType: dt}); err != nil {
			t.Fatal(err)
		}
		if names := listDir(t, a); len(names) != 2 {
			t.Fatalf("WriteConfig wrote %v", names)
		}
		for _, f := range []string{ConfigFile, GenerationConfigFile} {
			x, err := os.ReadFile(filepath.Join(a, f))
			if err != nil {
				t.Fatal(err)
			}
			y, err := os.ReadFile(filepath.Join(b, f))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(x, y) {
				t.Errorf("%s %s %s differs from Save's:\n%s\nwant\n%s", cfg.ModelType, dt, f, x, y)
			}
		}
	}
	if err := WriteConfig(t.TempDir(), tiny("gpt2"), ""); err == nil || !strings.Contains(err.Error(), `"gpt2"`) || !strings.Contains(err.Error(), ConfigFile) {
		t.Errorf("model_type gpt2: %v", err)
	}
	gpt2 := tiny("gpt2")
	gpt2.Architectures = []string{"GPT2LMHeadModel"}
	if err := WriteConfig(t.TempDir(), gpt2, ""); err != nil {
		t.Errorf("model_type gpt2 with architectures: %v", err)
	}
	if err := WriteConfig(t.TempDir(), tiny("qwen2"), "F64"); err == nil || !strings.Contains(err.Error(), "F64") {
		t.Errorf("dtype F64: %v", err)
	}
}

// TestWriteFileAtomicSpecial: a character device (/dev/null) or a named pipe is written
// straight through and stays what it was (renaming over /dev/null would, as root, make it a
// regular file); a directory is refused with an error naming it.
func TestWriteFileAtomicSpecial(t *testing.T) {
	body := func(w io.Writer) error { _, err := w.Write([]byte("hello")); return err }
	if err := WriteFileAtomic(os.DevNull, 0o644, body); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(os.DevNull); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("%s after WriteFileAtomic: %v, %v", os.DevNull, fi.Mode(), err)
	}
	if names, _ := filepath.Glob("/dev/.null.tmp-*"); len(names) > 0 {
		t.Errorf("temporary files left in /dev: %v", names)
	}

	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscallMkfifo(fifo); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		b, _ := os.ReadFile(fifo)
		got <- string(b)
	}()
	if err := WriteFileAtomic(fifo, 0o644, body); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "hello" {
		t.Errorf("the pipe's reader got %q", s)
	}
	if fi, err := os.Lstat(fifo); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("the pipe after WriteFileAtomic: %v, %v", fi.Mode(), err)
	}

	err := WriteFileAtomic(dir, 0o644, body)
	if err == nil || !strings.Contains(err.Error(), dir+": it is a directory") {
		t.Errorf("WriteFileAtomic onto a directory: %v", err)
	}
}
