package checkpoints

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/prolong-rl/prolong/engine"
)

// architectures maps model_type to the transformers class from_pretrained instantiates.
var architectures = map[string]string{
	"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM",
}

// SaveHF writes a Hugging Face model directory: model.safetensors (weights by HF name, as
// dtype; no lm_head.weight when the embeddings are tied), config.json and
// generation_config.json. Each file is written atomically.
func SaveHF(dir string, cfg *engine.Config, weights map[string]engine.HostTensor, dtype DType) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	for _, name := range engine.WeightNames(cfg) {
		w, ok := weights[name]
		if !ok {
			return fmt.Errorf("save %s: weight %q is missing", dir, name)
		}
		want, _ := engine.WeightShape(cfg, name)
		if fmt.Sprint(w.Shape) != fmt.Sprint(want) {
			return fmt.Errorf("save %s: weight %q has shape %v, config wants %v", dir, name, w.Shape, want)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := WriteSafetensors(filepath.Join(dir, "model.safetensors"), weights, dtype, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	// config.json: the engine's fields plus what transformers needs to pick the class.
	var m map[string]any
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	if a, ok := architectures[cfg.ModelType]; ok && len(cfg.Architectures) == 0 {
		m["architectures"] = []string{a}
	}
	m["hidden_act"] = "silu"
	m["torch_dtype"] = map[DType]string{F32: "float32", BF16: "bfloat16", F16: "float16"}[dtype]
	if err := writeJSON(filepath.Join(dir, "config.json"), m); err != nil {
		return err
	}
	gen := map[string]any{"do_sample": true}
	if cfg.BOSTokenID != nil {
		gen["bos_token_id"] = *cfg.BOSTokenID
	}
	if len(cfg.EOSTokenIDs) > 0 {
		gen["eos_token_id"] = cfg.EOSTokenIDs
	}
	return writeJSON(filepath.Join(dir, "generation_config.json"), gen)
}

// LoadHF reads a Hugging Face model directory written by SaveHF or transformers'
// save_pretrained (single-file model.safetensors): the config and every weight by HF name,
// checked against the config (errors name the tensor).
func LoadHF(dir string) (*engine.Config, map[string]engine.HostTensor, error) {
	cfg, err := engine.LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, nil, err
	}
	path := filepath.Join(dir, "model.safetensors")
	ts, _, err := ReadSafetensors(path)
	if err != nil {
		return nil, nil, err
	}
	w := map[string]engine.HostTensor{}
	for name, t := range ts {
		w[name] = t.HostTensor
	}
	if cfg.TieWordEmbeddings {
		delete(w, "lm_head.weight") // some writers store the tied copy too
	}
	for _, name := range engine.WeightNames(cfg) {
		t, ok := w[name]
		if !ok {
			return nil, nil, fmt.Errorf("%s: weight %q is missing", path, name)
		}
		want, _ := engine.WeightShape(cfg, name)
		if fmt.Sprint(t.Shape) != fmt.Sprint(want) {
			return nil, nil, fmt.Errorf("%s: weight %q has shape %v, config wants %v", path, name, t.Shape, want)
		}
	}
	return cfg, w, nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(path, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
}
