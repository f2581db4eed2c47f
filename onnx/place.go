package onnx

import (
	"encoding/binary"
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strings"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx/onnxpb"
)

// A placement says where one Hugging Face weight is in a graph: which constant holds it, whether
// it is stored transposed ([in, out], the MatMul layout) and, for fused tensors such as
// onnxruntime-genai's qkv_proj, which rows of the fused HF-layout tensor are its own.
type placement struct {
	src       string // constant (initializer or Constant node output) holding the data
	transpose bool   // stored [in, out]: transpose to HF [out, in]
	fused     string // HF name of the fused module ("...self_attn.qkv_proj"), "" when not fused
	part      int    // index of this weight in the fused tensor (q, k, v or gate, up)
	how       string // how it was found, for error messages
}

// hfParam matches a Hugging Face parameter name of the decoders the engine runs, with the
// module spelled as onnxruntime-genai spells some of them (attn for self_attn, fused qkv_proj).
var hfParam = regexp.MustCompile(`^(model\.embed_tokens|model\.norm|lm_head|model\.layers\.\d+\.(input_layernorm|post_attention_layernorm|self_attn\.(q_proj|k_proj|v_proj|o_proj|qkv_proj|q_norm|k_norm)|mlp\.(gate_proj|up_proj|down_proj|gate_up_proj)))\.(weight|bias)$`)

// fusedParts lists the HF modules a fused module holds, in order.
var fusedParts = map[string][]string{
	"qkv_proj":     {"q_proj", "k_proj", "v_proj"},
	"gate_up_proj": {"gate_proj", "up_proj"},
}

// canonicalModule turns a module path as exporters write it into the HF one: a scope such as
// "/model/layers.3/self_attn/q_proj" or "layers.3.attn.qkv_proj" becomes
// "model.layers.3.self_attn.q_proj" (or "model.layers.3.self_attn.qkv_proj"). It returns ""
// when path names no module of a decoder.
func canonicalModule(path string) string {
	path = strings.Trim(strings.ReplaceAll(path, "/", "."), ".")
	parts := strings.Split(path, ".")
	for len(parts) > 0 && (parts[0] == "model" || parts[0] == "") {
		parts = parts[1:]
	}
	if len(parts) == 0 {
		return ""
	}
	for i, p := range parts {
		if p == "attn" {
			parts[i] = "self_attn"
		}
	}
	if parts[0] == "lm_head" {
		return strings.Join(parts, ".")
	}
	return "model." + strings.Join(parts, ".")
}

// paramFromName reads a weight name off a tensor name: an HF name
// ("model.layers.0.self_attn.q_proj.weight"), or onnxruntime-genai's
// ("model.layers.0.attn.qkv_proj.MatMul.weight", "lm_head.MatMul.weight",
// "model.layers.0.attn.q_proj.Add.bias"). It returns "" for other names.
func paramFromName(name string) string {
	for _, op := range []string{".MatMul.", ".Gemm.", ".Add.", ".Mul."} {
		name = strings.Replace(name, op, ".", 1)
	}
	i := strings.LastIndexByte(name, '.')
	if i < 0 {
		return ""
	}
	mod := canonicalModule(name[:i])
	if mod == "" || !hfParam.MatchString(mod+name[i:]) {
		return ""
	}
	return mod + name[i:]
}

// scopeOf returns the module scope of a node from its name or, failing that, from its first
// output's name ("/model/layers.0/self_attn/q_proj/MatMul" -> "model.layers.0.self_attn.q_proj").
func scopeOf(n *onnxpb.NodeProto) string {
	cands := []string{n.GetName()}
	cands = append(cands, n.GetOutput()...)
	for _, c := range cands {
		if !strings.HasPrefix(c, "/") {
			continue
		}
		i := strings.LastIndexByte(c, '/')
		if i <= 0 {
			continue
		}
		if m := canonicalModule(c[:i]); m != "" {
			return m
		}
	}
	return ""
}

// role is what a constant does where the graph uses it.
type role int

const (
	roleNone   role = iota
	roleLinear      // right operand of MatMul / Gemm: a linear layer's weight
	roleEmbed       // data of a Gather: an embedding table
	roleScale       // a 1-D factor of Mul or of an RMSNorm op: a norm weight
	roleBias        // a 1-D term of Add: a bias
)

func (r role) param() string {
	if r == roleBias {
		return "bias"
	}
	return "weight"
}

// useOf follows constant c through Identity, Cast and 2-D Transpose nodes to the node that
// uses it as a weight. It returns the role, that node, and whether the stored tensor must be
// transposed to the HF layout.
func (gi *graphIndex) useOf(c string) (role, *onnxpb.NodeProto, bool) {
	rank := len(gi.consts[c].GetDims())
	for _, u := range gi.users[c] {
		if r, n, tr := gi.followUse(u, rank); r != roleNone {
			return r, n, tr
		}
	}
	return roleNone, nil, false
}

