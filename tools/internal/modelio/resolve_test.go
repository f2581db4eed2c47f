package modelio

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/checkpoints/hub"
	"github.com/prolong-rl/prolong/checkpoints/hub/hubtest"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx"
	"github.com/prolong-rl/prolong/tools/internal/hffixture"
)

// serveFixture puts fixture model name (transformers 5 config) on the fake Hub as org/name.
func serveFixture(t *testing.T, h *hubtest.Server, name string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := hffixture.WriteDir(dir, name, "tf5"); err != nil {
		t.Fatal(err)
	}
	r, err := hubtest.RepoFromDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	h.Add("org/"+name, r)
}

// TestLoadModelID loads a model by its Hub id: downloaded into the cache, then from the cache
// offline; a local directory of the same name wins over the id.
func TestLoadModelID(t *testing.T) {
	h := hubtest.New(t)
	serveFixture(t, h, "qwen2-tied")
	cache := t.TempDir()
	o := &hub.Options{CacheDir: cache, Endpoint: h.URL}
	f, err := hffixture.Load("qwen2-tied")
	if err != nil {
		t.Fatal(err)
	}
	for _, offline := range []bool{false, true} {
		o.Offline = offline
		m, err := Load("org/qwen2-tied", Options{Step: checkpoints.Latest, Hub: o})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(m.FilesDir, filepath.Join(cache, "models--org--qwen2-tied", "snapshots")) {
			t.Errorf("loaded from %s", m.FilesDir)
		}
		got, err := EngineLogits(m.Config, m.Weights, f.Seqs[1])
		if err != nil {
			t.Fatal(err)
		}
		if d := hffixture.MaxAbsDiff(got, f.Logits[1]); d > hffixture.LogitsTolerance {
			t.Errorf("offline %v: max |logit diff| %.3g", offline, d)
		}
	}
	if n := len(h.Requests("GET /storage/")); n != 1 {
		t.Errorf("%d weight downloads, want 1", n)
	}
	_, err = Load("org/not-there", Options{Step: checkpoints.Latest, Hub: o})
	if err == nil || !strings.Contains(err.Error(), "model id org/not-there") || !strings.Contains(err.Error(), "not in the cache") {
		t.Errorf("uncached id offline: %v", err)
	}
	// A local path that exists is never taken for an id.
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	tmp := t.TempDir()
	os.Chdir(tmp)
	if err := hffixture.WriteDir(filepath.Join(tmp, "org", "local"), "qwen2", "tf4"); err != nil {
		t.Fatal(err)
	}
	if p, err := Resolve(context.Background(), "org/local", o); err != nil || p != "org/local" || IsModelID("org/local") {
		t.Errorf("local dir resolved to %q, %v", p, err)
	}
}

// TestLoadFlag: a directory holding model.onnx and no config.json loads (tools/train said
// "lstat DIR/config.json: no such file or directory" of it, issue 30); a directory without a
// model, or with config.json alone, gets the one message both programs give, naming the flag
// and what a model directory holds; a missing path names the flag once.
func TestLoadFlag(t *testing.T) {
	ctx := context.Background()
	onnxDir := t.TempDir()
	c := tiny("qwen2")
	if err := onnx.Export(filepath.Join(onnxDir, "model.onnx"), c, engine.RandomWeights(c, 1, 0.02), onnx.ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	m, err := LoadFlag(ctx, onnxDir, Options{Step: checkpoints.Latest})
	if err != nil || m.Kind != "onnx" || m.Config.HiddenSize != 16 {
		t.Fatalf("model.onnx without config.json: %v", err)
	}
	empty, configOnly := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(configOnly, "config.json"), []byte(`{"model_type": "qwen2"}`), 0o644)
	missing := filepath.Join(empty, "none")
	for _, tc := range []struct{ path, want string }{
		{empty, "--model " + empty + ": no model here (want model.onnx, config.json with model.safetensors, or a training run's state/)"},
		{configOnly, "--model " + configOnly + ": no model here (want model.onnx, config.json with model.safetensors, or a training run's state/)"},
		{missing, "--model " + missing + ": stat " + missing + ": no such file or directory"},
	} {
		if _, err := LoadFlag(ctx, tc.path, Options{Step: checkpoints.Latest}); err == nil || err.Error() != tc.want {
			t.Errorf("%s:\n got %v\nwant %s", tc.path, err, tc.want)
		}
	}
}
