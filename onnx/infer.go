package onnx

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx/onnxpb"
)

// graphFacts are what a decoder graph says about its configuration beyond weight shapes.
type graphFacts struct {
	headDim, kvHeads, heads int       // 0 when the graph does not say
	eps                     float64   // 0 when not found
	invFreq                 []float64 // RoPE inverse frequencies, nil when not found
	ropeFrom                string    // where invFreq came from
	maxPos                  int       // rows of a cos/sin cache, 0 when there is none
}

// hfDims returns the HF-layout dims of a placed weight without decoding it (for a fused
// tensor, the dims of the whole fused tensor); nil when they are not valid.
func hfDims(gi *graphIndex, p placement) []int {
	d, _ := placedDims(gi, p)
	return d
}

// placedDims is hfDims with the error of dims that are not valid (negative, or too many
// elements), which names the graph's tensor and the dimension.
func placedDims(gi *graphIndex, p placement) ([]int, error) {
	d, _, err := TensorDims(gi.consts[p.src])
	if err != nil {
		return nil, err
	}
	if p.transpose && len(d) == 2 {
		d = []int{d[1], d[0]}
	}
	return d, nil
}

// shapeFor returns the HF-layout dims of the placed weight name, which the config is read
// from: they must be valid and of the given rank. Errors name the weight and the graph's
// tensor.
func shapeFor(gi *graphIndex, placed map[string]placement, name string, rank int) ([]int, error) {
	p := placed[name]
	d, err := placedDims(gi, p)
	if err != nil {
		return nil, fmt.Errorf("cannot infer the config from %s: %w", name, err)
	}
	if len(d) != rank {
		return nil, fmt.Errorf("cannot infer the config from %s: its tensor %s has dims %v, want %d of them", name, p.src, d, rank)
	}
	return d, nil
}

var layerIndex = regexp.MustCompile(`^model\.layers\.(\d+)\.`)

// collectFacts reads head counts, norm epsilon and RoPE frequencies off the graph.
func collectFacts(m *onnxpb.ModelProto, gi *graphIndex, placed map[string]placement) graphFacts {
	var f graphFacts
	g := m.GetGraph()
	if p, ok := placed[engine.LayerWeight(0, engine.QNormWeight)]; ok {
		if d := hfDims(gi, p); len(d) == 1 {
			f.headDim = d[0]
		}
	}
	// KV cache inputs/outputs: [batch, kv_heads, seq, head_dim] with fixed kv_heads, head_dim.
	for _, vi := range append(append([]*onnxpb.ValueInfoProto{}, g.GetInput()...), g.GetOutput()...) {
		n := vi.GetName()
		if !(strings.HasPrefix(n, "past_key_values.") || strings.HasPrefix(n, "present.") || strings.HasPrefix(n, "past.")) {
			continue
		}
		dims := vi.GetType().GetTensorType().GetShape().GetDim()
		if len(dims) == 4 && dims[1].GetDimValue() > 0 && dims[3].GetDimValue() > 0 {
			f.kvHeads, f.headDim = int(dims[1].GetDimValue()), int(dims[3].GetDimValue())
			break
		}
	}
	for _, n := range g.GetNode() {
		switch n.GetOpType() {
		case "GroupQueryAttention", "MultiHeadAttention":
			if f.heads == 0 {
				f.heads = int(attrIntOr(n, "num_heads", 0))
				f.kvHeads = int(attrIntOr(n, "kv_num_heads", int64(f.heads)))
			}
		case "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization":
			if a := attr(n, "epsilon"); a != nil && f.eps == 0 {
				f.eps = shortFloat32(a.GetF())
			}
		case "Add":
			// RMSNorm as exported by torch: ReduceMean(x^2) + eps.
			if f.eps != 0 || len(n.GetInput()) != 2 {
				continue
			}
			for i, in := range n.GetInput() {
				if p := gi.producer[in]; p != nil && p.GetOpType() == "ReduceMean" {
					if v := gi.constFloats(n.GetInput()[1-i]); len(v) == 1 && v[0] > 0 && v[0] < 1 {
						f.eps = shortFloat32(v[0])
					}
				}
			}
		}
	}
	if f.headDim == 0 {
		f.headDim = headDimFromReshape(gi, placed)
	}
	weights := map[string]bool{}
	for _, p := range placed {
		weights[p.src] = true
	}
	f.invFreq, f.ropeFrom, f.maxPos = ropeFromGraph(gi, f.headDim, weights)
	if f.headDim == 0 && f.invFreq != nil {
		f.headDim = 2 * len(f.invFreq)
	}
	return f
}

