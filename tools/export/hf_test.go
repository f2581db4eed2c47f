package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/tools/internal/hffixture"
	"github.com/prolong-rl/prolong/tools/internal/tooltest"
)

// withSamplingDefaults adds sampling defaults to the generation_config.json of the model
// directory dir, as a published model has them, and returns the file's fields.
func withSamplingDefaults(t *testing.T, dir string) map[string]any {
	t.Helper()
	path := filepath.Join(dir, checkpoints.GenerationConfigFile)
	var gen map[string]any
	tooltest.ReadJSON(t, path, &gen)
	gen["do_sample"], gen["temperature"], gen["top_p"], gen["top_k"] = true, 0.7, 0.8, 20.0
	b, _ := json.Marshal(gen)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return gen
}

// TestExportHFFixtures drives tools/export on the fixture models (Qwen2 tied and untied, Qwen3
// with head_dim != hidden/heads, Llama 3, yarn) in both config.json forms (transformers 5 and
// 4), to safetensors and ONNX with --verify (ONNX Runtime, when available): the safetensors in
// the engine and the model.onnx in ONNX Runtime give PyTorch's logits within the goldens'
// tolerance and its greedy continuations; generation_config.json keeps the source's sampling
// defaults and token ids, and config.json carries eos_token_id.
func TestExportHFFixtures(t *testing.T) {
	ort := tooltest.HaveORT(t)
	tooltest.EachHFFixture(t, func(t *testing.T, f *hffixture.Fixture, in string) {
		wantGen := withSamplingDefaults(t, in)
		out := filepath.Join(t.TempDir(), "out")
		args := []string{"-i", in, "-o", out, "--format", "safetensors,onnx"}
		if ort {
			args = append(args, "--verify")
		}
		if o := mustExport(t, args...); ort && !strings.Contains(o, "verify: max |logit difference| ONNX Runtime vs engine") {
			t.Errorf("--verify printed nothing:\n%s", o)
		}
		tooltest.EngineMatchesFixture(t, f, out, "exported safetensors")
		if ort {
			tooltest.ORTMatchesFixture(t, f, filepath.Join(out, "model.onnx"), "exported model.onnx")
		}
		var gen, cj map[string]any
		tooltest.ReadJSON(t, filepath.Join(out, checkpoints.GenerationConfigFile), &gen)
		if !reflect.DeepEqual(gen, wantGen) {
			t.Errorf("generation_config.json %v, want the source's %v", gen, wantGen)
		}
		tooltest.ReadJSON(t, filepath.Join(out, checkpoints.ConfigFile), &cj)
		if !reflect.DeepEqual(cj["eos_token_id"], wantGen["eos_token_id"]) {
			t.Errorf("config.json eos_token_id %v, want %v", cj["eos_token_id"], wantGen["eos_token_id"])
		}
	})
}
