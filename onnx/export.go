package onnx

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx/onnxpb"
	"google.golang.org/protobuf/proto"
)

// Opset is the ONNX operator set version of exported graphs.
const Opset = 17

// IRVersion is the ONNX IR version of exported files (ONNX 1.12 and later read it).
const IRVersion = 8

// ConfigKey is the metadata_props key under which Export stores the engine config as JSON.
const ConfigKey = "prolong.config"

// maxInlineBytes is the most weight data Export keeps inside the .onnx file: a protobuf
// message cannot exceed 2 GiB, so above this the weights go to an external data file.
// A variable only so that tests can lower it.
var maxInlineBytes int64 = 1<<31 - 64<<20

// dataAlign is the alignment of every tensor's offset in an external data file (a page, so
// readers can map tensors directly).
const dataAlign = 4096

// ExportOptions control how Export writes a model.
type ExportOptions struct {
	// ExternalData stores every weight in a side file (ONNX external data: location, offset
	// and length in each initializer) instead of inside the .onnx file. Export does this
	// anyway when the weights exceed what one protobuf message can hold (2 GiB).
	ExternalData bool
	// DataFile is the side file's name, relative to the model's directory. Empty means the
	// model's file name plus ".data" (model.onnx -> model.onnx.data).
	DataFile string
}

// Export writes the decoder described by cfg and weights (Hugging Face names, as
// engine.WeightNames lists them) to path as an ONNX model. The file, and the external data
// file when there is one, are written to temporary names, synced and renamed, so a crash never
// leaves a half-written file under the real name.
func Export(path string, cfg *engine.Config, weights map[string]engine.HostTensor, opts ExportOptions) error {
	names, err := checkWeights(cfg, weights)
	if err != nil {
		return fmt.Errorf("onnx: export %s: %w", path, err)
	}
	var total int64
	for _, n := range names {
		total += 4 * int64(len(weights[n].Data))
	}
	external := opts.ExternalData || total > maxInlineBytes
	m, err := buildModel(cfg)
	if err != nil {
		return fmt.Errorf("onnx: export %s: %w", path, err)
	}
	if !external {
		for _, n := range names {
			m.Graph.Initializer = append(m.Graph.Initializer, inlineTensor(n, weights[n]))
		}
	} else {
		loc := opts.DataFile
		if loc == "" {
			loc = filepath.Base(path) + ".data"
		}
		if err := checkLocation(loc); err != nil {
			return fmt.Errorf("onnx: export %s: data file: %w", path, err)
		}
		dataPath := filepath.Join(filepath.Dir(path), loc)
		err := checkpoints.WriteFileAtomic(dataPath, 0o644, func(w io.Writer) error {
			var off int64
			for _, n := range names {
				t := weights[n]
				if pad := (dataAlign - off%dataAlign) % dataAlign; pad > 0 {
					if _, err := w.Write(make([]byte, pad)); err != nil {
						return err
					}
					off += pad
				}
				length := 4 * int64(len(t.Data))
				if err := writeFloats(w, t.Data); err != nil {
					return fmt.Errorf("tensor %s: %w", n, err)
				}
				tp := &onnxpb.TensorProto{Name: proto.String(n), Dims: dims64(t.Shape),
					DataType:     proto.Int32(int32(onnxpb.TensorProto_FLOAT)),
					DataLocation: onnxpb.TensorProto_EXTERNAL.Enum(),
					ExternalData: []*onnxpb.StringStringEntryProto{
						{Key: proto.String("location"), Value: proto.String(loc)},
						{Key: proto.String("offset"), Value: proto.String(strconv.FormatInt(off, 10))},
						{Key: proto.String("length"), Value: proto.String(strconv.FormatInt(length, 10))},
					}}
				m.Graph.Initializer = append(m.Graph.Initializer, tp)
				off += length
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("onnx: export %s: %w", dataPath, err)
		}
	}
	data, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("onnx: export %s: marshal: %w", path, err)
	}
	if err := checkpoints.WriteFileAtomic(path, 0o644, func(w io.Writer) error { _, err := w.Write(data); return err }); err != nil {
		return fmt.Errorf("onnx: export %s: %w", path, err)
	}
	return nil
}

// Write writes the model with all weights inline to w (no external data; an error when the
// weights exceed the 2 GiB a protobuf message can hold: use Export for those).
func Write(w io.Writer, cfg *engine.Config, weights map[string]engine.HostTensor) error {
	m, err := Build(cfg, weights)
	if err != nil {
		return err
	}
	data, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("onnx: marshal: %w", err)
	}
	if _, err := w.Write(data); err != nil {
		return fmt.Errorf("onnx: write: %w", err)
	}
	return nil
}

