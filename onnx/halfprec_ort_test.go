//go:build cgo

package onnx

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/onnx/onnxpb"
	ort "github.com/yalue/onnxruntime_go"
	"google.golang.org/protobuf/proto"
)

// TestHalfConversionsMatchORT compares the float16 and bfloat16 encoders with ONNX Runtime's
// Cast on random and edge-case float32 values (Cast to the narrow type and back to float32).
func TestHalfConversionsMatchORT(t *testing.T) {
	needORT(t)
	b := newBuilder("casts")
	b.g.Input = append(b.g.Input, valueInfo("x", onnxpb.TensorProto_FLOAT, "n"))
	for _, c := range []struct {
		out string
		to  onnxpb.TensorProto_DataType
	}{{"y16", onnxpb.TensorProto_FLOAT16}, {"ybf", onnxpb.TensorProto_BFLOAT16}} {
		narrow := b.op("/cast", "Cast", []string{"x"}, attrInt("to", int64(c.to)))
		b.g.Node = append(b.g.Node, &onnxpb.NodeProto{Name: proto.String("/back/" + c.out), OpType: proto.String("Cast"),
			Input: []string{narrow}, Output: []string{c.out}, Attribute: []*onnxpb.AttributeProto{attrInt("to", int64(onnxpb.TensorProto_FLOAT))}})
		b.g.Output = append(b.g.Output, valueInfo(c.out, onnxpb.TensorProto_FLOAT, "n"))
	}
	m := &onnxpb.ModelProto{IrVersion: proto.Int64(IRVersion), Graph: b.g,
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(Opset)}}}
	data, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "casts.onnx")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	xs := []float32{0, float32(math.Copysign(0, -1)), 1, -1, 65504, 65519.996, 65520, 1e-8, 2.980232e-08, 5.96e-8, 6.1e-5,
		float32(math.Inf(1)), float32(math.Inf(-1)), math.MaxFloat32, math.SmallestNonzeroFloat32, 3.3895314e38}
	for i := 0; i < 1<<16; i++ {
		// Random bit patterns cover every exponent; random halves' midpoints cover the ties.
		xs = append(xs, math.Float32frombits(r.Uint32()))
		h := uint16(r.Uint32())
		lo, hi := checkpoints.F16ToF32(h), checkpoints.F16ToF32(h+1)
		xs = append(xs, float32((float64(lo)+float64(hi))/2))
		xs = append(xs, math.Float32frombits(r.Uint32()&0xffff8000|0x8000))
	}
	in, err := ort.NewTensor(ort.NewShape(int64(len(xs))), xs)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Destroy()
	s, err := ort.NewDynamicAdvancedSession(path, []string{"x"}, []string{"y16", "ybf"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	outs := []ort.Value{nil, nil}
	if err := s.Run([]ort.Value{in}, outs); err != nil {
		t.Fatal(err)
	}
	defer outs[0].Destroy()
	defer outs[1].Destroy()
	y16, ybf := outs[0].(*ort.Tensor[float32]).GetData(), outs[1].(*ort.Tensor[float32]).GetData()
	bad := 0
	for i, x := range xs {
		g16 := checkpoints.F16ToF32(checkpoints.F32ToF16(x))
		gbf := checkpoints.BF16ToF32(checkpoints.F32ToBF16(x))
		same := func(a, b float32) bool { return math.Float32bits(a) == math.Float32bits(b) || (a != a && b != b) }
		if !same(g16, y16[i]) || !same(gbf, ybf[i]) {
			bad++
			if bad <= 5 {
				t.Errorf("x = %v (%#08x): float16 %v (ORT %v), bfloat16 %v (ORT %v)", x, math.Float32bits(x), g16, y16[i], gbf, ybf[i])
			}
		}
	}
	t.Logf("%d values: %d differ from ONNX Runtime's Cast", len(xs), bad)
}
