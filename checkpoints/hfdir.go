package checkpoints

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"github.com/prolong-rl/prolong/engine"
)

// File names of a Hugging Face model directory.
const (
	ConfigFile           = "config.json"
	GenerationConfigFile = "generation_config.json"
	WeightsFile          = "model.safetensors"
	IndexFile            = "model.safetensors.index.json"
)

// architectures maps model_type to the transformers class that from_pretrained instantiates.
var architectures = map[string]string{
	"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM",
}

// torchDTypes maps a stored dtype to config.json's torch_dtype.
var torchDTypes = map[DType]string{F32: "float32", BF16: "bfloat16", F16: "float16"}

// SaveOptions tunes Save.
type SaveOptions struct {
	// DType is the stored element type: F32 (the default when empty), BF16 or F16.
	DType DType
	// ShardBytes, when positive, splits the weights into model-0000k-of-0000n.safetensors
	// files of at most about this many bytes each (a larger tensor gets a file of its own),
	// with model.safetensors.index.json, once they total more than it.
	ShardBytes int64
	// CopyFiles are files (tokenizer.json, tokenizer_config.json, ...) copied into the
	// directory under their base names.
	CopyFiles []string
}

// SaveHF writes a Hugging Face model directory with the weights stored as dtype; it is Save
// with SaveOptions{DType: dtype}.
func SaveHF(dir string, cfg *engine.Config, weights map[string]engine.HostTensor, dtype DType) error {
	return Save(dir, cfg, weights, SaveOptions{DType: dtype})
}

