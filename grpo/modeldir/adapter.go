package modeldir

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
)

// A PEFT LoRA adapter directory, as peft's save_pretrained writes it and PeftModel.from_pretrained
// (and vLLM's --lora-modules) read it:
//
//	adapter/
//	  adapter_config.json         peft_type "LORA", task_type "CAUSAL_LM", r, lora_alpha,
//	                              target_modules, lora_dropout, bias "none", use_rslora,
//	                              base_model_name_or_path
//	  adapter_model.safetensors   base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight
//	                              [r, in], ....lora_B.weight [out, r], F32
const (
	// AdapterDir is the adapter's folder in an export directory.
	AdapterDir = "adapter"
	// AdapterConfigFile and AdapterWeightsFile are PEFT's file names.
	AdapterConfigFile  = "adapter_config.json"
	AdapterWeightsFile = "adapter_model.safetensors"
)

// AdapterMetadataKey is the safetensors __metadata__ entry in which an adapter sent as one
// safetensors body (a LoRA run's weight push to its rollout servers) carries its
// adapter_config.json; the tensors have PEFT's keys.
const AdapterMetadataKey = "lora_config"

// RunStateLoRAKey is the run-state extra entry (checkpoints.RunState.Extra) in which a LoRA
// run saves its adapters' AdapterConfig, beside the adapters (RunState.Adapters).
const RunStateLoRAKey = "lora"

// AdapterConfig is adapter_config.json: the fields PEFT's LoraConfig writes that say what the
// adapter is.
type AdapterConfig struct {
	PEFTType          string          `json:"peft_type"`
	TaskType          string          `json:"task_type"`
	R                 int             `json:"r"`
	LoRAAlpha         float64         `json:"lora_alpha"`
	LoRADropout       float64         `json:"lora_dropout"`
	TargetModules     json.RawMessage `json:"target_modules"` // a list of names, or a string ("all-linear")
	Bias              string          `json:"bias"`
	UseRSLoRA         bool            `json:"use_rslora"`
	UseDoRA           bool            `json:"use_dora"`
	FanInFanOut       bool            `json:"fan_in_fan_out"`
	InitLoRAWeights   bool            `json:"init_lora_weights"`
	InferenceMode     bool            `json:"inference_mode"`
	BaseModel         string          `json:"base_model_name_or_path"`
	ModulesToSave     []string        `json:"modules_to_save"`
	RankPattern       map[string]any  `json:"rank_pattern"`
	AlphaPattern      map[string]any  `json:"alpha_pattern"`
	LayersToTransform any             `json:"layers_to_transform"`
}

// NewAdapterConfig is the adapter_config.json of adapters under lc over the model base.
func NewAdapterConfig(lc engine.LoRAConfig, base string) *AdapterConfig {
	mods, _ := lc.TargetModules()
	tm, _ := json.Marshal(mods)
	return &AdapterConfig{PEFTType: "LORA", TaskType: "CAUSAL_LM", R: lc.Rank, LoRAAlpha: lc.Alpha, LoRADropout: lc.Dropout,
		TargetModules: tm, Bias: "none", UseRSLoRA: lc.RSLoRA, InitLoRAWeights: true, InferenceMode: true, BaseModel: base,
		RankPattern: map[string]any{}, AlphaPattern: map[string]any{}}
}

// WriteAdapter writes the PEFT adapter directory dir (created or replaced whole) for the
// adapters w (engine.LoRASpecs names) of a model of config c under lc, naming base as
// base_model_name_or_path.
func WriteAdapter(dir string, c *engine.Config, lc engine.LoRAConfig, w map[string]engine.HostTensor, base string) error {
	if err := engine.CheckLoRA(c, lc, w); err != nil {
		return fmt.Errorf("write adapter %s: %w", dir, err)
	}
	cj, err := json.MarshalIndent(NewAdapterConfig(lc, base), "", "  ")
	if err != nil {
		return err
	}
	keyed := make(map[string]engine.HostTensor, len(w))
	for n, t := range w {
		keyed[engine.LoRAPrefix+n] = t
	}
	return checkpoints.ReplaceDir(dir, "."+filepath.Base(dir)+".tmp-", func(tmp string) error {
		if err := checkpoints.WriteFileAtomic(filepath.Join(tmp, AdapterConfigFile), 0o644, func(wr io.Writer) error {
			_, err := wr.Write(append(cj, '\n'))
			return err
		}); err != nil {
			return err
		}
		return checkpoints.WriteSafetensors(filepath.Join(tmp, AdapterWeightsFile), keyed, checkpoints.F32, map[string]string{"format": "pt"})
	})
}

