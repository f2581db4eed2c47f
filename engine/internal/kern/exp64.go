package kern

import "math"

// Exps sets dst[i] = math.Exp(src[i]) for i < len(src), bit for bit, four at a time with AVX2
// where the CPU has it (exp64_amd64.s repeats math.Exp's steps on packed lanes). Rows of float64
// exponentials as long as a vocabulary (sampling, log-probs) run several times faster than
// math.Exp called on each value, and give exactly its values. dst and src must not overlap.
func Exps(dst, src []float64) {
	if len(dst) < len(src) {
		panic("kern: Exps length mismatch")
	}
	if len(src) == 0 {
		return
	}
	if &dst[0] == &src[0] {
		panic("kern: Exps with dst == src")
	}
	n := 0
	if useVec() {
		n = len(src) &^ 3
		if n > 0 && expsVec(dst[:n], src[:n]) > 0 {
			// Lanes outside [-708, 709] or NaN take math.Exp's overflow, denormal and
			// special-value paths, which the kernel does not repeat.
			for i, x := range src[:n] {
				if !(x >= -708 && x <= 709) {
					dst[i] = math.Exp(x)
				}
			}
		}
	}
	for i := n; i < len(src); i++ {
		dst[i] = math.Exp(src[i])
	}
}
