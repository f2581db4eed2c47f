package kern

import "fmt"

// Row kernels of attention and the MLP. Each has an AVX2 path (attn_amd64.s) and a Go one;
// the AVX2 exponentials equal Expf bit for bit, the sums may differ in the last bits.

// ExpShift sets x[i] = e^((x[i]-m)·s) (Expf) and returns Σ x[i]: a softmax's numerators with
// m its row maximum and s the logits' scale.
func ExpShift(x []float32, m, s float32) float32 {
	n := 0
	var sum float32
	if useVec() {
		n = len(x) &^ 7
		if n > 0 {
			sum = expShiftVec(x[:n], m, s)
		}
	}
	for i := n; i < len(x); i++ {
		x[i] = Expf((x[i] - m) * s)
		sum += x[i]
	}
	return sum
}

// MaxOf returns the largest of m and the elements of x, for rows that hold no NaN (a NaN is
// skipped, not propagated). Four independent running maxima: Go's max on floats orders NaN
// and signed zeros and compiles to a chain of branches, several times slower on a score row.
func MaxOf(x []float32, m float32) float32 {
	m0, m1, m2, m3 := m, m, m, m
	i := 0
	for ; i+4 <= len(x); i += 4 {
		v := x[i : i+4 : i+4]
		if v[0] > m0 {
			m0 = v[0]
		}
		if v[1] > m1 {
			m1 = v[1]
		}
		if v[2] > m2 {
			m2 = v[2]
		}
		if v[3] > m3 {
			m3 = v[3]
		}
	}
	for ; i < len(x); i++ {
		if x[i] > m0 {
			m0 = x[i]
		}
	}
	if m1 > m0 {
		m0 = m1
	}
	if m2 > m0 {
		m0 = m2
	}
	if m3 > m0 {
		m0 = m3
	}
	return m0
}

// SwiGLU sets out[i] = Silu(g[i])·u[i] (len(g), len(u) >= len(out)).
func SwiGLU(out, g, u []float32) {
	if len(g) < len(out) || len(u) < len(out) {
		panic(fmt.Sprintf("kern: SwiGLU of %d outputs with %d gates and %d ups", len(out), len(g), len(u)))
	}
	n := 0
	if useVec() {
		n = len(out) &^ 7
		if n > 0 {
			swigluVec(out[:n], g[:n], u[:n])
		}
	}
	for i := n; i < len(out); i++ {
		out[i] = Silu(g[i]) * u[i]
	}
}

// SwiGLUBackward sets, from the output gradient do of out = Silu(g)·u, with s = sigmoid(g[i]):
// dg[i] = do[i]·u[i]·s·(1 + g[i]·(1-s)) and du[i] = do[i]·g[i]·s, for i < len(do). The AVX2
// path gives the Go loop's bits (each product rounded on its own, s through Expf); an output
// may alias the input of the same index.
func SwiGLUBackward(dg, du, do, g, u []float32) {
	n := len(do)
	if len(dg) < n || len(du) < n || len(g) < n || len(u) < n {
		panic(fmt.Sprintf("kern: SwiGLUBackward of %d values with dg %d, du %d, g %d, u %d", n, len(dg), len(du), len(g), len(u)))
	}
	v := 0
	if useVec() {
		v = n &^ 7
		if v > 0 {
			swigluBackVec(dg[:v], du[:v], do[:v], g[:v], u[:v])
		}
	}
	for i := v; i < n; i++ {
		x, d := g[i], do[i]
		s := 1 / (1 + Expf(-x))
		dg[i] = float32(float32(d*u[i])*s) * (1 + float32(x*(1-s)))
		du[i] = float32(d*x) * s
	}
}

// Dots sets out[p] = q·k[p*dh : (p+1)*dh] for p < len(out), dh = len(q): a query's scores
// against rows of keys stored one after another.
func Dots(q, k, out []float32) {
	dh := len(q)
	if len(k) < len(out)*dh {
		panic(fmt.Sprintf("kern: Dots of %d rows of %d with %d keys' values", len(out), dh, len(k)))
	}
	n := 0
	if useVec() && dh > 0 && dh%8 == 0 {
		n = len(out) &^ 3
		if n > 0 {
			dotsVec(q, k[:n*dh], out[:n])
		}
	}
	for p := n; p < len(out); p++ {
		out[p] = Dot(q, k[p*dh:(p+1)*dh])
	}
}

// AxpyRows adds Σ_p w[p]·v[p*dh : (p+1)*dh] to o, dh = len(o): probability-weighted value
// rows stored one after another.
func AxpyRows(w, v, o []float32) {
	dh := len(o)
	if len(v) < len(w)*dh {
		panic(fmt.Sprintf("kern: AxpyRows of %d rows of %d with %d values", len(w), dh, len(v)))
	}
	if len(w) == 0 {
		return
	}
	if useVec() && dh%8 == 0 {
		axpyRowsVec(w, v[:len(w)*dh], o)
		return
	}
	for p, wp := range w {
		Axpy(wp, v[p*dh:(p+1)*dh], o)
	}
}
