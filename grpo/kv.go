package grpo

import (
	"fmt"

	"github.com/prolong-rl/prolong/engine"
)

// KVConfig is the KV cache of the engine's in-process rollouts (the generator on the policy,
// or on its copy with Trainer.Overlap): its element type and its memory budget.
type KVConfig struct {
	// DType is the element type of the cached keys and values: auto, fp32 or bf16
	// (engine.ParseKVDType).
	DType string `flag:"kv-dtype" default:"auto" help:"element type of the rollouts' KV cache: auto (bf16 where the model's linear weights are bf16 and the device stores bf16 keys and values, the CPU; else fp32), fp32, or bf16"`
	// Memory is the KV cache's budget: auto, or a size such as 2GiB (engine.ParseBytes).
	Memory string `flag:"kv-memory" default:"auto" help:"memory of the rollouts' KV cache: auto (room for 256 sequences of the model's max_position_embeddings, at most half the GPU's free memory or a quarter of RAM), or a size such as 512MiB or 2GiB; when the running samples outgrow it, the youngest are preempted and recomputed later, with the same tokens"`
}

// CheckKnobs reports a --kv-dtype or --kv-memory that does not parse (knob.Checker).
func (c *KVConfig) CheckKnobs() error {
	_, err := c.GeneratorOptions()
	return err
}

// GeneratorOptions are the engine generator's options that c sets.
func (c *KVConfig) GeneratorOptions() (engine.GeneratorOptions, error) {
	dt, err := engine.ParseKVDType(c.DType)
	if err != nil {
		return engine.GeneratorOptions{}, fmt.Errorf("--kv-dtype: %w", err)
	}
	var bytes int64
	if c.Memory != "" && c.Memory != "auto" {
		if bytes, err = engine.ParseBytes(c.Memory); err != nil {
			return engine.GeneratorOptions{}, fmt.Errorf("--kv-memory: %w", err)
		}
		if bytes <= 0 {
			return engine.GeneratorOptions{}, fmt.Errorf("--kv-memory %q: want auto or a positive size", c.Memory)
		}
	}
	return engine.GeneratorOptions{KVDType: dt, KVBudgetBytes: bytes}, nil
}
