// Package modeldir writes the directory a model is exported to: a Hugging Face model directory
// (model.safetensors, config.json, generation_config.json, the tokenizer files) with the same
// model as ONNX (model.onnx) beside it. The trainer's checkpoints (package grpo,
// RUN/checkpoints/step-NNNNNN) and tools/export both write through Write, so the same weights
// with the same tokenizer give the same directory, byte for byte.
//
// It lives apart from package grpo so that the tools that write or read such directories
// (tools/export, tools/convert) need not link the trainer.
package modeldir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/checkpoints/tokenizer"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx"
)

// ONNXFile is the name of the ONNX model in an export directory.
const ONNXFile = "model.onnx"

// TokenizerFiles are the files of a Hugging Face tokenizer, copied along with a model.
var TokenizerFiles = []string{"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja"}

// SideFiles are the files that travel with a model when it is converted or exported: the
// tokenizer's, and generation_config.json (a user's sampling defaults; it replaces the one
// checkpoints.Save derives from the config).
var SideFiles = append([]string{checkpoints.GenerationConfigFile}, TokenizerFiles...)

// Options say what Write writes.
type Options struct {
	// FilesDir is the directory whose SideFiles travel with the model ("" for none): a training
	// run's RUN/tokenizer/, or the directory of the model exported. Its generation_config.json
	// and tokenizer also supply the special token ids the config lacks (see CompleteTokenIDs).
	FilesDir string
	// Safetensors writes the weights as model.safetensors (or shards, see ShardBytes) stored as
	// DType (F32 when empty); without it only config.json stands for the Hugging Face form.
	Safetensors bool
	DType       checkpoints.DType
	// ShardBytes, when positive, splits the safetensors weights as checkpoints.SaveOptions does.
	ShardBytes int64
	// ONNX writes model.onnx (always f32).
	ONNX bool
	// Stage, when set, is called before each part is written: checkpoints.WeightsFile,
	// ONNXFile, then "tokenizer" (the side files).
	Stage func(part string)
}

// Write writes the model (cfg, weights w) into the directory dir, which it creates or
// replaces (checkpoints.Save builds the weights' directory under a temporary name and swaps it
// in): model.safetensors when opts.Safetensors, config.json and generation_config.json always,
// model.onnx when opts.ONNX, and the tokenizer files of opts.FilesDir. It returns the
// tokenizer files copied.
//
// The config written is cfg with the special token ids it lacks taken from opts.FilesDir
// (CompleteTokenIDs); cfg itself is not changed. model.onnx carries the config that
// config.json says (read back from it), so that a model held in memory and the same model
// loaded from a run state give the same bytes.
func Write(dir string, cfg *engine.Config, w map[string]engine.HostTensor, opts Options) ([]string, error) {
	stage := func(part string) {
		if opts.Stage != nil {
			opts.Stage(part)
		}
	}
	if opts.DType == "" {
		opts.DType = checkpoints.F32
	}
	c, err := CompleteTokenIDs(cfg, opts.FilesDir)
	if err != nil {
		return nil, err
	}
	if opts.Safetensors {
		stage(checkpoints.WeightsFile)
		if err := checkpoints.Save(dir, c, w, checkpoints.SaveOptions{DType: opts.DType, ShardBytes: opts.ShardBytes}); err != nil {
			return nil, err
		}
	} else {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		if err := checkpoints.WriteConfig(dir, c, checkpoints.F32); err != nil { // config.json travels with the ONNX too
			return nil, err
		}
	}
	if opts.ONNX {
		stage(ONNXFile)
		data, err := os.ReadFile(filepath.Join(dir, checkpoints.ConfigFile))
		if err != nil {
			return nil, err
		}
		oc, err := engine.ParseConfig(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, checkpoints.ConfigFile), err)
		}
		if err := onnx.Export(filepath.Join(dir, ONNXFile), oc, w, onnx.ExportOptions{}); err != nil {
			return nil, err
		}
	}
	stage("tokenizer")
	return WriteSideFiles(dir, c, opts.FilesDir)
}

