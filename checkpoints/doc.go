// Package checkpoints reads and writes what users keep: safetensors weights and Hugging Face
// model directories (config.json, generation_config.json, single-file or sharded weights),
// written atomically so that a crash never leaves a half-written file under its real name.
package checkpoints