// Save writes a Hugging Face model directory that transformers' from_pretrained loads:
// model.safetensors (or shards and model.safetensors.index.json, see SaveOptions.ShardBytes)
// holding the weights by HF name (no lm_head.weight when the embeddings are tied),
// config.json (with architectures, model_type, torch_dtype) and generation_config.json.
//
// The weights must be exactly those of cfg (engine.WeightNames) with their shapes; errors
// name the tensor. The directory is built beside dir under a temporary name, every file
// fsynced, then swapped in (see ReplaceDir): an existing dir stays intact until that moment,
// and a failed save leaves it untouched. Temporary directories that earlier saves to dir left when
// killed (dir.tmp-*) are removed.
func Save(dir string, cfg *engine.Config, weights map[string]engine.HostTensor, opts SaveOptions) (err error) {
	if opts.DType == "" {
		opts.DType = F32
	}
	if !opts.DType.convertible() {
		return fmt.Errorf("save %s: dtype %q is not supported (want F32, BF16 or F16)", dir, opts.DType)
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("save %s: config: %w", dir, err)
	}
	arch, ok := architectures[cfg.ModelType]
	if !ok {
		return fmt.Errorf("save %s: config field \"model_type\": %q is not supported", dir, cfg.ModelType)
	}
	w, err := checkWeights(cfg, weights)
	if err != nil {
		return fmt.Errorf("save %s: %w", dir, err)
	}
	dir = filepath.Clean(dir)
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		return fmt.Errorf("save %s: exists and is not a directory", dir)
	}
	removeStale(dir)
	err = ReplaceDir(dir, filepath.Base(dir)+".tmp-", func(tmp string) error {
		if err := writeWeights(tmp, w, opts); err != nil {
			return err
		}
		if err := writeConfigs(tmp, cfg, arch, opts.DType); err != nil {
			return err
		}
		for _, src := range opts.CopyFiles {
			if err := copyFile(filepath.Join(tmp, filepath.Base(src)), src); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save %s: %w", dir, err)
	}
	return nil
}

// checkWeights returns the weights Save stores: exactly cfg's names with cfg's shapes (a tied
// lm_head.weight passed along is dropped).
func checkWeights(cfg *engine.Config, weights map[string]engine.HostTensor) (map[string]engine.HostTensor, error) {
	names := engine.WeightNames(cfg)
	out := make(map[string]engine.HostTensor, len(names))
	for _, name := range names {
		t, ok := weights[name]
		if !ok {
			return nil, fmt.Errorf("weight %q is missing", name)
		}
		want, _ := engine.WeightShape(cfg, name)
		if !reflect.DeepEqual(t.Shape, want) {
			return nil, fmt.Errorf("weight %q has shape %v, the config wants %v", name, t.Shape, want)
		}
		if len(t.Data) != engine.NumElements(want) {
			return nil, fmt.Errorf("weight %q has %d values for shape %v", name, len(t.Data), want)
		}
		out[name] = t
	}
	var extra []string
	for name := range weights {
		if _, ok := out[name]; !ok && !(name == engine.LMHeadWeight && cfg.TieWordEmbeddings) {
			extra = append(extra, name)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return nil, fmt.Errorf("weight %q is not part of a %s model of this config", extra[0], cfg.ModelType)
	}
	return out, nil
}

// writeWeights writes model.safetensors, or shards and their index, into dir.
func writeWeights(dir string, w map[string]engine.HostTensor, opts SaveOptions) error {
	meta := map[string]string{"format": "pt"}
	es := dtypeSizes[string(opts.DType)]
	names := make([]string, 0, len(w))
	var total int64
	for n, t := range w {
		names = append(names, n)
		total += int64(len(t.Data)) * es
	}
	if opts.ShardBytes <= 0 || total <= opts.ShardBytes {
		return WriteSafetensors(filepath.Join(dir, WeightsFile), w, opts.DType, meta)
	}
	sort.Strings(names)
	var shards []map[string]engine.HostTensor
	var size int64
	for _, n := range names {
		b := int64(len(w[n].Data)) * es
		if len(shards) == 0 || size > 0 && size+b > opts.ShardBytes {
			shards = append(shards, map[string]engine.HostTensor{})
			size = 0
		}
		shards[len(shards)-1][n] = w[n]
		size += b
	}
	weightMap := map[string]string{}
	for i, s := range shards {
		file := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(shards))
		for n := range s {
			weightMap[n] = file
		}
		if err := WriteSafetensors(filepath.Join(dir, file), s, opts.DType, meta); err != nil {
			return err
		}
	}
	return writeJSON(filepath.Join(dir, IndexFile), map[string]any{
		"metadata":   map[string]int64{"total_size": total},
		"weight_map": weightMap,
	})
}

// configJSON is cfg as a config.json object plus what transformers needs to pick the class.
// EOSValue is eos_token_id as Hugging Face writes it: one id as a number, several as a list;
// nil for none.
func EOSValue(ids []int) any {
	switch len(ids) {
	case 0:
		return nil
	case 1:
		return ids[0]
	}
	return ids
}

func configJSON(cfg *engine.Config, arch string, dt DType) map[string]any {
	b, _ := json.Marshal(cfg)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	if len(cfg.Architectures) == 0 {
		m["architectures"] = []string{arch}
	}
	if v := EOSValue(cfg.EOSTokenIDs); v != nil {
		m["eos_token_id"] = v
	}
	m["hidden_act"] = "silu"
	m["torch_dtype"] = torchDTypes[dt]
	m["use_cache"] = true
	return m
}

// WriteConfig writes config.json and generation_config.json into the existing directory dir,
// each atomically and byte for byte as Save writes them for weights stored as dtype (F32 when
// empty): what an output that holds the model in another form, such as model.onnx, carries
// beside it. config.json's "architectures" is cfg.Architectures, or else the transformers
// class of cfg.ModelType; a model_type without a known class is then an error. Errors name
// the file and the field at fault.
func WriteConfig(dir string, cfg *engine.Config, dtype DType) error {
	if dtype == "" {
		dtype = F32
	}
	path := filepath.Join(dir, ConfigFile)
	if !dtype.convertible() {
		return fmt.Errorf("%s: dtype %q is not supported (want F32, BF16 or F16)", path, dtype)
	}
	arch, ok := architectures[cfg.ModelType]
	if !ok && len(cfg.Architectures) == 0 {
		return fmt.Errorf("%s: config field \"model_type\": %q is not supported", path, cfg.ModelType)
	}
	return writeConfigs(dir, cfg, arch, dtype)
}

// writeConfigs writes config.json (see configJSON) and generation_config.json into dir.
func writeConfigs(dir string, cfg *engine.Config, arch string, dt DType) error {
	if err := writeJSON(filepath.Join(dir, ConfigFile), configJSON(cfg, arch, dt)); err != nil {
		return err
	}
	return writeJSON(filepath.Join(dir, GenerationConfigFile), generationConfig(cfg))
}

// writeJSON writes v as indented JSON (keys sorted), atomically.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return writeAtomic(path, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
}

// copyFile copies src to dst atomically.
func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeAtomic(dst, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
}

// removeStale removes the temporary directories that saves to dir killed midway left beside
// it (dir.tmp-*). It does so only while dir exists: where it does not, a dir.tmp-*.old may be
// the previous checkpoint itself (see ReplaceDir), and it is kept.
func removeStale(dir string) {
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return
	}
	stale, _ := filepath.Glob(filepath.Join(filepath.Dir(dir), globEscape(filepath.Base(dir))+".tmp-*"))
	for _, p := range stale {
		os.RemoveAll(p)
	}
}