// Build returns the ONNX model of the decoder with all weights inline as raw_data
// initializers.
func Build(cfg *engine.Config, weights map[string]engine.HostTensor) (*onnxpb.ModelProto, error) {
	names, err := checkWeights(cfg, weights)
	if err != nil {
		return nil, fmt.Errorf("onnx: export: %w", err)
	}
	var total int64
	for _, n := range names {
		total += 4 * int64(len(weights[n].Data))
	}
	if total > maxInlineBytes {
		return nil, fmt.Errorf("onnx: export: %d bytes of weights do not fit in one protobuf message; use Export with external data", total)
	}
	m, err := buildModel(cfg)
	if err != nil {
		return nil, fmt.Errorf("onnx: export: %w", err)
	}
	for _, n := range names {
		m.Graph.Initializer = append(m.Graph.Initializer, inlineTensor(n, weights[n]))
	}
	return m, nil
}

// checkWeights validates cfg and checks that weights holds exactly the weights of cfg with the
// right shapes; it returns their names in engine.WeightNames order.
func checkWeights(cfg *engine.Config, weights map[string]engine.HostTensor) ([]string, error) {
	if cfg == nil {
		return nil, errors.New("nil config")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	tbl := engine.NewWeightTable(cfg)
	for _, s := range tbl.Specs {
		t, ok := weights[s.Name]
		if !ok {
			return nil, fmt.Errorf("tensor %s: missing", s.Name)
		}
		if !slices.Equal(s.Shape, t.Shape) {
			return nil, fmt.Errorf("tensor %s: shape %v, config wants %v", s.Name, t.Shape, s.Shape)
		}
		if len(t.Data) != engine.NumElements(s.Shape) {
			return nil, fmt.Errorf("tensor %s: %d values for shape %v", s.Name, len(t.Data), s.Shape)
		}
	}
	for n := range weights {
		if !tbl.Has(n) && !strings.HasSuffix(n, "rotary_emb.inv_freq") {
			return nil, fmt.Errorf("tensor %s: not a weight of a %s model with this config", n, cfg.ModelType)
		}
	}
	names := tbl.Names()
	return names, nil
}

func inlineTensor(name string, t engine.HostTensor) *onnxpb.TensorProto {
	return &onnxpb.TensorProto{Name: proto.String(name), Dims: dims64(t.Shape),
		DataType: proto.Int32(int32(onnxpb.TensorProto_FLOAT)), RawData: float32Bytes(t.Data)}
}

// buildModel makes the model proto (graph, opset, metadata) without initializers.
func buildModel(cfg *engine.Config) (*onnxpb.ModelProto, error) {
	cj, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return &onnxpb.ModelProto{
		IrVersion:    proto.Int64(IRVersion),
		OpsetImport:  []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(Opset)}},
		ProducerName: proto.String("prolong"),
		Graph:        decoderGraph(cfg),
		MetadataProps: []*onnxpb.StringStringEntryProto{
			{Key: proto.String(ConfigKey), Value: proto.String(string(cj))},
		},
	}, nil
}

