package onnx

import (
	"github.com/prolong-rl/prolong/onnx/onnxpb"
)

// use is one input slot of a node that reads a value.
type use struct {
	node *onnxpb.NodeProto
	idx  int // input index
}

// graphIndex answers the questions the importer asks of a graph: which values are constants
// (initializers and Constant nodes), which node makes a value, and which nodes read it.
type graphIndex struct {
	g         *onnxpb.GraphProto
	consts    map[string]*onnxpb.TensorProto // value name -> tensor
	constNode map[string]*onnxpb.NodeProto   // value name -> Constant node (nil for initializers)
	producer  map[string]*onnxpb.NodeProto
	order     map[*onnxpb.NodeProto]int // position in the node list (a topological order)
	users     map[string][]use
}

func newGraphIndex(g *onnxpb.GraphProto) *graphIndex {
	gi := &graphIndex{g: g, consts: map[string]*onnxpb.TensorProto{}, constNode: map[string]*onnxpb.NodeProto{},
		producer: map[string]*onnxpb.NodeProto{}, order: map[*onnxpb.NodeProto]int{}, users: map[string][]use{}}
	for _, t := range g.GetInitializer() {
		gi.consts[t.GetName()] = t
	}
	for i, n := range g.GetNode() {
		gi.order[n] = i
		for _, out := range n.GetOutput() {
			if out != "" {
				gi.producer[out] = n
			}
		}
		for j, in := range n.GetInput() {
			if in != "" {
				gi.users[in] = append(gi.users[in], use{n, j})
			}
		}
		if n.GetOpType() == "Constant" && len(n.GetOutput()) == 1 {
			for _, a := range n.GetAttribute() {
				if a.GetName() == "value" && a.GetT() != nil {
					gi.consts[n.GetOutput()[0]] = a.GetT()
					gi.constNode[n.GetOutput()[0]] = n
				}
			}
		}
	}
	return gi
}

// attr returns the attribute of n called name, or nil.
func attr(n *onnxpb.NodeProto, name string) *onnxpb.AttributeProto {
	for _, a := range n.GetAttribute() {
		if a.GetName() == name {
			return a
		}
	}
	return nil
}

// attrIntOr returns the int attribute name of n, or def when absent.
func attrIntOr(n *onnxpb.NodeProto, name string, def int64) int64 {
	if a := attr(n, name); a != nil {
		return a.GetI()
	}
	return def
}

// constInts returns the values of an integer constant (nil when v is not one).
func (gi *graphIndex) constInts(v string) []int64 {
	t, ok := gi.consts[v]
	if !ok {
		return nil
	}
	out, err := TensorInt64(t, "")
	if err != nil {
		return nil
	}
	return out
}

// constFloats returns the values of a small float constant held in the model file (nil when v
// is not one, or its data is external).
func (gi *graphIndex) constFloats(v string) []float32 {
	t, ok := gi.consts[v]
	if !ok || t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
		return nil
	}
	out, err := TensorFloat32(t, "")
	if err != nil {
		return nil
	}
	return out
}

// reaches reports whether a node with op type op is reachable from value v within depth
// steps downstream.
func (gi *graphIndex) reaches(v string, depth int, match func(*onnxpb.NodeProto) bool) bool {
	seen := map[string]bool{}
	frontier := []string{v}
	for d := 0; d < depth && len(frontier) > 0; d++ {
		var next []string
		for _, x := range frontier {
			for _, u := range gi.users[x] {
				if match(u.node) {
					return true
				}
				for _, o := range u.node.GetOutput() {
					if o != "" && !seen[o] {
						seen[o] = true
						next = append(next, o)
					}
				}
			}
		}
		frontier = next
	}
	return false
}

// input returns n's i-th input name, or "" when n has fewer inputs.
func input(n *onnxpb.NodeProto, i int) string {
	if i < len(n.GetInput()) {
		return n.GetInput()[i]
	}
	return ""
}

// output returns n's i-th output name, or "" when n has fewer outputs.
func output(n *onnxpb.NodeProto, i int) string {
	if i < len(n.GetOutput()) {
		return n.GetOutput()[i]
	}
	return ""
}
