package kern

// WidenBF16 widens bf16 bit patterns in src to fp32 in dst (len(dst) >= len(src)), exactly,
// as BF16ToF32 does, on the vector path for whole groups of 32 values.
func WidenBF16(dst []float32, src []uint16) {
	n := len(src) &^ 31
	if n > 0 {
		_ = dst[n-1]
		cur.widen(&dst[0], &src[0], n)
	}
	BF16ToF32(dst[n:], src[n:])
}