// decoderGraph builds the nodes, inputs and outputs of the decoder (no initializers).
func decoderGraph(c *engine.Config) *onnxpb.GraphProto {
	b := newBuilder("prolong_" + c.ModelType)
	graphIO(b.g, c)
	heads, kvHeads, hd := c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim
	s := "/model"
	bs := b.op(s, "Shape", []string{"input_ids"}) // [2] = (B, S)
	lg := &layerGraph{b: b, c: c, tbl: engine.NewWeightTable(c)}
	lg.shapeQ = b.op(s, "Concat", []string{bs, b.ints(s, int64(heads), int64(hd))}, attrInt("axis", 0))
	lg.shapeKV = b.op(s, "Concat", []string{bs, b.ints(s, int64(kvHeads), int64(hd))}, attrInt("axis", 0))
	shapeLogits := b.op(s, "Concat", []string{bs, b.ints(s, int64(c.VocabSize))}, attrInt("axis", 0))

	// Embedding: the residual stream x is [N, D] with N = B*S rows, batch-major.
	e := "/model/embed_tokens"
	ids := b.op(e, "Reshape", []string{"input_ids", b.ints(e, -1)})               // [N]
	x := b.op(e, "Gather", []string{engine.EmbedWeight, ids}, attrInt("axis", 0)) // [N, D]
	lg.cos, lg.sin = ropeTables(b, c)
	lg.allowed = attentionMask(b, bs)
	lg.masked = b.floats("/model/attn_mask", nil, -math.MaxFloat32)
	lg.scale = b.floats("/model/attn_mask", nil, float32(1/math.Sqrt(float64(hd))))
	for i := 0; i < c.NumHiddenLayers; i++ {
		x = lg.layer(i, x)
	}
	x = rmsNorm(b, "/model/norm", x, engine.NormWeight, float32(c.RMSNormEps))
	logits := linear(b, "/lm_head", x, engine.HeadWeight(c), "") // [N, V]
	b.g.Node = append(b.g.Node, &onnxpb.NodeProto{Name: proto.String("/lm_head/Reshape"),
		OpType: proto.String("Reshape"), Input: []string{logits, shapeLogits}, Output: []string{"logits"}})
	return b.g
}

// graphIO declares the graph's inputs and outputs (see the package comment).
func graphIO(g *onnxpb.GraphProto, c *engine.Config) {
	const (
		f32 = onnxpb.TensorProto_FLOAT
		i64 = onnxpb.TensorProto_INT64
	)
	g.Input = append(g.Input,
		valueInfo("input_ids", i64, "batch_size", "sequence_length"),
		valueInfo("attention_mask", i64, "batch_size", "total_sequence_length"),
		valueInfo("position_ids", i64, "batch_size", "sequence_length"))
	g.Output = append(g.Output, valueInfo("logits", f32, "batch_size", "sequence_length", c.VocabSize))
	for i := 0; i < c.NumHiddenLayers; i++ {
		for _, kv := range []string{"key", "value"} {
			g.Input = append(g.Input, valueInfo(fmt.Sprintf("past_key_values.%d.%s", i, kv), f32,
				"batch_size", c.NumKeyValueHeads, "past_sequence_length", c.HeadDim))
			g.Output = append(g.Output, valueInfo(fmt.Sprintf("present.%d.%s", i, kv), f32,
				"batch_size", c.NumKeyValueHeads, "total_sequence_length", c.HeadDim))
		}
	}
}