// headDimFromReshape finds the head size in the Reshape that splits k_proj's output into heads
// ([batch, seq, -1 or kv_heads, head_dim]: its last entry is a constant).
func headDimFromReshape(gi *graphIndex, placed map[string]placement) int {
	p, ok := placed[engine.LayerWeight(0, engine.KProjWeight)]
	if !ok {
		return 0
	}
	_, n, _ := gi.useOf(p.src)
	if n == nil || len(n.GetOutput()) == 0 {
		return 0
	}
	frontier := []string{n.GetOutput()[0]}
	for hop := 0; hop < 3; hop++ {
		var next []string
		for _, v := range frontier {
			for _, u := range gi.users[v] {
				switch u.node.GetOpType() {
				case "Reshape":
					if u.idx != 0 {
						continue
					}
					shape := input(u.node, 1)
					if s := gi.constInts(shape); len(s) >= 3 && s[len(s)-1] > 0 {
						return int(s[len(s)-1])
					}
					if c := gi.producer[shape]; c != nil && c.GetOpType() == "Concat" && len(c.GetInput()) >= 3 {
						if s := gi.constInts(c.GetInput()[len(c.GetInput())-1]); len(s) == 1 && s[0] > 0 {
							return int(s[0])
						}
					}
				case "Add", "Identity":
					next = append(next, u.node.GetOutput()...)
				}
			}
		}
		frontier = next
	}
	return 0
}

// ropeFromGraph finds the RoPE inverse frequencies: an inv_freq constant of headDim/2 values
// that flows into Cos/Sin, or a pair of cos/sin caches [max_pos, headDim or headDim/2]
// (row p holds cos/sin(p * inv_freq)), whose row count it also returns.
// Constants in skip (the weights) are not looked at.
func ropeFromGraph(gi *graphIndex, headDim int, skip map[string]bool) ([]float64, string, int) {
	var cosName, sinName string
	var cosV, sinV []float32
	var rows, cols int
	for name, t := range gi.consts {
		if skip[name] {
			continue
		}
		dt := onnxpb.TensorProto_DataType(t.GetDataType())
		if dt != onnxpb.TensorProto_FLOAT && dt != onnxpb.TensorProto_DOUBLE && dt != onnxpb.TensorProto_FLOAT16 {
			continue
		}
		dims, n, err := TensorDims(t)
		if err != nil || n < 2 || n > 1<<24 {
			continue
		}
		trail := 0 // non-1 dims
		for _, d := range dims {
			if d != 1 {
				trail++
			}
		}
		if trail == 1 && (headDim == 0 || int(n) == headDim/2) && n <= 1024 {
			if gi.reaches(name, 8, func(n *onnxpb.NodeProto) bool { return n.GetOpType() == "Cos" || n.GetOpType() == "Sin" }) {
				v := gi.constFloats(name)
				inv := make([]float64, len(v))
				for i, x := range v {
					inv[i] = float64(x)
				}
				if len(inv) > 0 && inv[0] > 0 {
					return inv, "inv_freq constant " + name, 0
				}
			}
		}
		if len(dims) == 2 && dims[0] >= 2 && dims[1] <= 1024 && (headDim == 0 || dims[1] == headDim || dims[1] == headDim/2) {
			v := gi.constFloats(name)
			if v == nil {
				continue
			}
			row0 := v[:dims[1]]
			allNear := func(x float32) bool {
				for _, r := range row0 {
					if math.Abs(float64(r-x)) > 1e-6 {
						return false
					}
				}
				return true
			}
			switch {
			case allNear(1) && (cosName == "" || name < cosName):
				cosName, cosV = name, v
				rows, cols = dims[0], dims[1]
			case allNear(0) && (sinName == "" || name < sinName):
				sinName, sinV = name, v
			}
		}
	}
	if cosV == nil || sinV == nil || len(cosV) != len(sinV) {
		return nil, "", 0
	}
	half := cols
	if headDim != 0 {
		half = headDim / 2
	} else if cols%2 == 0 && cols >= 2 && cosV[cols+cols/2] == cosV[cols] {
		// [max_pos, head_dim] caches repeat their halves; take one.
		half = cols / 2
	}
	if half > cols {
		return nil, "", 0
	}
	// Row 1 gives inv_freq modulo 2 pi; the last row sharpens it (angle = p * inv_freq).
	inv := make([]float64, half)
	last := rows - 1
	for j := 0; j < half; j++ {
		est := math.Atan2(float64(sinV[cols+j]), float64(cosV[cols+j]))
		a := math.Atan2(float64(sinV[last*cols+j]), float64(cosV[last*cols+j]))
		k := math.Round((float64(last)*est - a) / (2 * math.Pi))
		inv[j] = (a + 2*math.Pi*k) / float64(last)
	}
	return inv, fmt.Sprintf("cos/sin caches %s, %s", cosName, sinName), rows
}

