package modeldir

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
)

// TestAdapterRoundTrip writes an adapter in PEFT's layout (keys base_model.model.<module>.
// lora_A.weight, adapter_config.json's fields) and reads it back; then each broken variant of
// the directory fails with an error naming its file and field or tensor.
func TestAdapterRoundTrip(t *testing.T) {
	c := engine.Bench122M()
	c.NumHiddenLayers, c.VocabSize = 2, 64
	lc := engine.LoRAConfig{Rank: 2, Alpha: 4, RSLoRA: true, Targets: []string{"v_proj", "q_proj"}, Seed: 5}
	w, err := engine.InitLoRA(c, lc)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), AdapterDir)
	if err := WriteAdapter(dir, c, lc, w, "Qwen/Qwen2.5-0.5B"); err != nil {
		t.Fatal(err)
	}
	f, err := checkpoints.ReadSafetensors(filepath.Join(dir, AdapterWeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	k := "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
	if got := f.Tensors[k].Shape; len(f.Tensors) != 8 || len(got) != 2 || got[0] != c.KVDim() || got[1] != 2 {
		t.Fatalf("%d tensors; %s has shape %v", len(f.Tensors), k, got)
	}
	var raw map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, AdapterConfigFile))
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	for field, want := range map[string]any{"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2.0, "lora_alpha": 4.0, "bias": "none",
		"use_rslora": true, "lora_dropout": 0.0, "base_model_name_or_path": "Qwen/Qwen2.5-0.5B"} {
		if raw[field] != want {
			t.Errorf("adapter_config.json %s = %v, want %v", field, raw[field], want)
		}
	}
	if tm, _ := json.Marshal(raw["target_modules"]); string(tm) != `["q_proj","v_proj"]` {
		t.Errorf("target_modules %s", tm)
	}
	got, gw, _, err := ReadAdapter(dir, c)
	if err != nil {
		t.Fatal(err)
	}
	if got.Rank != 2 || got.Alpha != 4 || !got.RSLoRA || strings.Join(got.Targets, ",") != "q_proj,v_proj" {
		t.Errorf("read back %+v", got)
	}
	n := "model.layers.0.self_attn.q_proj.lora_A.weight"
	if len(gw) != 8 || gw[n].Data[3] != w[n].Data[3] {
		t.Errorf("read back %d tensors", len(gw))
	}

	edit := func(field string, v any) string {
		d := t.TempDir()
		var m map[string]any
		json.Unmarshal(b, &m)
		m[field] = v
		nb, _ := json.Marshal(m)
		os.WriteFile(filepath.Join(d, AdapterConfigFile), nb, 0o644)
		data, _ := os.ReadFile(filepath.Join(dir, AdapterWeightsFile))
		os.WriteFile(filepath.Join(d, AdapterWeightsFile), data, 0o644)
		return d
	}
	tensors := func(mod func(map[string]engine.HostTensor)) string {
		d := t.TempDir()
		os.WriteFile(filepath.Join(d, AdapterConfigFile), b, 0o644)
		m := map[string]engine.HostTensor{}
		for k, v := range f.Tensors {
			m[k] = v
		}
		mod(m)
		checkpoints.WriteSafetensors(filepath.Join(d, AdapterWeightsFile), m, checkpoints.F32, nil)
		return d
	}
	for _, tc := range []struct {
		dir, want string
	}{
		{edit("peft_type", "IA3"), `adapter_config.json: field "peft_type": "IA3" is not LORA`},
		{edit("r", 3), `adapter_model.safetensors: adapter tensor "model.layers.0.self_attn.q_proj.lora_A.weight" has shape [2 768], want [3 768] (rank 3)`},
		{edit("bias", "all"), `field "bias": "all": only "none"`},
		{edit("use_dora", true), `field "use_dora"`},
		{edit("target_modules", []string{"q_proj", "lm_head"}), `field "target_modules": "lm_head" is not a linear layer`},
		{edit("target_modules", []string{"q_proj", "k_proj", "v_proj"}), `adapter tensor "model.layers.0.self_attn.k_proj.lora_A.weight" is missing`},
		{tensors(func(m map[string]engine.HostTensor) { delete(m, k) }), `adapter_model.safetensors: adapter tensor "model.layers.1.self_attn.v_proj.lora_B.weight" is missing`},
		{tensors(func(m map[string]engine.HostTensor) { m["model.x"] = m[k] }), `adapter_model.safetensors: tensor "model.x": not a PEFT key`},
		{tensors(func(m map[string]engine.HostTensor) {
			m[k] = engine.HostTensor{Shape: []int{c.KVDim(), 3}, Data: make([]float32, c.KVDim()*3)}
		}), `"model.layers.1.self_attn.v_proj.lora_B.weight" has shape [128 3], want [128 2]`},
	} {
		_, _, _, err := ReadAdapter(tc.dir, c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want %q", err, tc.want)
		}
	}
}