// ropeTables computes the RoPE tables cos, sin [B, 1, S, Dh] from position_ids:
// angle[b,s,j] = pos[b,s] * inv_freq[j], j < Dh/2, and the rotate-half layout repeats the Dh/2
// angles twice.
func ropeTables(b *builder, c *engine.Config) (cos, sin string) {
	r := "/model/rotary_emb"
	inv64 := c.InvFreq()
	inv := make([]float32, len(inv64))
	for i, v := range inv64 {
		inv[i] = float32(v)
	}
	pos := b.op(r, "Cast", []string{"position_ids"}, attrInt("to", int64(onnxpb.TensorProto_FLOAT))) // [B, S]
	pos = b.op(r, "Unsqueeze", []string{pos, b.ints(r, 2)})                                          // [B, S, 1]
	freqs := b.op(r, "Mul", []string{pos, b.floats(r, []int64{int64(len(inv))}, inv...)})            // [B, S, Dh/2]
	emb := b.op(r, "Concat", []string{freqs, freqs}, attrInt("axis", -1))                            // [B, S, Dh]
	cosE, sinE := b.op(r, "Cos", []string{emb}), b.op(r, "Sin", []string{emb})                       // [B, S, Dh]
	if a := c.RopeAttentionFactor(); a != 1 {                                                        // yarn scales the tables (no node otherwise)
		f := b.floats(r, nil, float32(a))
		cosE, sinE = b.op(r, "Mul", []string{cosE, f}), b.op(r, "Mul", []string{sinE, f})
	}
	cos = b.op(r, "Unsqueeze", []string{cosE, b.ints(r, 1)}) // [B, 1, S, Dh]
	sin = b.op(r, "Unsqueeze", []string{sinE, b.ints(r, 1)}) // [B, 1, S, Dh]
	return cos, sin
}

// attentionMask returns allowed [B, 1, 1, S, T] (broadcast over kv heads and groups): query i
// (absolute position P+i) sees key j when j <= P+i and attention_mask[b, j] is 1. bs is the
// shape (B, S) of input_ids.
func attentionMask(b *builder, bs string) string {
	mk := "/model/attn_mask"
	zero, one := b.scalarInt(mk, 0), b.scalarInt(mk, 1)
	total := b.op(mk, "Gather", []string{b.op(mk, "Shape", []string{"attention_mask"}), one}, attrInt("axis", 0)) // T
	seq := b.op(mk, "Gather", []string{bs, one}, attrInt("axis", 0))                                              // S
	past := b.op(mk, "Sub", []string{total, seq})                                                                 // P
	kpos := b.op(mk, "Unsqueeze", []string{b.op(mk, "Range", []string{zero, total, one}), b.ints(mk, 0)})         // [1, T]
	qpos := b.op(mk, "Unsqueeze", []string{b.op(mk, "Range", []string{past, total, one}), b.ints(mk, 1)})         // [S, 1]
	causal := b.op(mk, "LessOrEqual", []string{kpos, qpos})                                                       // [S, T]
	pad := b.op(mk, "Cast", []string{"attention_mask"}, attrInt("to", int64(onnxpb.TensorProto_BOOL)))            // [B, T]
	pad = b.op(mk, "Unsqueeze", []string{pad, b.ints(mk, 1, 2, 3)})                                               // [B, 1, 1, 1, T]
	return b.op(mk, "And", []string{causal, pad})                                                                 // [B, 1, 1, S, T]
}

// layerGraph builds the decoder layers into the graph, the same layer as the engine's (see
// engine/layer.go), with weights named by the engine's weight table.
type layerGraph struct {
	b       *builder
	c       *engine.Config
	tbl     *engine.WeightTable
	shapeQ  string // [4] = (B, S, H, Dh)
	shapeKV string // [4] = (B, S, KV, Dh)
	cos     string // [B, 1, S, Dh]
	sin     string // [B, 1, S, Dh]
	allowed string // [B, 1, 1, S, T] attention mask
	masked  string // scalar score of masked keys
	scale   string // scalar 1/sqrt(Dh)
}

