package main

import (
	"context"
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

// TestConvertHFFixtures drives tools/convert on the fixture models (Qwen2 tied and untied,
// Qwen3 with head_dim != hidden/heads, Llama 3, yarn) in both config.json forms: to ONNX with
// --verify, whose model.onnx gives in ONNX Runtime PyTorch's logits within the goldens'
// tolerance and its greedy continuations, and back to safetensors with --verify, which give
// them in the engine, with the source's config (special ids included) and generation_config.
// Without ONNX Runtime it is skipped (it fails under PROLONG_REQUIRE_ORT=1).
func TestConvertHFFixtures(t *testing.T) {
	needORT(t)
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
				onnxDir, hfDir := filepath.Join(t.TempDir(), "onnx"), filepath.Join(t.TempDir(), "hf")
				for _, args := range [][]string{{"-i", in, "-o", onnxDir, "--to", "onnx", "--verify"}, {"-i", filepath.Join(onnxDir, "model.onnx"), "-o", hfDir, "--verify"}} {
					if o := mustConvert(t, args...); !strings.Contains(o, "verify: max |logit difference| ONNX Runtime vs engine") {
						t.Errorf("%v: --verify printed nothing:\n%s", args, o)
					}
				}
				d, err := f.Check(f.VocabSize(), hffixture.LogitsTolerance, func(seq []int32) ([]float32, error) {
					lg, _, err := modelio.ORTLogits(filepath.Join(onnxDir, "model.onnx"), seq)
					return lg, err
				})
				if err != nil {
					t.Errorf("converted model.onnx in ONNX Runtime: %v", err)
				}
				t.Logf("model.onnx in ONNX Runtime vs PyTorch: max |logit difference| %.3g", d)
				cfg, w, err := checkpoints.Load(hfDir)
				if err != nil {
					t.Fatal(err)
				}
				m, err := engine.NewModel(cfg, cpu.New(), w, engine.F32)
				if err != nil {
					t.Fatal(err)
				}
				d, err = f.Check(cfg.VocabSize, hffixture.LogitsTolerance, func(seq []int32) ([]float32, error) {
					lg, err := m.Logits(context.Background(), [][]int32{seq})
					if err != nil {
						return nil, err
					}
					return lg[0], nil
				})
				if err != nil {
					t.Errorf("safetensors converted back, in the engine: %v", err)
				}
				t.Logf("safetensors converted back, in the engine, vs PyTorch: max |logit difference| %.3g", d)
				src, _, err := checkpoints.Load(in)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(src.EOSTokenIDs, cfg.EOSTokenIDs) || !reflect.DeepEqual(src.BOSTokenID, cfg.BOSTokenID) {
					t.Errorf("special ids after ONNX and back: eos %v bos %v, source eos %v bos %v", cfg.EOSTokenIDs, cfg.BOSTokenID, src.EOSTokenIDs, src.BOSTokenID)
				}
				var gen, want map[string]any
				readJSON(t, filepath.Join(hfDir, checkpoints.GenerationConfigFile), &gen)
				readJSON(t, filepath.Join(in, checkpoints.GenerationConfigFile), &want)
				if !reflect.DeepEqual(gen, want) {
					t.Errorf("generation_config.json %v, want the source's %v", gen, want)
				}
			})
		}
	}
}
