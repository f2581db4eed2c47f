package modelio

import (
	"github.com/prolong-rl/prolong/grpo/modeldir"
)

// fillTokenIDs gives m's config the special token ids it lacks (an ONNX import knows none):
// eos_token_id, bos_token_id and pad_token_id from the generation_config.json beside the
// model, else eos and bos from its tokenizer (modeldir.CompleteTokenIDs). Ids outside the
// vocabulary are an error naming the file.
func fillTokenIDs(m *Model) error {
	c, err := modeldir.CompleteTokenIDs(m.Config, m.FilesDir)
	if err != nil {
		return err
	}
	m.Config = c
	return nil
}

// GenerationConfig is generation_config.json for m's output: the one beside the model, every
// field kept (the sampling defaults temperature, top_p, top_k, do_sample ... among them), with
// bos_token_id, eos_token_id and pad_token_id taken from m's config where it has none
// (modeldir.GenerationConfig).
func GenerationConfig(m *Model) (map[string]any, error) {
	return modeldir.GenerationConfig(m.Config, m.FilesDir)
}

// WriteSideFiles writes what travels with m into the output directory dir: the tokenizer
// files beside it (copied) and generation_config.json (GenerationConfig; it replaces the one
// checkpoints.Save derives from the config), each atomically. It returns the tokenizer files
// copied (modeldir.WriteSideFiles).
func WriteSideFiles(m *Model, dir string) ([]string, error) {
	return modeldir.WriteSideFiles(dir, m.Config, m.FilesDir)
}
