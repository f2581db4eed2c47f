//go:build !amd64

package kern

func useVec() bool { return false }

func expShiftVec(x []float32, m, s float32) float32 { panic("kern: no vector kernels") }

func swigluVec(out, g, u []float32) { panic("kern: no vector kernels") }

func dotsVec(q, k, out []float32) { panic("kern: no vector kernels") }

func axpyRowsVec(w, v, o []float32) { panic("kern: no vector kernels") }

func adamwVec(p, g, m, v []float32, c *AdamWConsts) { panic("kern: no vector kernels") }

func expsVec(dst, src []float64) int { panic("kern: no vector kernels") }

func swigluBackVec(dg, du, do, g, u []float32) { panic("kern: no vector kernels") }
