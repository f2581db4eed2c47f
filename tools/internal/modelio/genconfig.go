package modelio

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
)

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

// fillTokenIDs gives m's config the special token ids it lacks (an ONNX import knows none):
// eos_token_id, bos_token_id and pad_token_id from the generation_config.json beside the
// model, else eos and bos from the tokenizer's tokenizer_config.json. Ids outside the
// vocabulary are an error naming the file.
func fillTokenIDs(m *Model) error {
	c := m.Config
	gen, err := readGenerationConfig(m.FilesDir)
	if err != nil {
		return err
	}
	genPath := filepath.Join(m.FilesDir, checkpoints.GenerationConfigFile)
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
	// Load has checked the tokenizer's files (checkSideFiles): regular, inside the directory.
	if m.TokenizerDir != "" && (len(c.EOSTokenIDs) == 0 || c.BOSTokenID == nil) {
		if tok, err = tokenizer.Load(m.TokenizerDir); err != nil {
			tok = nil // a tokenizer this package cannot read leaves the ids unknown
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
			return err
		}
		if len(c.EOSTokenIDs) == 0 {
			c.EOSTokenIDs = fromTok(func() (int32, bool) { return tok.EOS() })
		}
	}
	if c.BOSTokenID == nil {
		ids, err := field("bos_token_id")
		if err != nil {
			return err
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
			return err
		}
		if len(ids) == 1 {
			c.PadTokenID = &ids[0]
		}
	}
	return nil
}

// GenerationConfig is generation_config.json for m's output: the one beside the model, every
// field kept (the sampling defaults temperature, top_p, top_k, do_sample ... among them), with
// bos_token_id, eos_token_id and pad_token_id taken from m's config where it has none.
func GenerationConfig(m *Model) (map[string]any, error) {
	gen, err := readGenerationConfig(m.FilesDir)
	if err != nil {
		return nil, err
	}
	if gen == nil {
		gen = map[string]any{}
	}
	c := m.Config
	if _, ok := gen["bos_token_id"]; !ok && c.BOSTokenID != nil {
		gen["bos_token_id"] = *c.BOSTokenID
	}
	if _, ok := gen["eos_token_id"]; !ok {
		switch len(c.EOSTokenIDs) {
		case 0:
		case 1:
			gen["eos_token_id"] = c.EOSTokenIDs[0]
		default:
			gen["eos_token_id"] = c.EOSTokenIDs
		}
	}
	if _, ok := gen["pad_token_id"]; !ok && c.PadTokenID != nil {
		gen["pad_token_id"] = *c.PadTokenID
	}
	return gen, nil
}

// WriteSideFiles writes what travels with m into the output directory dir: the tokenizer
// files beside it (copied) and generation_config.json (GenerationConfig; it replaces the one
// checkpoints.Save derives from the config), each atomically. It returns the tokenizer files
// copied.
func WriteSideFiles(m *Model, dir string) ([]string, error) {
	copied, err := CopyTokenizer(m.FilesDir, dir)
	if err != nil {
		return nil, err
	}
	gen, err := GenerationConfig(m)
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