func (gi *graphIndex) followUse(u use, rank int) (role, *onnxpb.NodeProto, bool) {
	flip := false
	for hop := 0; hop < 4; hop++ {
		n := u.node
		switch n.GetOpType() {
		case "Identity", "Cast", "Transpose":
			if n.GetOpType() == "Transpose" {
				p := attr(n, "perm")
				if rank != 2 || (p != nil && !(len(p.GetInts()) == 2 && p.GetInts()[0] == 1 && p.GetInts()[1] == 0)) {
					return roleNone, nil, false
				}
				flip = !flip
			}
			if len(n.GetOutput()) == 0 || len(gi.users[n.GetOutput()[0]]) == 0 {
				return roleNone, nil, false
			}
			u = gi.users[n.GetOutput()[0]][0]
			continue
		case "MatMul":
			if u.idx == 1 && rank == 2 {
				return roleLinear, n, !flip
			}
		case "Gemm":
			if u.idx == 1 && rank == 2 {
				return roleLinear, n, (attrIntOr(n, "transB", 0) != 0) == flip
			}
			if u.idx == 2 && rank == 1 {
				return roleBias, n, false
			}
		case "Gather":
			if u.idx == 0 && rank == 2 {
				return roleEmbed, n, flip
			}
		case "Mul":
			if rank == 1 {
				return roleScale, n, false
			}
		case "SimplifiedLayerNormalization":
			if u.idx == 1 && rank == 1 {
				return roleScale, n, false
			}
		case "SkipSimplifiedLayerNormalization":
			if u.idx == 2 && rank == 1 {
				return roleScale, n, false
			}
		case "Add":
			if rank == 1 {
				return roleBias, n, false
			}
		}
		return roleNone, nil, false
	}
	return roleNone, nil, false
}

// placeWeights finds every weight in the graph by name: the tensor's own name when it is an HF
// or onnxruntime-genai weight name, else the module scope of the node that uses it. Constants
// it cannot name are returned in unnamed (sorted) for placement by data flow.
func placeWeights(gi *graphIndex) (placed map[string]placement, unnamed []string, err error) {
	placed = map[string]placement{}
	for _, c := range slices.Sorted(maps.Keys(gi.consts)) {
		t := gi.consts[c]
		switch onnxpb.TensorProto_DataType(t.GetDataType()) {
		case onnxpb.TensorProto_FLOAT, onnxpb.TensorProto_FLOAT16, onnxpb.TensorProto_BFLOAT16, onnxpb.TensorProto_DOUBLE:
		default:
			continue
		}
		if _, _, err := TensorDims(t); err != nil {
			return nil, nil, err
		}
		if len(t.GetDims()) == 0 || len(t.GetDims()) > 2 {
			if paramFromName(c) != "" { // named as a weight, but no weight has this shape
				return nil, nil, fmt.Errorf("tensor %s: dims %v: a weight has 1 or 2 dims", c, t.GetDims())
			}
			continue
		}
		r, n, tr := gi.useOf(c)
		param, how := paramFromName(c), "tensor name"
		if param == "" && n != nil && r != roleNone {
			if mod := scopeOf(n); mod != "" && hfParam.MatchString(mod+"."+r.param()) {
				param, how = mod+"."+r.param(), "scope of node "+nodeLabel(n)
			}
		}
		if param == "" {
			if r != roleNone {
				unnamed = append(unnamed, c)
			}
			continue
		}
		if r != roleLinear {
			// Only a linear use tells the layout; tensors named as weights are in HF layout.
			tr = false
		}
		mod, kind := param[:strings.LastIndexByte(param, '.')], param[strings.LastIndexByte(param, '.'):]
		leaf := mod[strings.LastIndexByte(mod, '.')+1:]
		if parts, ok := fusedParts[leaf]; ok {
			base := mod[:strings.LastIndexByte(mod, '.')+1]
			for i, p := range parts {
				if err := addPlacement(placed, base+p+kind, placement{src: c, transpose: tr, fused: mod, part: i, how: how}); err != nil {
					return nil, nil, err
				}
			}
			continue
		}
		if err := addPlacement(placed, param, placement{src: c, transpose: tr, how: how}); err != nil {
			return nil, nil, err
		}
	}
	return placed, unnamed, nil
}

func addPlacement(placed map[string]placement, name string, p placement) error {
	if old, dup := placed[name]; dup && old.src != p.src {
		return fmt.Errorf("tensor %s: found twice in the graph, as %s (%s) and as %s (%s)", name, old.src, old.how, p.src, p.how)
	}
	placed[name] = p
	return nil
}

func nodeLabel(n *onnxpb.NodeProto) string {
	if n.GetName() != "" {
		return n.GetName()
	}
	if len(n.GetOutput()) > 0 {
		return n.GetOpType() + " -> " + n.GetOutput()[0]
	}
	return n.GetOpType()
}