// layer adds decoder layer i on the residual stream x [N, D] and returns its output [N, D].
func (l *layerGraph) layer(i int, x string) string {
	b, eps := l.b, float32(l.c.RMSNormEps)
	p := fmt.Sprintf("/model/layers.%d", i)
	w := func(suffix string) string { return engine.LayerWeight(i, suffix) }
	opt := func(suffix string) string { // "" when the config has no such weight
		if l.tbl.Has(w(suffix)) {
			return w(suffix)
		}
		return ""
	}
	a := p + "/self_attn"
	h := rmsNorm(b, p+"/input_layernorm", x, w(engine.InputNormWeight), eps)
	q := linear(b, a+"/q_proj", h, w(engine.QProjWeight), opt(engine.QProjBias)) // [N, H*Dh]
	k := linear(b, a+"/k_proj", h, w(engine.KProjWeight), opt(engine.KProjBias)) // [N, KV*Dh]
	v := linear(b, a+"/v_proj", h, w(engine.VProjWeight), opt(engine.VProjBias)) // [N, KV*Dh]
	q = b.op(a, "Reshape", []string{q, l.shapeQ})                                // [B, S, H, Dh]
	k = b.op(a, "Reshape", []string{k, l.shapeKV})                               // [B, S, KV, Dh]
	v = b.op(a, "Reshape", []string{v, l.shapeKV})                               // [B, S, KV, Dh]
	if qn := opt(engine.QNormWeight); qn != "" {
		q = rmsNorm(b, a+"/q_norm", q, qn, eps)
		k = rmsNorm(b, a+"/k_norm", k, w(engine.KNormWeight), eps)
	}
	o := l.attention(a, i, q, k, v)                          // [N, H*Dh]
	o = linear(b, a+"/o_proj", o, w(engine.OProjWeight), "") // [N, D]
	x = b.op(p, "Add", []string{x, o})

	m := p + "/mlp"
	h = rmsNorm(b, p+"/post_attention_layernorm", x, w(engine.PostNormWeight), eps)
	gate := linear(b, m+"/gate_proj", h, w(engine.GateProjWeight), "") // [N, I]
	up := linear(b, m+"/up_proj", h, w(engine.UpProjWeight), "")       // [N, I]
	act := b.op(m+"/act_fn", "Mul", []string{gate, b.op(m+"/act_fn", "Sigmoid", []string{gate})})
	act = b.op(m, "Mul", []string{act, up})
	return b.op(p, "Add", []string{x, linear(b, m+"/down_proj", act, w(engine.DownProjWeight), "")})
}

// attention applies RoPE to q [B, S, H, Dh] and k [B, S, KV, Dh], appends k and v to layer
// i's past (the present outputs) and returns the attention output [N, H*Dh].
func (l *layerGraph) attention(a string, i int, q, k, v string) string {
	b, heads, kvHeads, hd := l.b, l.c.NumAttentionHeads, l.c.NumKeyValueHeads, l.c.HeadDim
	perm := attrInts("perm", 0, 2, 1, 3)
	q = l.rope(a+"/rotary_q", b.op(a, "Transpose", []string{q}, perm)) // [B, H, S, Dh]
	k = l.rope(a+"/rotary_k", b.op(a, "Transpose", []string{k}, perm)) // [B, KV, S, Dh]
	v = b.op(a, "Transpose", []string{v}, perm)                        // [B, KV, S, Dh]
	presentK := fmt.Sprintf("present.%d.key", i)
	presentV := fmt.Sprintf("present.%d.value", i)
	b.g.Node = append(b.g.Node,
		&onnxpb.NodeProto{Name: proto.String(a + "/present_key/Concat"), OpType: proto.String("Concat"),
			Input: []string{fmt.Sprintf("past_key_values.%d.key", i), k}, Output: []string{presentK},
			Attribute: []*onnxpb.AttributeProto{attrInt("axis", 2)}}, // [B, KV, T, Dh]
		&onnxpb.NodeProto{Name: proto.String(a + "/present_value/Concat"), OpType: proto.String("Concat"),
			Input: []string{fmt.Sprintf("past_key_values.%d.value", i), v}, Output: []string{presentV},
			Attribute: []*onnxpb.AttributeProto{attrInt("axis", 2)}})
	// Grouped-query attention without copying k/v: heads split as [KV, G] (head h uses
	// kv head h/G), and k/v get a broadcast axis for G.
	q5 := b.op(a, "Reshape", []string{q, b.ints(a, 0, int64(kvHeads), int64(heads/kvHeads), -1, int64(hd))}) // [B, KV, G, S, Dh]
	k5 := b.op(a, "Unsqueeze", []string{presentK, b.ints(a, 2)})                                             // [B, KV, 1, T, Dh]
	v5 := b.op(a, "Unsqueeze", []string{presentV, b.ints(a, 2)})                                             // [B, KV, 1, T, Dh]
	kT := b.op(a, "Transpose", []string{k5}, attrInts("perm", 0, 1, 2, 4, 3))                                // [B, KV, 1, Dh, T]
	sc := b.op(a, "Mul", []string{b.op(a, "MatMul", []string{q5, kT}), l.scale})                             // [B, KV, G, S, T]
	sc = b.op(a, "Where", []string{l.allowed, sc, l.masked})
	pr := b.op(a, "Softmax", []string{sc}, attrInt("axis", -1))
	o := b.op(a, "MatMul", []string{pr, v5})                                       // [B, KV, G, S, Dh]
	o = b.op(a, "Reshape", []string{o, b.ints(a, 0, int64(heads), -1, int64(hd))}) // [B, H, S, Dh]
	o = b.op(a, "Transpose", []string{o}, perm)                                    // [B, S, H, Dh]
	return b.op(a, "Reshape", []string{o, b.ints(a, -1, int64(heads*hd))})         // [N, H*Dh]
}

