package onnx

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx/onnxpb"
	"google.golang.org/protobuf/proto"
)

// ImportOptions control Import.
type ImportOptions struct {
	// Config, when set, is the model's configuration. Otherwise Import reads config.json
	// beside the model file, failing that the config Export stored in the model's metadata
	// (key ConfigKey), and failing that infers it from the graph.
	Config *engine.Config
	// Hints fills, when the config is inferred from the graph, the fields a graph may not tell
	// (max_position_embeddings when there is no cos/sin cache, a llama3 rope_scaling, token
	// ids). Its zero fields are ignored; a non-zero field the graph also tells must agree.
	Hints *engine.Config
}

// Standard ONNX ops that decoder exports use (torch.onnx.export, optimum, onnxruntime-genai,
// Export). Import refuses graphs with other ops, naming the node: they would compute
// something the engine's fixed decoder does not (another activation or norm, quantized
// weights, control flow).
var supportedOps = map[string]bool{
	"Abs": true, "Add": true, "And": true, "ArgMax": true, "Cast": true, "CastLike": true,
	"Concat": true, "Constant": true, "ConstantOfShape": true, "Cos": true, "CumSum": true,
	"Div": true, "Equal": true, "Expand": true, "Flatten": true, "Gather": true,
	"GatherElements": true, "GatherND": true, "Gemm": true, "Greater": true,
	"GreaterOrEqual": true, "Identity": true, "IsInf": true, "IsNaN": true, "Less": true,
	"LessOrEqual": true, "MatMul": true, "Max": true, "Min": true, "Mod": true, "Mul": true,
	"Neg": true, "Not": true, "Or": true, "Pow": true, "Range": true, "Reciprocal": true,
	"ReduceMax": true, "ReduceMean": true, "ReduceSum": true, "Reshape": true, "ScatterND": true,
	"Shape": true, "Sigmoid": true, "Sin": true, "Size": true, "Slice": true, "Softmax": true,
	"Split": true, "Sqrt": true, "Squeeze": true, "Sub": true, "Tile": true, "Transpose": true,
	"Trilu": true, "Unsqueeze": true, "Where": true, "Xor": true,
	// ONNX Runtime registers this one in the ONNX domain; onnxruntime-genai uses it.
	"SimplifiedLayerNormalization": true,
}

// contribOps are the com.microsoft ops of onnxruntime-genai's decoder graphs (float weights).
var contribOps = map[string]bool{
	"GroupQueryAttention": true, "RotaryEmbedding": true, "SkipSimplifiedLayerNormalization": true,
	"SimplifiedLayerNormalization": true,
}

// whyNot explains some refused ops.
var whyNot = map[string]string{
	"MatMulNBits": "quantized weights are not supported", "DequantizeLinear": "quantized weights are not supported",
	"QuantizeLinear": "quantized weights are not supported", "MatMulInteger": "quantized weights are not supported",
	"GatherBlockQuantized": "quantized weights are not supported", "DynamicQuantizeMatMul": "quantized weights are not supported",
	"Gelu": "only SiLU MLPs are supported", "FastGelu": "only SiLU MLPs are supported", "Erf": "only SiLU MLPs are supported",
	"Tanh": "only SiLU MLPs are supported", "Relu": "only SiLU MLPs are supported",
	"LayerNormalization": "only RMSNorm is supported", "SkipLayerNormalization": "only RMSNorm is supported",
	"Loop": "control flow is not supported", "If": "control flow is not supported", "Scan": "control flow is not supported",
}