// shortFloat32 is the float64 of the shortest decimal that reads back as v (1e-6 for the
// float32 nearest 1e-6), so an epsilon read off a float32 graph matches config.json's.
func shortFloat32(v float32) float64 {
	f, _ := strconv.ParseFloat(strconv.FormatFloat(float64(v), 'g', -1, 32), 64)
	return f
}

// ropeParams recovers rope_theta and linear rope scaling from inverse frequencies
// inv[j] = theta^(-2j/d) / factor. It fails for other scalings (llama3), which need
// config.json.
func ropeParams(inv []float64, headDim int) (theta float64, scaling *engine.RopeScaling, err error) {
	if len(inv) < 2 || inv[0] <= 0 {
		return 0, nil, errors.New(`field "rope_theta": the graph's RoPE tables have too few frequencies to tell it`)
	}
	n := len(inv)
	factor := 1 / inv[0]
	ratio := inv[n-1] / inv[0]
	if !(ratio > 0 && ratio < 1) {
		return 0, nil, fmt.Errorf(`field "rope_theta": the graph's RoPE frequencies (%g ... %g) do not decrease`, inv[0], inv[n-1])
	}
	theta = math.Pow(ratio, -float64(headDim)/(2*float64(n-1)))
	if r := math.Round(theta); math.Abs(theta-r) <= 1e-4*theta {
		theta = r
	}
	for j := range inv {
		want := math.Pow(theta, -2*float64(j)/float64(headDim)) / factor
		if math.Abs(inv[j]-want) > 1e-4*want {
			return 0, nil, fmt.Errorf(`field "rope_scaling": the graph's RoPE frequencies are not theta^(-2j/d)/factor (inv_freq[%d] = %g, want %g for theta %g): a scaled RoPE such as llama3's cannot be read off a graph; put config.json beside the model or pass ImportOptions.Config`, j, inv[j], want, theta)
		}
	}
	if math.Abs(factor-1) > 1e-5 {
		f := math.Round(factor*1e4) / 1e4
		scaling = &engine.RopeScaling{Type: "linear", Factor: f}
	}
	return theta, scaling, nil
}

