//go:build amd64

package kern

import "golang.org/x/sys/cpu"

// Vector kernels of attention and the MLP (attn_amd64.s).

//go:noescape
func expShiftAVX2(x *float32, n int, m, s float32) float32

//go:noescape
func swigluAVX2(out, gate, up *float32, n int)

//go:noescape
func dotsAVX2(q, k, out *float32, n, dh int)

//go:noescape
func axpyRowsAVX2(w, v, o *float32, n, dh int)

var vecAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// useVec says whether the asm vector kernels run: the CPU has them and the active path is not
// the generic one (SetISA("generic") makes every kernel pure Go).
func useVec() bool { return vecAVX2 && cur.name != "generic" }

func expShiftVec(x []float32, m, s float32) float32 {
	return expShiftAVX2(&x[0], len(x), m, s)
}

func swigluVec(out, g, u []float32) { swigluAVX2(&out[0], &g[0], &u[0], len(out)) }

//go:noescape
func swigluBackAVX2(dg, du, dout, gate, up *float32, n int)

func swigluBackVec(dg, du, do, g, u []float32) {
	swigluBackAVX2(&dg[0], &du[0], &do[0], &g[0], &u[0], len(do))
}

func dotsVec(q, k, out []float32) { dotsAVX2(&q[0], &k[0], &out[0], len(out), len(q)) }

func axpyRowsVec(w, v, o []float32) { axpyRowsAVX2(&w[0], &v[0], &o[0], len(w), len(o)) }

//go:noescape
func adamwAVX2(p, grad, m, v *float32, n int, c *AdamWConsts)

func adamwVec(p, g, m, v []float32, c *AdamWConsts) {
	adamwAVX2(&p[0], &g[0], &m[0], &v[0], len(p), c)
}

//go:noescape
func expsAVX2(dst, src *float64, n int) (outside int)

func expsVec(dst, src []float64) int { return expsAVX2(&dst[0], &src[0], len(src)) }
