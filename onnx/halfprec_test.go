package onnx

import (
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/onnx/onnxpb"
)

// TestNewTensorRoundTrip writes float32 values as FLOAT, FLOAT16, BFLOAT16, DOUBLE and INT64
// initializers and reads them back.
func TestNewTensorRoundTrip(t *testing.T) {
	vals := []float32{0, 1, -2.5, 3.140625, 65504, -0.000061035156, 1e-8}
	for _, dt := range []onnxpb.TensorProto_DataType{onnxpb.TensorProto_FLOAT, onnxpb.TensorProto_FLOAT16,
		onnxpb.TensorProto_BFLOAT16, onnxpb.TensorProto_DOUBLE} {
		tp, err := NewTensor("w", []int{len(vals)}, vals, dt)
		if err != nil {
			t.Fatal(err)
		}
		got, err := TensorFloat32(tp, "")
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range vals {
			want := v
			switch dt {
			case onnxpb.TensorProto_FLOAT16:
				want = checkpoints.F16ToF32(checkpoints.F32ToF16(v))
			case onnxpb.TensorProto_BFLOAT16:
				want = checkpoints.BF16ToF32(checkpoints.F32ToBF16(v))
			}
			if got[i] != want {
				t.Errorf("%s [%d]: %v, want %v", dt, i, got[i], want)
			}
		}
	}
	if _, err := NewTensor("w", []int{2, 2}, vals, onnxpb.TensorProto_FLOAT); err == nil {
		t.Error("NewTensor accepted 7 values for dims [2 2]")
	}
	ints := []int64{-1, 1 << 40, 7}
	tp, err := NewInt64Tensor("i", []int{3}, ints)
	if err != nil {
		t.Fatal(err)
	}
	got, err := TensorInt64(tp, "")
	if err != nil || got[0] != -1 || got[1] != 1<<40 || got[2] != 7 {
		t.Errorf("int64: %v %v", got, err)
	}
}