// inferConfig builds the config of a graph with no config.json: sizes from the weights' shapes,
// head counts from the KV-cache I/O, attention ops or reshapes, epsilon and RoPE from constants.
// hints fills what the graph cannot tell (max_position_embeddings without a cos/sin cache, token
// ids, a llama3 rope_scaling); where both speak they must agree.
func inferConfig(gi *graphIndex, placed map[string]placement, f graphFacts, hints *engine.Config, dir string) (*engine.Config, error) {
	c := &engine.Config{}
	embed, ok := placed[engine.EmbedWeight]
	if !ok {
		return nil, errors.New("cannot infer the config: no embedding table (model.embed_tokens.weight) found in the graph; put config.json beside the model")
	}
	d, err := shapeFor(gi, placed, engine.EmbedWeight, 2)
	if err != nil {
		return nil, err
	}
	c.VocabSize, c.HiddenSize = d[0], d[1]
	for name := range placed {
		if m := layerIndex.FindStringSubmatch(name); m != nil {
			if i, _ := strconv.Atoi(m[1]); i+1 > c.NumHiddenLayers {
				c.NumHiddenLayers = i + 1
			}
		}
	}
	if p, ok := placed[engine.LayerWeight(0, engine.GateProjWeight)]; ok {
		d, err := shapeFor(gi, placed, engine.LayerWeight(0, engine.GateProjWeight), 2)
		if err != nil {
			return nil, err
		}
		c.IntermediateSize = d[0]
		if p.fused != "" {
			c.IntermediateSize /= 2
		}
	}
	_, c.AttentionBias = placed[engine.LayerWeight(0, engine.QProjBias)]
	_, c.QKNorm = placed[engine.LayerWeight(0, engine.QNormWeight)]
	switch {
	case c.QKNorm:
		c.ModelType, c.Architectures = "qwen3", []string{"Qwen3ForCausalLM"}
	case c.AttentionBias:
		c.ModelType, c.Architectures = "qwen2", []string{"Qwen2ForCausalLM"}
	default:
		c.ModelType, c.Architectures = "llama", []string{"LlamaForCausalLM"}
	}
	c.HeadDim, c.NumKeyValueHeads, c.NumAttentionHeads = f.headDim, f.kvHeads, f.heads
	if hints != nil && c.HeadDim == 0 {
		c.HeadDim = hints.HeadDim
	}
	if q, ok := placed[engine.LayerWeight(0, engine.QProjWeight)]; ok && c.HeadDim > 0 {
		d, err := shapeFor(gi, placed, engine.LayerWeight(0, engine.QProjWeight), 2)
		if err != nil {
			return nil, err
		}
		if q.fused == "" {
			c.NumAttentionHeads = d[0] / c.HeadDim
			if _, ok := placed[engine.LayerWeight(0, engine.KProjWeight)]; ok {
				k, err := shapeFor(gi, placed, engine.LayerWeight(0, engine.KProjWeight), 2)
				if err != nil {
					return nil, err
				}
				c.NumKeyValueHeads = k[0] / c.HeadDim
			}
		} else if c.NumKeyValueHeads > 0 && c.NumAttentionHeads == 0 {
			c.NumAttentionHeads = d[0]/c.HeadDim - 2*c.NumKeyValueHeads
		}
	}
	c.RMSNormEps = f.eps
	c.MaxPositionEmbeddings = f.maxPos
	if f.invFreq != nil && c.HeadDim > 0 && (hints == nil || hints.RopeScaling == nil) {
		theta, rs, err := ropeParams(f.invFreq, c.HeadDim)
		if err != nil {
			return nil, fmt.Errorf("cannot infer the config (RoPE from %s): %w", f.ropeFrom, err)
		}
		c.RopeTheta, c.RopeScaling = theta, rs
	}
	lm, hasLM := placed[engine.LMHeadWeight]
	// A tied model may still carry lm_head as a (transposed) copy of the embedding.
	c.TieWordEmbeddings = !hasLM || lm.src == embed.src || sameAsEmbedding(gi, placed, dir) == nil
	if hints != nil {
		if err := applyHints(c, hints); err != nil {
			return nil, err
		}
	}
	missing := []struct {
		field string
		bad   bool
		why   string
	}{
		{"num_hidden_layers", c.NumHiddenLayers == 0, "no model.layers.N weights found"},
		{"intermediate_size", c.IntermediateSize == 0, "no mlp.gate_proj weight found"},
		{"head_dim", c.HeadDim == 0, "no KV-cache I/O, q_norm, rotary table or head reshape tells it"},
		{"num_attention_heads", c.NumAttentionHeads == 0, "no q_proj weight or attention op tells it"},
		{"num_key_value_heads", c.NumKeyValueHeads == 0, "no k_proj weight or attention op tells it"},
		{"rms_norm_eps", c.RMSNormEps == 0, "no RMSNorm epsilon constant found"},
		{"rope_theta", c.RopeTheta == 0, "no RoPE inv_freq constant or cos/sin cache found"},
		{"max_position_embeddings", c.MaxPositionEmbeddings == 0, "the graph has no cos/sin cache whose length tells it"},
	}
	for _, m := range missing {
		if m.bad {
			return nil, fmt.Errorf("cannot infer the config: field %q: %s; put config.json beside the model or pass it in ImportOptions.Hints or ImportOptions.Config", m.field, m.why)
		}
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("inferred config: %w", err)
	}
	return c, nil
}

