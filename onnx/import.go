package onnx

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx/onnxpb"
	"google.golang.org/protobuf/proto"
)

// ImportOptions control Import.
type ImportOptions struct {
	// Config, when set, is the model's configuration; otherwise Import reads config.json
	// beside the model file, and failing that the config Export stored in the model's
	// metadata (key ConfigKey).
	Config *engine.Config
}

// supportedOps are the operators a decoder graph may use: those Export writes. Import refuses
// graphs with other ops (or ops of another domain) with an error naming the node.
var supportedOps = map[string]bool{
	"Add": true, "And": true, "Cast": true, "Concat": true, "Constant": true, "Cos": true,
	"Div": true, "Gather": true, "Gemm": true, "LessOrEqual": true, "MatMul": true, "Mul": true,
	"Neg": true, "Pow": true, "Range": true, "Reciprocal": true, "ReduceMean": true,
	"Reshape": true, "Shape": true, "Sigmoid": true, "Sin": true, "Slice": true, "Softmax": true,
	"Sqrt": true, "Sub": true, "Transpose": true, "Unsqueeze": true, "Where": true,
}

// Import reads an ONNX decoder written by Export (or any Llama/Qwen2/Qwen3 graph whose
// weights are initializers or Constant nodes under their Hugging Face names, in HF layout)
// and returns its config and weights by HF name. External data is read from files beside
// the model. Errors name the file, tensor or node at fault.
func Import(path string, opts ImportOptions) (*engine.Config, map[string]engine.HostTensor, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("onnx: import: %w", err)
	}
	if opts.Config == nil {
		cj := filepath.Join(filepath.Dir(path), "config.json")
		if _, err := os.Stat(cj); err == nil {
			cfg, err := engine.LoadConfig(cj)
			if err != nil {
				return nil, nil, fmt.Errorf("onnx: import %s: %w", path, err)
			}
			opts.Config = cfg
		}
	}
	cfg, w, err := importBytes(data, filepath.Dir(path), opts)
	if err != nil {
		return nil, nil, fmt.Errorf("onnx: import %s: %w", path, err)
	}
	return cfg, w, nil
}

// ImportBytes is Import of a model held in memory. It cannot resolve external data (there is
// no directory to look in) nor a config.json beside the file.
func ImportBytes(data []byte, opts ImportOptions) (*engine.Config, map[string]engine.HostTensor, error) {
	cfg, w, err := importBytes(data, "", opts)
	if err != nil {
		return nil, nil, fmt.Errorf("onnx: import: %w", err)
	}
	return cfg, w, nil
}

func importBytes(data []byte, dir string, opts ImportOptions) (*engine.Config, map[string]engine.HostTensor, error) {
	if len(data) == 0 {
		return nil, nil, errors.New("empty file")
	}
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(data, &m); err != nil {
		return nil, nil, fmt.Errorf("not an ONNX model (protobuf: %w)", err)
	}
	// The parsed model is ours: drop each tensor's bytes once decoded, so the file's weights
	// are not held twice.
	return importModel(&m, dir, opts, true)
}

// ImportModel recovers config and weights from a parsed model; dir is the directory that
// external data locations are relative to ("" when there is none). m is not modified.
func ImportModel(m *onnxpb.ModelProto, dir string, opts ImportOptions) (*engine.Config, map[string]engine.HostTensor, error) {
	return importModel(m, dir, opts, false)
}

func importModel(m *onnxpb.ModelProto, dir string, opts ImportOptions, release bool) (*engine.Config, map[string]engine.HostTensor, error) {
	g := m.GetGraph()
	if g == nil || len(g.GetNode()) == 0 {
		return nil, nil, errors.New("not an ONNX model: no graph or an empty graph")
	}
	for _, op := range m.GetOpsetImport() {
		if d := op.GetDomain(); d != "" && d != "ai.onnx" {
			return nil, nil, fmt.Errorf("opset domain %q is not supported (standard ops only)", d)
		}
	}
	for i, n := range g.GetNode() {
		if d := n.GetDomain(); (d != "" && d != "ai.onnx") || !supportedOps[n.GetOpType()] {
			return nil, nil, fmt.Errorf("node %d %q: op %q (domain %q) is not supported", i, n.GetName(), n.GetOpType(), d)
		}
	}
	cfg := opts.Config
	if cfg == nil {
		for _, p := range m.GetMetadataProps() {
			if p.GetKey() == ConfigKey {
				c, err := engine.ParseConfig([]byte(p.GetValue()))
				if err != nil {
					return nil, nil, fmt.Errorf("metadata %s: %w", ConfigKey, err)
				}
				cfg = c
			}
		}
	}
	if cfg == nil {
		return nil, nil, fmt.Errorf("no config: the model has no %s metadata and no config.json beside it; pass ImportOptions.Config", ConfigKey)
	}
	if err := cfg.Validate(); err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}

	// Weights: initializers, and Constant nodes whose output carries a weight name.
	tensors := map[string]*onnxpb.TensorProto{}
	add := func(name string, t *onnxpb.TensorProto, what string) error {
		if _, dup := tensors[name]; dup {
			return fmt.Errorf("tensor %s: defined twice (%s)", name, what)
		}
		tensors[name] = t
		return nil
	}
	for _, t := range g.GetInitializer() {
		if err := add(t.GetName(), t, "initializer"); err != nil {
			return nil, nil, err
		}
	}
	for _, n := range g.GetNode() {
		if n.GetOpType() != "Constant" || len(n.GetOutput()) != 1 {
			continue
		}
		for _, a := range n.GetAttribute() {
			if a.GetName() == "value" && a.GetT() != nil && looksLikeWeight(n.GetOutput()[0]) {
				if err := add(n.GetOutput()[0], a.GetT(), "Constant node "+n.GetName()); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	// Each layer has at least 9 weights: a config asking for more layers than the graph can
	// hold is wrong (and must not make WeightNames list millions of names).
	if cfg.NumHiddenLayers > len(tensors)/9 {
		return nil, nil, fmt.Errorf("config field \"num_hidden_layers\" is %d but the graph holds only %d tensors", cfg.NumHiddenLayers, len(tensors))
	}
	names := engine.WeightNames(cfg)
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	sorted := make([]string, 0, len(tensors))
	for n := range tensors {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	for _, n := range sorted {
		if looksLikeWeight(n) && !want[n] && !strings.HasSuffix(n, "rotary_emb.inv_freq") {
			return nil, nil, fmt.Errorf("tensor %s: not a weight of a %s model with this config", n, cfg.ModelType)
		}
	}
	out := make(map[string]engine.HostTensor, len(names))
	for _, n := range names {
		t, ok := tensors[n]
		if !ok {
			return nil, nil, fmt.Errorf("tensor %s: missing from the graph", n)
		}
		shape, _ := engine.WeightShape(cfg, n)
		dims, _, err := TensorDims(t)
		if err != nil {
			return nil, nil, err
		}
		if !equalInts(dims, shape) {
			return nil, nil, fmt.Errorf("tensor %s: dims %v, config wants %v", n, dims, shape)
		}
		data, err := TensorFloat32(t, dir)
		if err != nil {
			return nil, nil, err
		}
		out[n] = engine.HostTensor{Shape: dims, Data: data}
		if release {
			t.RawData, t.FloatData, t.Int32Data, t.DoubleData = nil, nil, nil, nil
		}
	}
	return cfg, out, nil
}

// looksLikeWeight reports whether name is spelled like a Hugging Face weight name.
func looksLikeWeight(name string) bool {
	return strings.HasPrefix(name, "model.") || strings.HasPrefix(name, "lm_head.")
}
