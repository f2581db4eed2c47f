package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/tools/internal/hffixture"
	"github.com/prolong-rl/prolong/tools/internal/modelio"
)

// readJSONFile decodes the JSON file at path into v.
func readJSONFile(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// withSamplingDefaults adds sampling defaults to the generation_config.json of the model
// directory dir, as a published model has them, and returns the file's fields.
func withSamplingDefaults(t *testing.T, dir string) map[string]any {
	t.Helper()
	path := filepath.Join(dir, checkpoints.GenerationConfigFile)
	var gen map[string]any
	readJSONFile(t, path, &gen)
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
	ort := haveORT(t)
	for _, name := range hffixture.Names {
		for _, form := range hffixture.Forms {
			t.Run(name+"/"+form, func(t *testing.T) {
				f, err := hffixture.Load(name)
				if err != nil {
					t.Fatal(err)
				}
				in := filepath.Join(t.TempDir(), name)
				if err := hffixture.WriteDir(in, name, form); err != nil {
					t.Fatal(err)
				}
				wantGen := withSamplingDefaults(t, in)
				out := filepath.Join(t.TempDir(), "out")
				args := []string{"-i", in, "-o", out, "--format", "safetensors,onnx"}
				if ort {
					args = append(args, "--verify")
				}
				if o := mustExport(t, args...); ort && !strings.Contains(o, "verify: max |logit difference| ONNX Runtime vs engine") {
					t.Errorf("--verify printed nothing:\n%s", o)
				}
				cfg, w, err := checkpoints.Load(out)
				if err != nil {
					t.Fatal(err)
				}
				m, err := engine.NewModel(cfg, cpu.New(), w, engine.F32)
				if err != nil {
					t.Fatal(err)
				}
				d, err := f.Check(cfg.VocabSize, hffixture.LogitsTolerance, func(seq []int32) ([]float32, error) {
					lg, err := m.Logits(context.Background(), [][]int32{seq})
					if err != nil {
						return nil, err
					}
					return lg[0], nil
				})
				if err != nil {
					t.Errorf("exported safetensors in the engine: %v", err)
				}
				t.Logf("safetensors in the engine vs PyTorch: max |logit difference| %.3g", d)
				if ort {
					d, err := f.Check(cfg.VocabSize, hffixture.LogitsTolerance, func(seq []int32) ([]float32, error) {
						lg, _, err := modelio.ORTLogits(filepath.Join(out, "model.onnx"), seq)
						return lg, err
					})
					if err != nil {
						t.Errorf("exported model.onnx in ONNX Runtime: %v", err)
					}
					t.Logf("model.onnx in ONNX Runtime vs PyTorch: max |logit difference| %.3g", d)
				}
				var gen, cj map[string]any
				readJSONFile(t, filepath.Join(out, checkpoints.GenerationConfigFile), &gen)
				if !reflect.DeepEqual(gen, wantGen) {
					t.Errorf("generation_config.json %v, want the source's %v", gen, wantGen)
				}
				readJSONFile(t, filepath.Join(out, checkpoints.ConfigFile), &cj)
				if !reflect.DeepEqual(cj["eos_token_id"], wantGen["eos_token_id"]) {
					t.Errorf("config.json eos_token_id %v, want %v", cj["eos_token_id"], wantGen["eos_token_id"])
				}
			})
		}
	}
}