// applyHints copies hints' non-zero fields into c where c has none, and checks that the
// others agree.
func applyHints(c, hints *engine.Config) error {
	cv, hv := reflect.ValueOf(c).Elem(), reflect.ValueOf(hints).Elem()
	for i := 0; i < cv.NumField(); i++ {
		hf, cf := hv.Field(i), cv.Field(i)
		if hf.IsZero() {
			continue
		}
		name := strings.Split(cv.Type().Field(i).Tag.Get("json"), ",")[0]
		if name == "" || name == "-" {
			name = cv.Type().Field(i).Name
		}
		if cf.IsZero() || name == "architectures" {
			cf.Set(hf)
			continue
		}
		if !reflect.DeepEqual(cf.Interface(), hf.Interface()) {
			return fmt.Errorf("field %q: hint %v, but the graph says %v", name, pretty(hf), pretty(cf))
		}
	}
	return nil
}

func pretty(v reflect.Value) any {
	if v.Kind() == reflect.Pointer && !v.IsNil() {
		return v.Elem().Interface()
	}
	return v.Interface()
}

// checkFacts compares a given config with what the graph says (head sizes, epsilon, RoPE
// frequencies), so that a wrong config.json is an error naming the field, not wrong logits.
func checkFacts(c *engine.Config, f graphFacts) error {
	if f.headDim != 0 && f.headDim != c.HeadDim {
		return fmt.Errorf("field \"head_dim\": config says %d, the graph %d", c.HeadDim, f.headDim)
	}
	if f.kvHeads != 0 && f.kvHeads != c.NumKeyValueHeads {
		return fmt.Errorf("field \"num_key_value_heads\": config says %d, the graph %d", c.NumKeyValueHeads, f.kvHeads)
	}
	if f.heads != 0 && f.heads != c.NumAttentionHeads {
		return fmt.Errorf("field \"num_attention_heads\": config says %d, the graph %d", c.NumAttentionHeads, f.heads)
	}
	if f.eps != 0 && math.Abs(f.eps-c.RMSNormEps) > 1e-3*c.RMSNormEps {
		return fmt.Errorf("field \"rms_norm_eps\": config says %g, the graph %g", c.RMSNormEps, f.eps)
	}
	if f.invFreq != nil && len(f.invFreq) == c.HeadDim/2 {
		want := c.InvFreq()
		for j, v := range f.invFreq {
			if math.Abs(v-want[j]) > 1e-4*want[j]+1e-7 {
				return fmt.Errorf("fields \"rope_theta\"/\"rope_scaling\": config gives inv_freq[%d] = %g, the graph's %s %g", j, want[j], f.ropeFrom, v)
			}
		}
	}
	return nil
}
