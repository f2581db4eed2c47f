package onnx

import (
	"sort"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx/onnxpb"
)

// Placing weights by data flow, for graphs whose tensors and nodes carry no usable names
// (anonymous initializers consumed by nodes without scopes, as older exporters and graph
// optimisers leave them). The decoder's structure alone tells each weight's role:
//
//   - a linear layer is a MatMul/Gemm with a constant right operand. Following its output
//     (and stopping at other linear layers) reaches the attention score product Q·Kᵀ as its
//     left operand (q_proj) or right operand (k_proj), or the probability-value product P·V
//     as its right operand (v_proj). Among the others, one whose input comes from the
//     attention (without crossing a linear layer) is o_proj, one whose input comes from the
//     SiLU's Sigmoid is down_proj, one whose output reaches a Sigmoid is gate_proj, one whose
//     output reaches the logits output is lm_head, and the rest is up_proj;
//   - a layer's index is the number of down_proj layers before it in the node order (any
//     topological order puts all of layer i's linears after layer i-1's down_proj and before
//     layer i's own);
//   - an RMSNorm weight is a 1-D constant multiplying a ReduceMean-normalised value: the linear
//     layers it feeds tell which (q/k/v: input_layernorm, gate/up: post_attention_layernorm,
//     lm_head: model.norm), and one fed by q_proj or k_proj is q_norm or k_norm;
//   - a bias is a 1-D constant added to a linear layer's output;
//   - the embedding is the table a Gather indexes with input_ids.

// linearInfo is a linear layer found in the graph.
type linearInfo struct {
	c         string // the weight constant
	node      *onnxpb.NodeProto
	transpose bool
	module    string // "q_proj", ..., "lm_head"
	layer     int
}

// attention products: a MatMul of two computed values (no constant operand).
func (gi *graphIndex) isAttnMatMul(n *onnxpb.NodeProto) bool {
	if n.GetOpType() != "MatMul" || len(n.GetInput()) != 2 {
		return false
	}
	_, c0 := gi.consts[n.GetInput()[0]]
	_, c1 := gi.consts[n.GetInput()[1]]
	return !c0 && !c1
}

// isPV reports whether an attention MatMul multiplies probabilities (its left operand comes
// from a Softmax).
func (gi *graphIndex) isPV(n *onnxpb.NodeProto) bool {
	return gi.upstream(n.GetInput()[0], 4, nil, func(p *onnxpb.NodeProto) bool { return p.GetOpType() == "Softmax" })
}

// upstream reports whether a node matching match produces v or one of its ancestors within
// depth steps, not looking past the nodes in stop.
func (gi *graphIndex) upstream(v string, depth int, stop map[*onnxpb.NodeProto]bool, match func(*onnxpb.NodeProto) bool) bool {
	found := false
	walk(v, depth, func(x string) ([]string, bool) {
		p := gi.producer[x]
		if p == nil || stop[p] || shapeOnly[p.GetOpType()] {
			return nil, true
		}
		if match(p) {
			found = true
			return nil, false
		}
		return p.GetInput(), true
	})
	return found
}

// downstream walks from v over the nodes that read it (not past the nodes in stop, which
// are reported to hit) and calls hit for every node reached, with the input slot it was
// reached by; hit returns false to end the walk.
func (gi *graphIndex) downstream(v string, depth int, stop map[*onnxpb.NodeProto]bool, hit func(u use) bool) {
	walk(v, depth, func(x string) ([]string, bool) {
		var next []string
		for _, u := range gi.users[x] {
			if !hit(u) {
				return nil, false
			}
			if !stop[u.node] && !shapeOnly[u.node.GetOpType()] {
				next = append(next, u.node.GetOutput()...)
			}
		}
		return next, true
	})
}

// upstreamNodes returns the nodes in stop reached going up from v (not past them).
func (gi *graphIndex) upstreamNodes(v string, depth int, stop map[*onnxpb.NodeProto]bool) []*onnxpb.NodeProto {
	var out []*onnxpb.NodeProto
	walk(v, depth, func(x string) ([]string, bool) {
		p := gi.producer[x]
		switch {
		case p == nil || shapeOnly[p.GetOpType()]:
			return nil, true
		case stop[p]:
			out = append(out, p)
			return nil, true
		}
		return p.GetInput(), true
	})
	return out
}

