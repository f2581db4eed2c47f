package onnx

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/prolong-rl/prolong/onnx/onnxpb"
	"google.golang.org/protobuf/proto"
)

// builder appends nodes to an ONNX graph. Every value a node makes is named after the node
// (optimum's convention: "/model/layers.0/self_attn/q_proj/Gemm_output_0").
type builder struct {
	g     *onnxpb.GraphProto
	names map[string]int // node name -> times used, to keep names unique
}

func newBuilder(name string) *builder {
	return &builder{g: &onnxpb.GraphProto{Name: proto.String(name)}, names: map[string]int{}}
}

// node adds op with the given inputs and returns its output names (nout of them). name is the
// node's scope, e.g. "/model/layers.0/self_attn"; the op type is appended.
func (b *builder) node(scope, op string, inputs []string, nout int, attrs ...*onnxpb.AttributeProto) []string {
	name := scope + "/" + op
	if k := b.names[name]; k > 0 {
		b.names[name] = k + 1
		name = fmt.Sprintf("%s_%d", name, k)
	} else {
		b.names[name] = 1
	}
	outs := make([]string, nout)
	for i := range outs {
		outs[i] = fmt.Sprintf("%s_output_%d", name, i)
	}
	b.g.Node = append(b.g.Node, &onnxpb.NodeProto{
		Name: proto.String(name), OpType: proto.String(op),
		Input: inputs, Output: outs, Attribute: attrs,
	})
	return outs
}

// op is node with one output.
func (b *builder) op(scope, op string, inputs []string, attrs ...*onnxpb.AttributeProto) string {
	return b.node(scope, op, inputs, 1, attrs...)[0]
}

// constant adds a Constant node holding t and returns its output.
func (b *builder) constant(scope string, t *onnxpb.TensorProto) string {
	return b.op(scope, "Constant", nil, &onnxpb.AttributeProto{
		Name: proto.String("value"), Type: onnxpb.AttributeProto_TENSOR.Enum(), T: t})
}

// ints is a Constant int64 tensor of shape [len(v)].
func (b *builder) ints(scope string, v ...int64) string {
	return b.constant(scope, &onnxpb.TensorProto{
		DataType: proto.Int32(int32(onnxpb.TensorProto_INT64)), Dims: []int64{int64(len(v))},
		RawData: int64Bytes(v)})
}

// scalarInt is a Constant int64 scalar (shape []).
func (b *builder) scalarInt(scope string, v int64) string {
	return b.constant(scope, &onnxpb.TensorProto{
		DataType: proto.Int32(int32(onnxpb.TensorProto_INT64)), RawData: int64Bytes([]int64{v})})
}

// floats is a Constant float32 tensor of the given shape.
func (b *builder) floats(scope string, dims []int64, v ...float32) string {
	return b.constant(scope, &onnxpb.TensorProto{
		DataType: proto.Int32(int32(onnxpb.TensorProto_FLOAT)), Dims: dims, RawData: float32Bytes(v)})
}

func attrInt(name string, v int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INT.Enum(), I: proto.Int64(v)}
}

func attrInts(name string, v ...int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INTS.Enum(), Ints: v}
}

func attrFloat(name string, v float32) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_FLOAT.Enum(), F: proto.Float32(v)}
}

// valueInfo describes a graph input or output; a dim is a number (fixed) or a string (symbolic).
func valueInfo(name string, elem onnxpb.TensorProto_DataType, dims ...any) *onnxpb.ValueInfoProto {
	shape := &onnxpb.TensorShapeProto{}
	for _, d := range dims {
		dim := &onnxpb.TensorShapeProto_Dimension{}
		switch d := d.(type) {
		case int:
			dim.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: int64(d)}
		case string:
			dim.Value = &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d}
		default:
			panic(fmt.Sprintf("onnx: valueInfo dim %T", d))
		}
		shape.Dim = append(shape.Dim, dim)
	}
	return &onnxpb.ValueInfoProto{Name: proto.String(name), Type: &onnxpb.TypeProto{
		Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{
			ElemType: proto.Int32(int32(elem)), Shape: shape}}}}
}

func int64Bytes(v []int64) []byte {
	out := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(out[8*i:], uint64(x))
	}
	return out
}

func float32Bytes(v []float32) []byte {
	out := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(x))
	}
	return out
}