// globEscape quotes the pattern characters of a file name for filepath.Glob.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Load reads a Hugging Face model directory (written by Save or by transformers'
// save_pretrained): config.json and the weights from model.safetensors, or from the shards
// that model.safetensors.index.json lists. The weights are checked against the config:
// every expected name present with its shape, nothing unexpected (a tied lm_head.weight and
// rotary inv_freq buffers are dropped). Every file must be a regular file inside dir, or, for
// a snapshot of the Hugging Face cache, inside its repository folder (see OpenModelFile): a
// symlink out of the directory or a named pipe is an error. Errors name the file and the
// tensor.
func Load(dir string) (*engine.Config, map[string]engine.HostTensor, error) {
	cfg, err := loadConfig(dir)
	if err != nil {
		return nil, nil, err
	}
	w := map[string]engine.HostTensor{}
	from := map[string]string{} // tensor name -> file it came from
	indexPath := filepath.Join(dir, IndexFile)
	weightsAt := filepath.Join(dir, WeightsFile) // where a missing weight should have been
	if data, err := ReadModelFile(dir, IndexFile); err == nil {
		weightsAt = indexPath
		files, err := parseIndex(data)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", indexPath, err)
		}
		for _, file := range files.order {
			path := filepath.Join(dir, file)
			f, err := readModelSafetensors(dir, file)
			if err != nil {
				return nil, nil, err
			}
			for n, t := range f.Tensors {
				if files.weightMap[n] != file {
					return nil, nil, fmt.Errorf("%s: tensor %q is not listed for this file in %s", path, n, IndexFile)
				}
				w[n], from[n] = t, path
			}
		}
		for n, file := range files.weightMap {
			if _, ok := w[n]; !ok {
				return nil, nil, fmt.Errorf("%s: tensor %q, listed in %s, is missing", filepath.Join(dir, file), n, IndexFile)
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, err
	} else {
		path := filepath.Join(dir, WeightsFile)
		f, err := readModelSafetensors(dir, WeightsFile)
		if err != nil {
			return nil, nil, err
		}
		for n, t := range f.Tensors {
			w[n], from[n] = t, path
		}
	}
	for n := range w {
		if strings.HasSuffix(n, "rotary_emb.inv_freq") || n == engine.LMHeadWeight && cfg.TieWordEmbeddings {
			delete(w, n)
		}
	}
	for _, name := range engine.WeightNames(cfg) {
		t, ok := w[name]
		if !ok {
			return nil, nil, fmt.Errorf("%s: weight %q is missing (config.json asks for it)", weightsAt, name)
		}
		want, _ := engine.WeightShape(cfg, name)
		if !reflect.DeepEqual(t.Shape, want) {
			return nil, nil, fmt.Errorf("%s: weight %q has shape %v, config.json wants %v", from[name], name, t.Shape, want)
		}
	}
	names := make([]string, 0, len(w))
	for n := range w {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if _, ok := engine.WeightShape(cfg, n); !ok {
			return nil, nil, fmt.Errorf("%s: weight %q is not part of a %s model of config.json", from[n], n, cfg.ModelType)
		}
	}
	return cfg, w, nil
}

// loadConfig reads dir's config.json (see OpenModelFile); errors name the file.
func loadConfig(dir string) (*engine.Config, error) {
	data, err := ReadModelFile(dir, ConfigFile)
	if err != nil {
		return nil, err
	}
	cfg, err := engine.ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, ConfigFile), err)
	}
	return cfg, nil
}

// readModelSafetensors reads the safetensors file name of the model directory dir (see
// OpenModelFile and ReadSafetensors).
func readModelSafetensors(dir, name string) (*File, error) {
	f, err := OpenModelFile(dir, name)
	if err != nil {
		return nil, err
	}
	return readSafetensors(f, filepath.Join(dir, name))
}

// LoadHF is Load, kept for callers of the first API.
func LoadHF(dir string) (*engine.Config, map[string]engine.HostTensor, error) { return Load(dir) }

// shardIndex is a parsed model.safetensors.index.json.
type shardIndex struct {
	weightMap map[string]string
	order     []string // distinct shard files, sorted
}

// parseIndex parses and checks a shard index: a weight_map of tensor names to plain file
// names in the same directory.
func parseIndex(data []byte) (*shardIndex, error) {
	var idx struct {
		Metadata  map[string]any    `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&idx); err != nil {
		return nil, fmt.Errorf("bad JSON: %w", err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, errors.New("field \"weight_map\" is missing or empty")
	}
	s := &shardIndex{weightMap: idx.WeightMap}
	seen := map[string]bool{}
	for n, file := range idx.WeightMap {
		if file == "" || file != filepath.Base(file) || file == "." || file == ".." || strings.ContainsAny(file, `/\`) {
			return nil, fmt.Errorf("tensor %q: file %q is not a plain file name in the directory", n, file)
		}
		if !seen[file] {
			seen[file] = true
			s.order = append(s.order, file)
		}
	}
	sort.Strings(s.order)
	return s, nil
}
