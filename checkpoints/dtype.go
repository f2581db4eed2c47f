package checkpoints

import "math"

// The half-precision conversions of the module: safetensors BF16/F16 tensors, ONNX
// BFLOAT16/FLOAT16 initializers and every tool that stores weights narrower than fp32 use
// these. Widening is exact. Narrowing rounds to nearest, ties to even (as PyTorch's .to() and
// ONNX Runtime's Cast do): a value beyond the range becomes an infinity of its sign, a value
// too small for the format becomes a subnormal or a signed zero, and a NaN stays a NaN with
// the quiet bit set and the top bits of its payload kept. engine/internal/kern keeps its own
// copy of the bf16 pair, with the same rounding, on its hot path (engine imports nothing of
// checkpoints).

// BF16ToF32 widens a bfloat16 (the top 16 bits of an fp32) exactly.
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F32ToBF16 rounds an fp32 to the nearest bfloat16, ties to even, as PyTorch does; NaN stays
// a (quiet) NaN and overflow rounds to infinity.
func F32ToBF16(v float32) uint16 {
	b := math.Float32bits(v)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

// F16ToF32 widens an IEEE 754 half exactly (subnormals, infinities and NaN included).
func F16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h & 0x3ff)
	switch {
	case exp == 0 && frac == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal: frac x 2^-24, normalised for fp32
		e := uint32(127 - 15 + 1)
		for frac&0x400 == 0 {
			frac <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (frac&0x3ff)<<13)
	case exp == 31:
		return math.Float32frombits(sign | 0x7f800000 | frac<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | frac<<13)
}

// F32ToF16 rounds an fp32 to the nearest IEEE 754 half, ties to even; values beyond the half
// range become infinity, tiny ones a subnormal or zero; NaN stays a (quiet) NaN.
func F32ToF16(v float32) uint16 {
	b := math.Float32bits(v)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	frac := b & 0x7fffff
	if exp == 0xff {
		if frac != 0 {
			return sign | 0x7e00 | uint16(frac>>13)
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 31 {
		return sign | 0x7c00
	}
	var m uint32 // the half's bits without sign, before rounding
	var shift uint
	if e <= 0 { // subnormal half (or zero): value = m x 2^-24
		if e < -10 {
			return sign // below half of the smallest subnormal
		}
		frac |= 0x800000
		shift = uint(14 - e)
		m = frac >> shift
	} else {
		shift = 13
		m = uint32(e)<<10 | frac>>13
	}
	rem := frac & (1<<shift - 1)
	half := uint32(1) << (shift - 1)
	if rem > half || rem == half && m&1 == 1 {
		m++ // a carry into the exponent is the right rounding (up to infinity at the top)
	}
	return sign | uint16(m)
}