// Import reads an ONNX decoder (Llama, Qwen2 or Qwen3 family) and returns its config and its
// weights under Hugging Face names, in HF layout ([out, in] for linear layers). It reads
//
//   - files written by Export (config in the metadata);
//   - Hugging Face optimum / torch.onnx.export files, with or without past_key_values:
//     weights are found by their names when they have HF names, else through the graph: an
//     anonymous initializer (onnx::MatMul_123, stored transposed [in, out]) is named after
//     the module scope of the node that uses it (/model/layers.3/self_attn/q_proj/MatMul),
//     or, when nodes carry no scopes, by its place in the data flow;
//   - onnxruntime-genai builder files (model.layers.N.attn.qkv_proj.MatMul.weight, fused or
//     split, GroupQueryAttention and SimplifiedLayerNormalization ops).
//
// The config comes from opts.Config, else config.json beside the model, else the model's
// metadata, else the graph itself (see ImportOptions.Hints); a given config is checked against
// what the graph says. External data is read from files beside the model, one tensor at a
// time; the model file is mapped, not read, where the OS allows. The files the model names
// (external data, config.json) must be regular files inside its directory, or, for a snapshot
// of the Hugging Face cache, inside its repository folder (checkpoints.OpenModelFile): a
// symlink out of the directory is an error, as is a named pipe. Errors name the file,
// tensor, node or config field at fault.
func Import(path string, opts ImportOptions) (*engine.Config, map[string]engine.HostTensor, error) {
	if opts.Config == nil {
		b, err := checkpoints.ReadModelFile(filepath.Dir(path), "config.json")
		if err == nil {
			opts.Config, err = engine.ParseConfig(b)
			if err != nil {
				err = fmt.Errorf("%s: %w", filepath.Join(filepath.Dir(path), "config.json"), err)
			}
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("onnx: import %s: %w", path, err)
		}
	}
	data, release, err := mapFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("onnx: import: %w", err)
	}
	m, err := parseModel(data)
	release()
	if err != nil {
		return nil, nil, fmt.Errorf("onnx: import %s: %w", path, err)
	}
	cfg, w, err := importModel(m, filepath.Dir(path), opts, true)
	if err != nil {
		return nil, nil, fmt.Errorf("onnx: import %s: %w", path, err)
	}
	return cfg, w, nil
}

// ImportBytes is Import of a model held in memory. It cannot resolve external data (there is
// no directory to look in) nor a config.json beside the file.
func ImportBytes(data []byte, opts ImportOptions) (*engine.Config, map[string]engine.HostTensor, error) {
	m, err := parseModel(data)
	if err != nil {
		return nil, nil, fmt.Errorf("onnx: import: %w", err)
	}
	cfg, w, err := importModel(m, "", opts, true)
	if err != nil {
		return nil, nil, fmt.Errorf("onnx: import: %w", err)
	}
	return cfg, w, nil
}

// parseModel unmarshals an ONNX model (the bytes are copied: data may be released after).
func parseModel(data []byte) (*onnxpb.ModelProto, error) {
	if len(data) == 0 {
		return nil, errors.New("empty file")
	}
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("not an ONNX model (protobuf: %w)", err)
	}
	if m.GetGraph() == nil || len(m.GetGraph().GetNode()) == 0 {
		return nil, errors.New("not an ONNX model: no graph or an empty graph")
	}
	return &m, nil
}

// ImportModel recovers config and weights from a parsed model; dir is the directory that
// external data locations are relative to ("" when there is none). m is not modified.
func ImportModel(m *onnxpb.ModelProto, dir string, opts ImportOptions) (*engine.Config, map[string]engine.HostTensor, error) {
	return importModel(m, dir, opts, false)
}