// walk visits the values of a graph breadth first from v, at most depth steps away, each
// once: visit(x) returns the values x leads to (empty names are skipped), and false to end
// the walk at once.
func walk(v string, depth int, visit func(x string) (next []string, more bool)) {
	seen := map[string]bool{v: true}
	frontier := []string{v}
	for d := 0; d < depth && len(frontier) > 0; d++ {
		var next []string
		for _, x := range frontier {
			leads, more := visit(x)
			if !more {
				return
			}
			for _, y := range leads {
				if y != "" && !seen[y] {
					seen[y] = true
					next = append(next, y)
				}
			}
		}
		frontier = next
	}
}

// shapeOnly ops turn a tensor into metadata (its shape): the walks do not follow them, as the
// values they feed (reshape targets, masks) are not the tensor's data.
var shapeOnly = map[string]bool{"Shape": true, "Size": true}

// walkDepth bounds the walks: enough for the longest chain between two linear layers in the
// exports seen (torch's GQA repeat_kv and mask plumbing), small enough to stay local.
const walkDepth = 40

// placeByDataFlow places the weights that neither names nor node scopes placed, from the
// graph's structure. It does nothing when every linear layer's weight is already placed.
func placeByDataFlow(gi *graphIndex, placed map[string]placement, unnamed []string) error {
	isUnnamed := map[string]bool{}
	anyLinear := false
	for _, c := range unnamed {
		isUnnamed[c] = true
		if r, _, _ := gi.useOf(c); r == roleLinear {
			anyLinear = true
		}
	}
	if !anyLinear {
		return nil
	}
	// All linear layers, placed or not: the structure needs every one of them.
	var lins []*linearInfo
	byNode := map[*onnxpb.NodeProto]*linearInfo{}
	stop := map[*onnxpb.NodeProto]bool{}
	names := make([]string, 0, len(gi.consts))
	for c := range gi.consts {
		names = append(names, c)
	}
	sort.Strings(names)
	for _, c := range names {
		rank := len(gi.consts[c].GetDims())
		for _, u := range gi.users[c] { // every use: a tied embedding is also lm_head
			if r, n, tr := gi.followUse(u, rank); r == roleLinear {
				if _, dup := byNode[n]; dup {
					continue
				}
				li := &linearInfo{c: c, node: n, transpose: tr}
				lins = append(lins, li)
				byNode[n] = li
				stop[n] = true
			}
		}
	}
	sort.Slice(lins, func(i, j int) bool { return gi.order[lins[i].node] < gi.order[lins[j].node] })
	outputs := map[string]bool{}
	for _, o := range gi.g.GetOutput() {
		outputs[o.GetName()] = true
	}
	attn := map[*onnxpb.NodeProto]bool{}
	for _, n := range gi.g.GetNode() {
		if gi.isAttnMatMul(n) && !stop[n] { // a linear's weight may come through a Transpose
			attn[n] = true
		}
	}
	stopAll := map[*onnxpb.NodeProto]bool{}
	for n := range stop {
		stopAll[n] = true
	}
	for n := range attn {
		stopAll[n] = true
	}
	for _, li := range lins {
		out := output(li.node, 0)
		gi.downstream(out, walkDepth, stopAll, func(u use) bool {
			if !attn[u.node] {
				return true
			}
			switch {
			case gi.isPV(u.node) && u.idx == 1:
				li.module = "v_proj"
			case !gi.isPV(u.node) && u.idx == 0:
				li.module = "q_proj"
			case !gi.isPV(u.node) && u.idx == 1:
				li.module = "k_proj"
			}
			return li.module == ""
		})
		if li.module != "" {
			continue
		}
		in := input(li.node, 0)
		switch {
		case gi.upstream(in, walkDepth, stop, func(p *onnxpb.NodeProto) bool { return attn[p] || p.GetOpType() == "Softmax" }):
			li.module = "o_proj"
		case gi.upstream(in, 6, stop, func(p *onnxpb.NodeProto) bool { return p.GetOpType() == "Sigmoid" }):
			li.module = "down_proj"
		default:
			sig, logits := false, false
			gi.downstream(out, 6, stop, func(u use) bool {
				sig = sig || u.node.GetOpType() == "Sigmoid"
				for _, o := range u.node.GetOutput() {
					logits = logits || o == "logits" && outputs[o]
				}
				return true
			})
			logits = logits || out == "logits" && outputs[out]
			switch {
			case sig:
				li.module = "gate_proj"
			case logits:
				li.module = "lm_head"
			default:
				li.module = "up_proj"
			}
		}
	}
	downs := 0
	for _, li := range lins {
		li.layer = downs
		if li.module == "down_proj" {
			downs++
		}
	}
	hfName := func(li *linearInfo, kind string) string {
		switch li.module {
		case "lm_head":
			return "lm_head." + kind
		case "q_proj", "k_proj", "v_proj", "o_proj":
			return engine.LayerWeight(li.layer, "self_attn."+li.module+"."+kind)
		default:
			return engine.LayerWeight(li.layer, "mlp."+li.module+"."+kind)
		}
	}
	add := func(name, c string, tr bool) error {
		if _, ok := placed[name]; ok || !(isUnnamed[c] || name == engine.LMHeadWeight) {
			return nil
		}
		return addPlacement(placed, name, placement{src: c, transpose: tr, how: "data flow"})
	}
	for _, li := range lins {
		if err := add(hfName(li, "weight"), li.c, li.transpose); err != nil {
			return err
		}
	}
	// Embedding, norms and biases.
	for _, c := range unnamed {
		r, n, tr := gi.useOf(c)
		switch r {
		case roleEmbed:
			if fromInput(gi, input(n, 1), "input_ids") {
				if err := add(engine.EmbedWeight, c, tr); err != nil {
					return err
				}
			}
		case roleBias:
			if li := byNode[n]; li != nil { // Gemm's own bias input
				if err := add(hfName(li, "bias"), c, false); err != nil {
					return err
				}
				continue
			}
			for _, in := range n.GetInput() {
				if li := byNode[gi.producer[in]]; li != nil && in != c {
					if err := add(hfName(li, "bias"), c, false); err != nil {
						return err
					}
				}
			}
		case roleScale:
			if name := normName(gi, n, c, byNode, stop); name != "" {
				if err := add(name, c, false); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// fromInput reports whether v is the graph input name or computed from it by shape-only ops.
func fromInput(gi *graphIndex, v, name string) bool {
	for hop := 0; hop < 4; hop++ {
		if v == name {
			return true
		}
		p := gi.producer[v]
		if p == nil || len(p.GetInput()) == 0 {
			return false
		}
		switch p.GetOpType() {
		case "Reshape", "Cast", "Flatten", "Identity", "Squeeze", "Unsqueeze":
			v = p.GetInput()[0]
		default:
			return false
		}
	}
	return false
}

// normName names the RMSNorm weight c used by node n, from the linear layers around it.
func normName(gi *graphIndex, n *onnxpb.NodeProto, c string, byNode map[*onnxpb.NodeProto]*linearInfo, stop map[*onnxpb.NodeProto]bool) string {
	if n.GetOpType() == "Mul" {
		// The other operand must be RMS-normalised: x * rsqrt(mean(x^2) + eps).
		other := input(n, 0)
		if other == c {
			other = input(n, 1)
		}
		if !gi.upstream(other, 6, stop, func(p *onnxpb.NodeProto) bool { return p.GetOpType() == "ReduceMean" }) {
			return ""
		}
		for _, p := range gi.upstreamNodes(other, walkDepth, stop) {
			if li := byNode[p]; li != nil && (li.module == "q_proj" || li.module == "k_proj") {
				return engine.LayerWeight(li.layer, "self_attn."+li.module[:1]+"_norm.weight")
			}
		}
	}
	var fed []*linearInfo
	for _, out := range n.GetOutput() {
		if out == "" {
			continue
		}
		gi.downstream(out, 8, stop, func(u use) bool {
			if li := byNode[u.node]; li != nil && u.idx == 0 {
				fed = append(fed, li)
			}
			return true
		})
		break // SkipSimplifiedLayerNormalization: output 0 is the normalised value
	}
	for _, li := range fed {
		switch li.module {
		case "q_proj", "k_proj", "v_proj":
			return engine.LayerWeight(li.layer, engine.InputNormWeight)
		case "gate_proj", "up_proj":
			return engine.LayerWeight(li.layer, engine.PostNormWeight)
		case "lm_head":
			return engine.NormWeight
		}
	}
	return ""
}