// rope rotates t [B, heads, S, Dh] by the RoPE tables (rotate-half convention).
func (l *layerGraph) rope(scope, t string) string {
	b, hd := l.b, int64(l.c.HeadDim)
	half := hd / 2
	x1 := b.op(scope, "Slice", []string{t, b.ints(scope, 0), b.ints(scope, half), b.ints(scope, -1)})
	x2 := b.op(scope, "Slice", []string{t, b.ints(scope, half), b.ints(scope, hd), b.ints(scope, -1)})
	rot := b.op(scope, "Concat", []string{b.op(scope, "Neg", []string{x2}), x1}, attrInt("axis", -1))
	return b.op(scope, "Add", []string{b.op(scope, "Mul", []string{t, l.cos}), b.op(scope, "Mul", []string{rot, l.sin})})
}

// linear is y = x W^T (+ bias) as Gemm(transB=1); x [N, in], W [out, in] (HF layout).
func linear(b *builder, scope, x, weight, bias string) string {
	in := []string{x, weight}
	if bias != "" {
		in = append(in, bias)
	}
	return b.op(scope, "Gemm", in, attrInt("transB", 1))
}

// rmsNorm is x / sqrt(mean(x^2, last axis) + eps) * weight, as HF's LlamaRMSNorm.
func rmsNorm(b *builder, scope, x, weight string, eps float32) string {
	ms := b.op(scope, "ReduceMean", []string{b.op(scope, "Mul", []string{x, x})},
		attrInts("axes", -1), attrInt("keepdims", 1))
	ms = b.op(scope, "Add", []string{ms, b.floats(scope, nil, eps)})
	r := b.op(scope, "Reciprocal", []string{b.op(scope, "Sqrt", []string{ms})})
	return b.op(scope, "Mul", []string{b.op(scope, "Mul", []string{x, r}), weight})
}

// writeFloats writes v little-endian in chunks (no copy of the whole tensor).
func writeFloats(w io.Writer, v []float32) error {
	var buf [4096]byte
	for len(v) > 0 {
		n := min(len(v), len(buf)/4)
		for i := 0; i < n; i++ {
			binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v[i]))
		}
		if _, err := w.Write(buf[:4*n]); err != nil {
			return err
		}
		v = v[n:]
	}
	return nil
}

// checkLocation rejects external-data locations that leave the model's directory.
func checkLocation(loc string) error {
	if loc == "" || filepath.IsAbs(loc) || strings.HasPrefix(loc, "/") {
		return fmt.Errorf("location %q must be a relative path", loc)
	}
	for _, part := range strings.FieldsFunc(loc, func(r rune) bool { return r == '/' || r == '\\' }) {
		if part == ".." {
			return fmt.Errorf("location %q leaves the model's directory", loc)
		}
	}
	return nil
}

func dims64(s []int) []int64 {
	out := make([]int64, len(s))
	for i, d := range s {
		out[i] = int64(d)
	}
	return out
}