// materialize decodes the weights of cfg from their placements: transposes tensors stored
// [in, out] and splits fused ones, checking every shape against cfg. Tensors are decoded one
// at a time (a fused one once for all its parts).
//
// With release, each tensor's bytes are dropped from the proto once decoded (when no other
// weight reads them), so the parsed file and the weights are not both held in full.
func materialize(gi *graphIndex, cfg *engine.Config, placed map[string]placement, dir string, release bool) (map[string]engine.HostTensor, error) {
	out := map[string]engine.HostTensor{}
	readers := map[string]int{} // constant -> weights read from it
	for _, name := range engine.WeightNames(cfg) {
		if p, ok := placed[name]; ok {
			readers[p.src]++
		}
	}
	done := func(src string) {
		readers[src]--
		if release && readers[src] == 0 {
			t := gi.consts[src]
			t.RawData, t.FloatData, t.Int32Data, t.DoubleData = nil, nil, nil, nil
		}
	}
	fusedCache := map[string]engine.HostTensor{}
	for _, name := range engine.WeightNames(cfg) {
		p, ok := placed[name]
		if !ok {
			return nil, fmt.Errorf("tensor %s: missing from the graph", name)
		}
		want, _ := engine.WeightShape(cfg, name)
		var ht engine.HostTensor
		if p.fused == "" {
			t, err := decodeHF(gi.consts[p.src], p.transpose, dir)
			if err != nil {
				return nil, err
			}
			ht = t
		} else {
			key := p.src + "\x00" + fmt.Sprint(p.transpose)
			full, ok := fusedCache[key]
			if !ok {
				t, err := decodeHF(gi.consts[p.src], p.transpose, dir)
				if err != nil {
					return nil, err
				}
				full, fusedCache[key] = t, t
			}
			sizes := fusedSizes(cfg, p.fused)
			lo := 0
			for i := 0; i < p.part; i++ {
				lo += sizes[i]
			}
			hi := lo + sizes[p.part]
			total := 0
			for _, s := range sizes {
				total += s
			}
			if len(full.Shape) == 0 || full.Shape[0] != total {
				return nil, fmt.Errorf("tensor %s (%s, fused %s): shape %v in HF layout, config wants %d rows (%v)",
					p.src, p.how, p.fused, full.Shape, total, sizes)
			}
			row := 1
			for _, d := range full.Shape[1:] {
				row *= d
			}
			shape := append([]int{hi - lo}, full.Shape[1:]...)
			ht = engine.HostTensor{Shape: shape, Data: full.Data[lo*row : hi*row : hi*row]}
		}
		done(p.src)
		if !slices.Equal(ht.Shape, want) {
			what := p.src
			if what != name {
				what = fmt.Sprintf("%s (from %s, %s)", name, p.src, p.how)
			}
			if p.transpose {
				what += ", stored transposed"
			}
			return nil, fmt.Errorf("tensor %s: shape %v in HF layout, config wants %v", what, ht.Shape, want)
		}
		out[name] = ht
	}
	return out, nil
}

// fusedSizes are the row counts of the parts of a fused module.
func fusedSizes(cfg *engine.Config, fused string) []int {
	if strings.HasSuffix(fused, "qkv_proj") {
		return []int{cfg.QDim(), cfg.KVDim(), cfg.KVDim()}
	}
	return []int{cfg.IntermediateSize, cfg.IntermediateSize}
}

// decodeHF decodes t to float32, transposing a 2-D tensor when asked.
func decodeHF(t *onnxpb.TensorProto, transpose bool, dir string) (engine.HostTensor, error) {
	dims, _, err := TensorDims(t)
	if err != nil {
		return engine.HostTensor{}, err
	}
	data, err := TensorFloat32(t, dir)
	if err != nil {
		return engine.HostTensor{}, err
	}
	if !transpose {
		return engine.HostTensor{Shape: dims, Data: data}, nil
	}
	if len(dims) != 2 {
		return engine.HostTensor{}, fmt.Errorf("tensor %s: dims %v, want 2 for a linear weight", t.GetName(), dims)
	}
	r, c := dims[0], dims[1] // stored [in=r, out=c]
	tr := make([]float32, len(data))
	for i := 0; i < r; i++ {
		for j := 0; j < c; j++ {
			tr[j*r+i] = data[i*c+j]
		}
	}
	return engine.HostTensor{Shape: []int{c, r}, Data: tr}, nil
}

// peekHF returns element [r, c] of a 2-D weight in HF layout straight from an inline float32,
// float16 or bfloat16 raw_data tensor, without decoding it; ok is false for other encodings.
func peekHF(t *onnxpb.TensorProto, transpose bool, r, c int) (v float32, ok bool) {
	d := t.GetDims()
	if len(d) != 2 || t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL || t.GetRawData() == nil {
		return 0, false
	}
	i := int64(r)*d[1] + int64(c)
	if transpose {
		i = int64(c)*d[1] + int64(r)
	}
	raw := t.GetRawData()
	switch onnxpb.TensorProto_DataType(t.GetDataType()) {
	case onnxpb.TensorProto_FLOAT:
		if 4*i+4 <= int64(len(raw)) {
			return math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])), true
		}
	case onnxpb.TensorProto_FLOAT16:
		if 2*i+2 <= int64(len(raw)) {
			return checkpoints.F16ToF32(binary.LittleEndian.Uint16(raw[2*i:])), true
		}
	case onnxpb.TensorProto_BFLOAT16:
		if 2*i+2 <= int64(len(raw)) {
			return checkpoints.BF16ToF32(binary.LittleEndian.Uint16(raw[2*i:])), true
		}
	}
	return 0, false
}
