package main

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/tools/internal/hffixture"
	"github.com/prolong-rl/prolong/tools/internal/tooltest"
)

// TestConvertHFFixtures drives tools/convert on the fixture models (Qwen2 tied and untied,
// Qwen3 with head_dim != hidden/heads, Llama 3, yarn) in both config.json forms: to ONNX with
// --verify, whose model.onnx gives in ONNX Runtime PyTorch's logits within the goldens'
// tolerance and its greedy continuations, and back to safetensors with --verify, which give
// them in the engine, with the source's config (special ids included) and generation_config.
// Without ONNX Runtime it is skipped (it fails under PROLONG_REQUIRE_ORT=1).
func TestConvertHFFixtures(t *testing.T) {
	tooltest.NeedORT(t)
	tooltest.EachHFFixture(t, func(t *testing.T, f *hffixture.Fixture, in string) {
		onnxDir, hfDir := filepath.Join(t.TempDir(), "onnx"), filepath.Join(t.TempDir(), "hf")
		for _, args := range [][]string{{"-i", in, "-o", onnxDir, "--to", "onnx", "--verify"}, {"-i", filepath.Join(onnxDir, "model.onnx"), "-o", hfDir, "--verify"}} {
			if o := mustConvert(t, args...); !strings.Contains(o, "verify: max |logit difference| ONNX Runtime vs engine") {
				t.Errorf("%v: --verify printed nothing:\n%s", args, o)
			}
		}
		tooltest.ORTMatchesFixture(t, f, filepath.Join(onnxDir, "model.onnx"), "converted model.onnx")
		cfg := tooltest.EngineMatchesFixture(t, f, hfDir, "safetensors converted back")
		src, _, err := checkpoints.Load(in)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(src.EOSTokenIDs, cfg.EOSTokenIDs) || !reflect.DeepEqual(src.BOSTokenID, cfg.BOSTokenID) {
			t.Errorf("special ids after ONNX and back: eos %v bos %v, source eos %v bos %v", cfg.EOSTokenIDs, cfg.BOSTokenID, src.EOSTokenIDs, src.BOSTokenID)
		}
		var gen, want map[string]any
		tooltest.ReadJSON(t, filepath.Join(hfDir, checkpoints.GenerationConfigFile), &gen)
		tooltest.ReadJSON(t, filepath.Join(in, checkpoints.GenerationConfigFile), &want)
		if !reflect.DeepEqual(gen, want) {
			t.Errorf("generation_config.json %v, want the source's %v", gen, want)
		}
	})
}
