package checkpoints

import (
	"bytes"
	"math"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestEncodeMixedDTypes: EncodeSafetensors writes each tensor in its own dtype; read back, the
// F32 tensor is exact and the BF16 one is its values rounded to nearest even (1 + 2⁻⁸ is a tie
// and goes to 1, 1 + 3·2⁻⁸ goes up to 1 + 2⁻⁶, worked by hand), and an unwritable dtype is an
// error naming the tensor.
func TestEncodeMixedDTypes(t *testing.T) {
	vals := []float32{1 + 1.0/256, 1 + 3.0/256, -0.1, 3e38}
	tensors := map[string]engine.HostTensor{
		"a.weight": {Shape: []int{2, 2}, Data: vals},
		"b.weight": {Shape: []int{4}, Data: vals},
	}
	dtypes := map[string]DType{"a.weight": F32, "b.weight": BF16}
	var buf bytes.Buffer
	if err := EncodeSafetensors(&buf, tensors, func(n string) DType { return dtypes[n] }, nil); err != nil {
		t.Fatal(err)
	}
	f, err := ParseSafetensors(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	if f.DTypes["a.weight"] != F32 || f.DTypes["b.weight"] != BF16 {
		t.Fatalf("dtypes %v", f.DTypes)
	}
	wantB := []float32{1, 1 + 1.0/64, BF16ToF32(F32ToBF16(-0.1)), BF16ToF32(F32ToBF16(3e38))}
	for i, v := range vals {
		if got := f.Tensors["a.weight"].Data[i]; math.Float32bits(got) != math.Float32bits(v) {
			t.Errorf("a[%d] = %v, want %v", i, got, v)
		}
		if got := f.Tensors["b.weight"].Data[i]; got != wantB[i] {
			t.Errorf("b[%d] = %v, want %v", i, got, wantB[i])
		}
	}
	if want := 8 + 4*4 + 4*2; buf.Len() < want {
		t.Errorf("%d bytes, want at least %d", buf.Len(), want)
	}
	dtypes["b.weight"] = "I8"
	if err := EncodeSafetensors(&buf, tensors, func(n string) DType { return dtypes[n] }, nil); err == nil || !strings.Contains(err.Error(), `tensor "b.weight": dtype "I8"`) {
		t.Errorf("dtype I8: %v", err)
	}
}
