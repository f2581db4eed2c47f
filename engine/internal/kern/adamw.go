package kern

import "fmt"

// AdamWConsts are the per-step constants of AdamW's update (see AdamW).
type AdamWConsts struct {
	Decay      float32 // 1 - lr·weight_decay
	B1, B2     float32 // β1, β2
	C1, C2     float32 // 1-β1, 1-β2
	Step       float32 // lr / (1 - β1^t)
	InvSqrtBC2 float32 // 1 / sqrt(1 - β2^t)
	Eps        float32
}

// AdamW updates parameters p with gradients g and moments m, v in place:
//
//	m = β1·m + (1-β1)·g;  v = β2·v + (1-β2)·g·g
//	p = p·decay - step·m / (sqrt(v)·InvSqrtBC2 + eps)
//
// in float32, each operation rounded in that order (the AVX2 path gives the same bits).
func AdamW(p, g, m, v []float32, c AdamWConsts) {
	if len(g) < len(p) || len(m) < len(p) || len(v) < len(p) {
		panic(fmt.Sprintf("kern: AdamW of %d parameters with %d gradients, %d and %d moments", len(p), len(g), len(m), len(v)))
	}
	n := 0
	if useVec() {
		n = len(p) &^ 7
		if n > 0 {
			adamwVec(p[:n], g[:n], m[:n], v[:n], &c)
		}
	}
	adamwGo(p[n:], g[n:], m[n:], v[n:], c)
}

func adamwGo(p, g, m, v []float32, c AdamWConsts) {
	for i := range p {
		gi := g[i]
		// Products rounded on their own (no FMA fusion), as the AVX2 kernel computes them.
		mi := float32(c.B1*m[i]) + float32(c.C1*gi)
		vi := float32(c.B2*v[i]) + float32(float32(c.C2*gi)*gi)
		m[i], v[i] = mi, vi
		p[i] = float32(p[i]*c.Decay) - float32(c.Step*mi)/(float32(Sqrtf(vi)*c.InvSqrtBC2)+c.Eps)
	}
}