// importModel is ImportModel; with release it drops each tensor's bytes from m once decoded,
// so the proto and the weights are not both held in full.
func importModel(m *onnxpb.ModelProto, dir string, opts ImportOptions, release bool) (*engine.Config, map[string]engine.HostTensor, error) {
	g := m.GetGraph()
	if g == nil || len(g.GetNode()) == 0 {
		return nil, nil, errors.New("not an ONNX model: no graph or an empty graph")
	}
	for _, op := range m.GetOpsetImport() {
		if d := op.GetDomain(); d != "" && d != "ai.onnx" && d != "com.microsoft" && d != "ai.onnx.ml" {
			return nil, nil, fmt.Errorf("opset domain %q is not supported (standard ops only)", d)
		}
	}
	for i, n := range g.GetNode() {
		d, op := n.GetDomain(), n.GetOpType()
		ok := ((d == "" || d == "ai.onnx") && supportedOps[op]) || (d == "com.microsoft" && contribOps[op])
		if !ok {
			why := whyNot[op]
			if why == "" {
				why = "not an op of the decoders the engine runs"
			}
			return nil, nil, fmt.Errorf("node %d %q: op %q (domain %q) is not supported: %s", i, n.GetName(), op, d, why)
		}
	}
	gi := newGraphIndex(g)
	placed, unnamed, err := placeWeights(gi)
	if err != nil {
		return nil, nil, err
	}
	if err := placeByDataFlow(gi, placed, unnamed); err != nil {
		return nil, nil, err
	}
	facts := collectFacts(m, gi, placed)
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
		c, err := inferConfig(gi, placed, facts, opts.Hints, dir)
		if err != nil {
			return nil, nil, err
		}
		if err := checkFacts(c, facts); err != nil {
			return nil, nil, fmt.Errorf("inferred config (with hints) disagrees with the graph: %w", err)
		}
		cfg = c
	} else {
		if err := cfg.Validate(); err != nil {
			return nil, nil, fmt.Errorf("config: %w", err)
		}
		if err := checkFacts(cfg, facts); err != nil {
			return nil, nil, fmt.Errorf("config disagrees with the graph: %w", err)
		}
	}

	// Each layer has at least 9 weights: a config asking for more layers than the graph can
	// hold is wrong (and must not make WeightNames list millions of names).
	if cfg.NumHiddenLayers > len(placed)/9 {
		return nil, nil, fmt.Errorf("config field \"num_hidden_layers\" is %d but the graph holds only %d weights", cfg.NumHiddenLayers, len(placed))
	}
	want := map[string]bool{}
	for _, n := range engine.WeightNames(cfg) {
		want[n] = true
	}
	extra := make([]string, 0)
	for n := range placed {
		if !want[n] {
			extra = append(extra, n)
		}
	}
	sort.Strings(extra)
	for _, n := range extra {
		if n == engine.LMHeadWeight && cfg.TieWordEmbeddings {
			if err := sameAsEmbedding(gi, placed, dir); err != nil {
				return nil, nil, err
			}
			continue
		}
		return nil, nil, fmt.Errorf("tensor %s (%s): not a weight of a %s model with this config", n, placed[n].src, cfg.ModelType)
	}
	w, err := materialize(gi, cfg, placed, dir, release)
	if err != nil {
		return nil, nil, err
	}
	return cfg, w, nil
}

// sameAsEmbedding checks that a separate lm_head tensor of a tied model holds the embedding.
func sameAsEmbedding(gi *graphIndex, placed map[string]placement, dir string) error {
	lm, emb := placed[engine.LMHeadWeight], placed[engine.EmbedWeight]
	if lm.src == emb.src {
		return nil
	}
	// Untied models differ almost everywhere: look at a few elements before decoding both.
	if d := hfDims(gi, emb); len(d) == 2 && slices.Equal(d, hfDims(gi, lm)) {
		for k := 0; k < 64; k++ {
			r, c := (k*7919)%d[0], (k*104729)%d[1]
			a, okA := peekHF(gi.consts[lm.src], lm.transpose, r, c)
			b, okB := peekHF(gi.consts[emb.src], emb.transpose, r, c)
			if okA && okB && math.Float32bits(a) != math.Float32bits(b) {
				return fmt.Errorf("tensor lm_head.weight (%s): differs from model.embed_tokens.weight at [%d, %d], but the config ties them", lm.src, r, c)
			}
		}
	}
	a, err := decodeHF(gi.consts[lm.src], lm.transpose, dir)
	if err != nil {
		return err
	}
	b, err := decodeHF(gi.consts[emb.src], emb.transpose, dir)
	if err != nil {
		return err
	}
	if !slices.Equal(a.Shape, b.Shape) {
		return fmt.Errorf("tensor lm_head.weight (%s): shape %v, but the config ties it to model.embed_tokens.weight %v", lm.src, a.Shape, b.Shape)
	}
	for i := range a.Data {
		if math.Float32bits(a.Data[i]) != math.Float32bits(b.Data[i]) {
			return fmt.Errorf("tensor lm_head.weight (%s): differs from model.embed_tokens.weight at %d, but the config ties them", lm.src, i)
		}
	}
	return nil
}