// WriteSideFiles writes what travels with a model of config cfg into the directory dir: the
// tokenizer files of filesDir (copied; none when filesDir is "") and generation_config.json
// (GenerationConfig; it replaces the one checkpoints.Save derives from the config), each
// atomically. It returns the tokenizer files copied.
func WriteSideFiles(dir string, cfg *engine.Config, filesDir string) ([]string, error) {
	copied, err := CopyFiles(filesDir, dir, TokenizerFiles)
	if err != nil {
		return nil, err
	}
	gen, err := GenerationConfig(cfg, filesDir)
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(gen, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", checkpoints.GenerationConfigFile, err)
	}
	err = checkpoints.WriteFileAtomic(filepath.Join(dir, checkpoints.GenerationConfigFile), 0o644, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
	return copied, err
}

// readGenerationConfig reads dir's generation_config.json (nil when dir is "" or has none),
// numbers kept as written.
func readGenerationConfig(dir string) (map[string]any, error) {
	if dir == "" {
		return nil, nil
	}
	path := filepath.Join(dir, checkpoints.GenerationConfigFile)
	b, err := checkpoints.ReadModelFile(dir, checkpoints.GenerationConfigFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var gen map[string]any
	if err := dec.Decode(&gen); err != nil || gen == nil {
		return nil, fmt.Errorf("%s: not a JSON object: %v", path, err)
	}
	return gen, nil
}

// tokenIDs reads a generation_config.json token id field: a number or a list of numbers.
func tokenIDs(gen map[string]any, field string) ([]int, error) {
	v, ok := gen[field]
	if !ok || v == nil {
		return nil, nil
	}
	one := func(x any) (int, error) {
		n, ok := x.(json.Number)
		if !ok {
			return 0, fmt.Errorf("%s: %v is not a token id", field, x)
		}
		i, err := n.Int64()
		if err != nil || i < 0 {
			return 0, fmt.Errorf("%s: %v is not a token id", field, x)
		}
		return int(i), nil
	}
	if list, ok := v.([]any); ok {
		var ids []int
		for _, x := range list {
			id, err := one(x)
			if err != nil {
				return nil, err
			}
			ids = append(ids, id)
		}
		return ids, nil
	}
	id, err := one(v)
	if err != nil {
		return nil, err
	}
	return []int{id}, nil
}

// CompleteTokenIDs returns a copy of cfg with the special token ids it lacks (an ONNX import
// knows none, the default job's model names none): eos_token_id, bos_token_id and
// pad_token_id from filesDir's generation_config.json, else eos and bos from the tokenizer
// there (tokenizer.json with tokenizer_config.json's eos_token and bos_token). Ids outside
// the vocabulary are an error naming the file; a tokenizer this package cannot read leaves
// the ids unknown. cfg itself is not changed.
func CompleteTokenIDs(cfg *engine.Config, filesDir string) (*engine.Config, error) {
	c := *cfg
	gen, err := readGenerationConfig(filesDir)
	if err != nil {
		return nil, err
	}
	genPath := filepath.Join(filesDir, checkpoints.GenerationConfigFile)
	field := func(name string) ([]int, error) {
		ids, err := tokenIDs(gen, name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", genPath, err)
		}
		for _, id := range ids {
			if id >= c.VocabSize {
				return nil, fmt.Errorf("%s: %s %d is outside the vocabulary [0, %d)", genPath, name, id, c.VocabSize)
			}
		}
		return ids, nil
	}
	var tok *tokenizer.Tokenizer
	if filesDir != "" && (len(c.EOSTokenIDs) == 0 || c.BOSTokenID == nil) {
		if _, err := os.Stat(filepath.Join(filesDir, tokenizer.TokenizerFile)); err == nil {
			if tok, err = tokenizer.Load(filesDir); err != nil {
				tok = nil
			}
		}
	}
	fromTok := func(get func() (int32, bool)) []int {
		if tok == nil {
			return nil
		}
		if id, ok := get(); ok && int(id) < c.VocabSize {
			return []int{int(id)}
		}
		return nil
	}
	if len(c.EOSTokenIDs) == 0 {
		if c.EOSTokenIDs, err = field("eos_token_id"); err != nil {
			return nil, err
		}
		if len(c.EOSTokenIDs) == 0 {
			c.EOSTokenIDs = fromTok(func() (int32, bool) { return tok.EOS() })
		}
	}
	if c.BOSTokenID == nil {
		ids, err := field("bos_token_id")
		if err != nil {
			return nil, err
		}
		if len(ids) == 0 {
			ids = fromTok(func() (int32, bool) { return tok.BOS() })
		}
		if len(ids) == 1 {
			c.BOSTokenID = &ids[0]
		}
	}
	if c.PadTokenID == nil {
		ids, err := field("pad_token_id")
		if err != nil {
			return nil, err
		}
		if len(ids) == 1 {
			c.PadTokenID = &ids[0]
		}
	}
	return &c, nil
}

// GenerationConfig is generation_config.json for a model of config cfg: filesDir's, every
// field kept (the sampling defaults temperature, top_p, top_k, do_sample ... among them), with
// bos_token_id, eos_token_id and pad_token_id taken from cfg where it has none.
func GenerationConfig(cfg *engine.Config, filesDir string) (map[string]any, error) {
	gen, err := readGenerationConfig(filesDir)
	if err != nil {
		return nil, err
	}
	if gen == nil {
		gen = map[string]any{}
	}
	if _, ok := gen["bos_token_id"]; !ok && cfg.BOSTokenID != nil {
		gen["bos_token_id"] = *cfg.BOSTokenID
	}
	if v := checkpoints.EOSValue(cfg.EOSTokenIDs); v != nil {
		if _, ok := gen["eos_token_id"]; !ok {
			gen["eos_token_id"] = v
		}
	}
	if _, ok := gen["pad_token_id"]; !ok && cfg.PadTokenID != nil {
		gen["pad_token_id"] = *cfg.PadTokenID
	}
	return gen, nil
}

// CheckSideFiles refuses SideFiles of dir ("" for none) that exist but cannot be read as
// model files (see checkpoints.OpenModelFile): the copy would fail after the weights are
// written, and the token ids read from them now could come from elsewhere.
func CheckSideFiles(dir string) error {
	if dir == "" {
		return nil
	}
	for _, name := range SideFiles {
		f, err := checkpoints.OpenModelFile(dir, name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		f.Close()
	}
	return nil
}

// CopyFiles copies the files names that exist in from ("" for none) into to, each atomically
// (checkpoints.WriteFileAtomic, mode 0644), replacing files of the same name there, and returns
// the names copied. Each must be a regular file inside from (see checkpoints.OpenModelFile).
func CopyFiles(from, to string, names []string) ([]string, error) {
	if from == "" {
		return nil, nil
	}
	var copied []string
	for _, name := range names {
		src, err := checkpoints.OpenModelFile(from, name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		err = checkpoints.WriteFileAtomic(filepath.Join(to, name), 0o644, func(w io.Writer) error {
			_, err := io.Copy(w, src)
			return err
		})
		src.Close()
		if err != nil {
			return nil, fmt.Errorf("copy %s: %w", filepath.Join(from, name), err)
		}
		copied = append(copied, name)
	}
	return copied, nil
}
