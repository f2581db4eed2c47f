package kern

import "math"

// F32ToBF16 converts src to bf16 bit patterns in dst (len(dst) >= len(src)), rounding to
// nearest even; NaNs stay NaN (quiet), infinities and signed zeros are kept.
func F32ToBF16(dst []uint16, src []float32) {
	dst = dst[:len(src)]
	for i, v := range src {
		dst[i] = f32ToBF16(v)
	}
}

// BF16ToF32 widens bf16 bit patterns in src to fp32 in dst (len(dst) >= len(src)); exact.
func BF16ToF32(dst []float32, src []uint16) {
	dst = dst[:len(src)]
	for i, v := range src {
		dst[i] = bf16ToF32(v)
	}
}

func f32ToBF16(v float32) uint16 {
	b := math.Float32bits(v)
	if b&0x7fffffff > 0x7f800000 { // NaN: keep sign and top payload, force quiet
		return uint16(b>>16) | 0x0040
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

func bf16ToF32(v uint16) float32 { return math.Float32frombits(uint32(v) << 16) }