// ReadAdapter reads a PEFT LoRA adapter directory for a model of config c: its LoRA
// configuration (Seed zero) and adapters by engine.LoRASpecs names, checked against the
// config. Errors name the file and the field or tensor at fault. What the engine cannot run
// (DoRA, bias other than "none", per-module ranks, modules_to_save, fan_in_fan_out) is an
// error too.
func ReadAdapter(dir string, c *engine.Config) (engine.LoRAConfig, map[string]engine.HostTensor, *AdapterConfig, error) {
	var lc engine.LoRAConfig
	cpath := filepath.Join(dir, AdapterConfigFile)
	raw, err := os.ReadFile(cpath)
	if err != nil {
		return lc, nil, nil, fmt.Errorf("adapter %s: %w", dir, err)
	}
	lc, ac, err := ParseAdapterConfig(raw, cpath)
	if err != nil {
		return lc, nil, nil, err
	}
	wpath := filepath.Join(dir, AdapterWeightsFile)
	f, err := checkpoints.ReadSafetensors(wpath)
	if err != nil {
		return lc, nil, nil, fmt.Errorf("adapter %s: %w", dir, err)
	}
	w := map[string]engine.HostTensor{}
	for k, t := range f.Tensors {
		n, ok := strings.CutPrefix(k, engine.LoRAPrefix)
		if !ok {
			return lc, nil, nil, fmt.Errorf("%s: tensor %q: not a PEFT key (they start with %q)", wpath, k, engine.LoRAPrefix)
		}
		w[n] = t
	}
	if err := engine.CheckLoRA(c, lc, w); err != nil {
		return lc, nil, nil, fmt.Errorf("%s: %w", wpath, err)
	}
	return lc, w, ac, nil
}

// ParseAdapterConfig reads the adapter_config.json raw (named cpath in errors) as the engine's
// LoRA configuration (Seed zero), refusing what the engine cannot run (DoRA, bias other than
// "none", per-module ranks or alphas, modules_to_save, fan_in_fan_out).
func ParseAdapterConfig(raw []byte, cpath string) (engine.LoRAConfig, *AdapterConfig, error) {
	var lc engine.LoRAConfig
	var ac AdapterConfig
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&ac); err != nil {
		return lc, nil, fmt.Errorf("%s: %w", cpath, err)
	}
	bad := func(field string, format string, a ...any) error {
		return fmt.Errorf("%s: field %q: %s", cpath, field, fmt.Sprintf(format, a...))
	}
	switch {
	case ac.PEFTType != "LORA":
		return lc, nil, bad("peft_type", "%q is not LORA", ac.PEFTType)
	case ac.R <= 0:
		return lc, nil, bad("r", "%d is not a positive rank", ac.R)
	case !(ac.LoRAAlpha > 0):
		return lc, nil, bad("lora_alpha", "%g is not positive", ac.LoRAAlpha)
	case ac.Bias != "" && ac.Bias != "none":
		return lc, nil, bad("bias", "%q: only \"none\" is supported", ac.Bias)
	case ac.UseDoRA:
		return lc, nil, bad("use_dora", "DoRA is not supported")
	case ac.FanInFanOut:
		return lc, nil, bad("fan_in_fan_out", "true is for Conv1D (GPT-2) layers, not this decoder's")
	case len(ac.RankPattern) > 0:
		return lc, nil, bad("rank_pattern", "per-module ranks are not supported")
	case len(ac.AlphaPattern) > 0:
		return lc, nil, bad("alpha_pattern", "per-module alphas are not supported")
	case len(ac.ModulesToSave) > 0:
		return lc, nil, bad("modules_to_save", "%v: fully trained modules beside the adapter are not supported", ac.ModulesToSave)
	}
	var targets []string
	var one string
	if err := json.Unmarshal(ac.TargetModules, &targets); err != nil {
		if err := json.Unmarshal(ac.TargetModules, &one); err != nil {
			return lc, nil, bad("target_modules", "%s is neither a list of module names nor a string", ac.TargetModules)
		}
		targets = []string{one}
	}
	lc = engine.LoRAConfig{Rank: ac.R, Alpha: ac.LoRAAlpha, RSLoRA: ac.UseRSLoRA, Dropout: ac.LoRADropout, Targets: targets}
	if slices.Contains(targets, "all-linear") {
		lc.Targets = nil
	}
	for _, t := range lc.Targets {
		if !slices.Contains(engine.LoRATargets, t) {
			return lc, nil, bad("target_modules", "%q is not a linear layer of the decoder (have %s)", t, strings.Join(engine.LoRATargets, ", "))
		}
	}
	return lc, &ac, nil
}
