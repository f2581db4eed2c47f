package grpo

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo/modeldir"
)

// LoRAConfig are the knobs of LoRA training: adapters of rank Rank on a frozen base instead of
// full fine-tuning (Rank 0). The adapters are PEFT's (engine.LoRAConfig): A drawn from the
// run's seed as PEFT does, B zero, output scaled by Alpha/Rank (Alpha/sqrt(Rank) with RSLoRA).
type LoRAConfig struct {
	Rank    int      `flag:"lora-rank" check:">=0" help:"LoRA: train rank-R adapters on the frozen base instead of every weight; 0: full fine-tuning"`
	Alpha   float64  `flag:"lora-alpha" default:"16" check:">0" help:"LoRA: lora_alpha; the adapters' output is scaled by alpha/rank (alpha/sqrt(rank) with --lora-rslora)"`
	Targets []string `flag:"lora-targets" default:"all-linear" help:"LoRA: PEFT module names to adapt (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj) or all-linear (every linear layer of the decoder; never the LM head)"`
	Dropout float64  `flag:"lora-dropout" check:"[0,1)" help:"LoRA: lora_dropout, PEFT's dropout on each adapter's input in training (elements zeroed with this probability, the rest scaled by 1/(1-p); masks seeded by --seed, the step and micro-batch); rollouts and log-prob recomputation never drop; written to adapter_config.json"`
	RSLoRA  bool     `flag:"lora-rslora" help:"LoRA: rank-stabilised scaling alpha/sqrt(rank) (PEFT's use_rslora)"`
	// Init starts the adapters from a PEFT adapter directory instead of fresh ones.
	Init string `flag:"lora-init" help:"LoRA: start from this PEFT adapter directory (adapter_config.json + adapter_model.safetensors; its r, lora_alpha and target_modules must match the flags)"`
	// BaseDType is the dtype the frozen base is held in.
	BaseDType string `flag:"lora-base-dtype" default:"auto" want:"must be auto, fp32 or bf16" help:"LoRA: dtype of the frozen base weights: bf16 (half the memory; bf16 dot products where the CPU has them), fp32, or auto (bf16 when the model's config.json says torch_dtype bfloat16)"`
}

// engineLoRA is the engine's LoRA configuration of c, drawn from seed.
func (c LoRAConfig) engineLoRA(seed uint64) engine.LoRAConfig {
	return engine.LoRAConfig{Rank: c.Rank, Alpha: c.Alpha, RSLoRA: c.RSLoRA, Targets: c.Targets, Dropout: c.Dropout, Seed: seed}
}

// check checks the knobs that the tags cannot.
func (c LoRAConfig) check() error {
	if c.BaseDType != "auto" && c.BaseDType != "fp32" && c.BaseDType != "bf16" {
		return fmt.Errorf("--lora-base-dtype: must be auto, fp32 or bf16, got %q", c.BaseDType)
	}
	if c.Rank == 0 {
		if c.Init != "" {
			return fmt.Errorf("--lora-init needs --lora-rank (the adapter's r)")
		}
		return nil
	}
	if err := c.engineLoRA(0).Validate(); err != nil {
		return fmt.Errorf("--lora-targets: %w", err)
	}
	return nil
}

// baseDType is the dtype of a LoRA run's frozen base: fp32 for full fine-tuning.
func (c LoRAConfig) baseDType(job *Job) engine.DType {
	switch {
	case c.Rank == 0, c.BaseDType == "fp32":
		return engine.F32
	case c.BaseDType == "bf16", job != nil && job.StoredBF16:
		return engine.BF16
	}
	return engine.F32
}

// loraInit returns the adapters a new LoRA run starts from: --lora-init's, checked against
// the flags, or nil (fresh ones).
func (c LoRAConfig) loraInit(mc *engine.Config) (map[string]engine.HostTensor, error) {
	if c.Init == "" {
		return nil, nil
	}
	lc, w, _, err := modeldir.ReadAdapter(c.Init, mc)
	if err != nil {
		return nil, fmt.Errorf("--lora-init: %w", err)
	}
	want := c.engineLoRA(0)
	wm, _ := want.TargetModules()
	gm, _ := lc.TargetModules()
	cfg := filepath.Join(c.Init, modeldir.AdapterConfigFile)
	switch {
	case lc.Rank != c.Rank:
		return nil, fmt.Errorf("--lora-init: %s: field \"r\" is %d, --lora-rank %d", cfg, lc.Rank, c.Rank)
	case lc.Alpha != c.Alpha:
		return nil, fmt.Errorf("--lora-init: %s: field \"lora_alpha\" is %g, --lora-alpha %g", cfg, lc.Alpha, c.Alpha)
	case lc.RSLoRA != c.RSLoRA:
		return nil, fmt.Errorf("--lora-init: %s: field \"use_rslora\" is %v, --lora-rslora %v", cfg, lc.RSLoRA, c.RSLoRA)
	case !slices.Equal(wm, gm):
		return nil, fmt.Errorf("--lora-init: %s: field \"target_modules\" is %v, --lora-targets %v", cfg, gm, wm)
	}
	slog.Info("lora: adapters from " + c.Init)
	return w, nil
}

// LoRAKey is the run state's extra entry (checkpoints.RunState.Extra) of a LoRA run: its
// adapters' adapter_config.json (modeldir.AdapterConfig).
const LoRAKey = modeldir.RunStateLoRAKey

// BaseDir is the run directory's copy of a LoRA run's starting model when the job names none
// on disk (the default job's warm-started model): the base its adapters apply to.
const BaseDir = "base"

// ensureBase gives a LoRA run whose job names no base model one: the frozen base as the policy
// holds it (bf16-rounded with a bf16 base) as a Hugging Face directory RUN/base/ (written when
// a new run starts, by rank 0 alone in a data-parallel run), named by its absolute path in the
// adapters' adapter_config.json.
func (r *runSession) ensureBase() error {
	if r.cfg.LoRA.Rank == 0 || r.job.BaseModel != "" {
		return nil
	}
	dir, err := filepath.Abs(filepath.Join(r.cfg.Dir, BaseDir))
	if err != nil {
		return err
	}
	r.job.BaseModel = dir
	if r.cfg.Resume != nil || !r.writes() { // in a data-parallel run rank 0 writes it
		return nil
	}
	w, err := r.policy.Model.HostWeights()
	if err != nil {
		return err
	}
	_, err = modeldir.Write(dir, r.job.Model, w, modeldir.Options{FilesDir: r.tokenizerDir(), Safetensors: true})
	if err != nil {
		return fmt.Errorf("lora: base model %s: %w", dir, err)
	}
	return nil
}
