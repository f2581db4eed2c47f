package onnx

import (
	"math"
	"testing"

	"github.com/prolong-rl/prolong/onnx/onnxpb"
)

// TestHalfConversionsExhaustive checks the float16 and bfloat16 encoders on every 16-bit
// pattern: each value reads back to itself, and each exact midpoint between neighbours
// rounds to the even one.
func TestHalfConversionsExhaustive(t *testing.T) {
	bf16 := func(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }
	for _, c := range []struct {
		name   string
		enc    func(float32) uint16
		dec    func(uint16) float32
		maxFin uint16 // largest finite positive pattern
	}{
		{"float16", Float32ToFloat16, Float16ToFloat32, 0x7bff},
		{"bfloat16", Float32ToBFloat16, bf16, 0x7f7f},
	} {
		bad := 0
		for i := 0; i < 1<<16; i++ {
			h := uint16(i)
			v := c.dec(h)
			if v != v {
				if g := c.dec(c.enc(v)); g == g {
					t.Errorf("%s: NaN %#04x encodes to non-NaN %v", c.name, h, g)
				}
				continue
			}
			if g := c.enc(v); g != h {
				bad++
				if bad < 5 {
					t.Errorf("%s: %#04x (%v) encodes to %#04x", c.name, h, v, g)
				}
			}
			if h&0x7fff < c.maxFin { // midpoint to the next pattern of the same sign
				lo, hi := float64(v), float64(c.dec(h+1))
				mid := float32((lo + hi) / 2)
				if float64(mid) != (lo+hi)/2 {
					continue // not representable in float32 (never for these formats)
				}
				want := h
				if h&1 == 1 {
					want = h + 1
				}
				if g := c.enc(mid); g != want {
					bad++
					if bad < 5 {
						t.Errorf("%s: midpoint %v of %#04x and %#04x encodes to %#04x, want %#04x", c.name, mid, h, h+1, g, want)
					}
				}
			}
		}
		if v := c.dec(c.enc(float32(math.Inf(1)))); !math.IsInf(float64(v), 1) {
			t.Errorf("%s: +inf encodes to %v", c.name, v)
		}
	}
	if g := Float32ToFloat16(70000); g != 0x7c00 {
		t.Errorf("float16 overflow: %#04x, want +inf", g)
	}
}

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
				want = Float16ToFloat32(Float32ToFloat16(v))
			case onnxpb.TensorProto_BFLOAT16:
				want = math.Float32frombits(uint32(Float32ToBFloat16(v)) << 16)
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
