package enginetest

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// op is one case: input shapes, a forward returning the output on the host, and a backward
// returning the gradient of every input given the output gradient dy (host data, the
// output's shape).
type op struct {
	name   string
	shapes map[string][]int
	fwd    func(b engine.TrainBackend, in map[string]*engine.Tensor) []float32
	bwd    func(b engine.TrainBackend, in map[string]*engine.Tensor, dy []float32) map[string][]float32
}

// RunOps checks every backward op of b against finite differences, and AdamW against its
// formula.
func RunOps(t *testing.T, b engine.TrainBackend) {
	for _, o := range ops() {
		t.Run(o.name, func(t *testing.T) { checkOp(t, b, o) })
	}
	t.Run("AdamW", func(t *testing.T) { checkAdamW(t, b) })
}

func upload(t *testing.T, b engine.TrainBackend, data []float32, shape []int) *engine.Tensor {
	t.Helper()
	x, err := b.UploadParam(data, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func download(b engine.TrainBackend, x *engine.Tensor) []float32 {
	out := make([]float32, x.Len())
	if err := b.Download(x, out); err != nil {
		panic(err)
	}
	return out
}

func tensorFrom(b engine.TrainBackend, data []float32, shape ...int) *engine.Tensor {
	x, err := b.Upload(engine.F32, data, false, shape...)
	if err != nil {
		panic(err)
	}
	return x
}

func checkOp(t *testing.T, b engine.TrainBackend, o op) {
	rng := rand.New(rand.NewPCG(11, uint64(len(o.name))))
	names := make([]string, 0, len(o.shapes))
	for n := range o.shapes {
		names = append(names, n)
	}
	sort.Strings(names)
	host := map[string][]float32{}
	for _, n := range names {
		s := o.shapes[n]
		l := 1
		for _, d := range s {
			l *= d
		}
		host[n] = make([]float32, l)
		for i := range host[n] {
			host[n][i] = float32(rng.NormFloat64())
		}
	}
	run := func() []float32 {
		in := map[string]*engine.Tensor{}
		for _, n := range names {
			in[n] = upload(t, b, host[n], o.shapes[n])
		}
		y := o.fwd(b, in)
		for _, x := range in {
			b.Free(x)
		}
		return y
	}
	y := run()
	r := make([]float32, len(y))
	for i := range r {
		r[i] = float32(rng.NormFloat64())
	}
	loss := func() float64 {
		var l float64
		for i, v := range run() {
			l += float64(r[i]) * float64(v)
		}
		return l
	}
	in := map[string]*engine.Tensor{}
	for _, n := range names {
		in[n] = upload(t, b, host[n], o.shapes[n])
	}
	grads := o.bwd(b, in, r)
	const h = 1e-2
	for _, n := range names {
		g, ok := grads[n]
		if !ok {
			continue
		}
		x := host[n]
		if len(g) != len(x) {
			t.Fatalf("%s: gradient of %s has %d values, input has %d", o.name, n, len(g), len(x))
		}
		for trial := 0; trial < min(len(x), 64); trial++ {
			j := trial // every entry of small inputs, 64 random ones of larger
			if len(x) > 64 {
				j = rng.IntN(len(x))
			}
			old := x[j]
			x[j] = old + h
			lp := loss()
			x[j] = old - h
			lm := loss()
			x[j] = old
			fd := (lp - lm) / (2 * h)
			if d := math.Abs(float64(g[j]) - fd); d > 2e-3*(1+math.Abs(fd)) || math.IsNaN(float64(g[j])) {
				t.Errorf("%s: d/d%s[%d] = %.6g, finite difference %.6g", o.name, n, j, g[j], fd)
			}
		}
	}
}

func ops() []op {
	const T, H, KV, Dh = 7, 4, 2, 6
	seqStart := []int32{0, 3, 7}
	pos := []int32{0, 1, 2, 0, 1, 2, 3}
	return []op{
		{
			name:   "MatMul",
			shapes: map[string][]int{"x": {5, 7}, "w": {6, 7}},
			fwd: func(b engine.TrainBackend, in map[string]*engine.Tensor) []float32 {
				y := b.Alloc(5, 6)
				b.MatMul(y, in["x"], in["w"])
				return download(b, y)
			},
			bwd: func(b engine.TrainBackend, in map[string]*engine.Tensor, dy []float32) map[string][]float32 {
				d := tensorFrom(b, dy, 5, 6)
				dx, dw := b.Alloc(5, 7), b.Alloc(6, 7)
				b.MatMulDX(dx, d, in["w"])
				b.MatMulDW(dw, d, in["x"])
				return map[string][]float32{"x": download(b, dx), "w": download(b, dw)}
			},
		},
		{
			name:   "AddBias",
			shapes: map[string][]int{"x": {4, 6}, "bias": {6}},
			fwd: func(b engine.TrainBackend, in map[string]*engine.Tensor) []float32 {
				y := b.Alloc(4, 6)
				b.Copy(y, in["x"])
				b.AddBias(y, in["bias"])
				return download(b, y)
			},
			bwd: func(b engine.TrainBackend, in map[string]*engine.Tensor, dy []float32) map[string][]float32 {
				db := b.Alloc(6)
				b.BiasDW(db, tensorFrom(b, dy, 4, 6))
				return map[string][]float32{"x": dy, "bias": download(b, db)}
			},
		},
		rmsnormOp("RMSNorm", 8),
		rmsnormOp("RMSNormGroups", 4),
		{
			name:   "RoPE",
			shapes: map[string][]int{"x": {T, 2 * Dh}},
			fwd: func(b engine.TrainBackend, in map[string]*engine.Tensor) []float32 {
				cos, sin := ropeTables(b, 1)
				y := b.Alloc(T, 2*Dh)
				b.Copy(y, in["x"])
				b.RoPE(y, Dh, pos, cos, sin)
				return download(b, y)
			},
			bwd: func(b engine.TrainBackend, in map[string]*engine.Tensor, dy []float32) map[string][]float32 {
				cos, nsin := ropeTables(b, -1)
				d := tensorFrom(b, dy, T, 2*Dh)
				b.RoPE(d, Dh, pos, cos, nsin)
				return map[string][]float32{"x": download(b, d)}
			},
		},
		{
			name:   "Attention",
			shapes: map[string][]int{"q": {T, H * Dh}, "k": {T, KV * Dh}, "v": {T, KV * Dh}},
			fwd: func(b engine.TrainBackend, in map[string]*engine.Tensor) []float32 {
				out, lse := b.Alloc(T, H*Dh), b.Alloc(T, H)
				b.AttentionTrain(out, lse, in["q"], in["k"], in["v"], seqStart)
				return download(b, out)
			},
			bwd: func(b engine.TrainBackend, in map[string]*engine.Tensor, dy []float32) map[string][]float32 {
				out, lse := b.Alloc(T, H*Dh), b.Alloc(T, H)
				b.AttentionTrain(out, lse, in["q"], in["k"], in["v"], seqStart)
				dq, dk, dv := b.Alloc(T, H*Dh), b.Alloc(T, KV*Dh), b.Alloc(T, KV*Dh)
				b.AttentionBackward(dq, dk, dv, tensorFrom(b, dy, T, H*Dh), in["q"], in["k"], in["v"], out, lse, seqStart)
				return map[string][]float32{"q": download(b, dq), "k": download(b, dk), "v": download(b, dv)}
			},
		},
		{
			name:   "SwiGLU",
			shapes: map[string][]int{"gate": {3, 5}, "up": {3, 5}},
			fwd: func(b engine.TrainBackend, in map[string]*engine.Tensor) []float32 {
				y := b.Alloc(3, 5)
				b.SwiGLU(y, in["gate"], in["up"])
				return download(b, y)
			},
			bwd: func(b engine.TrainBackend, in map[string]*engine.Tensor, dy []float32) map[string][]float32 {
				dg, du := b.Alloc(3, 5), b.Alloc(3, 5)
				b.SwiGLUBackward(dg, du, tensorFrom(b, dy, 3, 5), in["gate"], in["up"])
				return map[string][]float32{"gate": download(b, dg), "up": download(b, du)}
			},
		},
		{
			name:   "Embedding",
			shapes: map[string][]int{"table": {6, 4}},
			fwd: func(b engine.TrainBackend, in map[string]*engine.Tensor) []float32 {
				y := b.Alloc(5, 4)
				b.Embedding(y, in["table"], []int32{1, 3, 1, 5, 0})
				return download(b, y)
			},
			bwd: func(b engine.TrainBackend, in map[string]*engine.Tensor, dy []float32) map[string][]float32 {
				dt := b.Alloc(6, 4)
				b.EmbeddingBackward(dt, tensorFrom(b, dy, 5, 4), []int32{1, 3, 1, 5, 0})
				return map[string][]float32{"table": download(b, dt)}
			},
		},
		{
			name:   "GatherRows",
			shapes: map[string][]int{"x": {5, 3}},
			fwd: func(b engine.TrainBackend, in map[string]*engine.Tensor) []float32 {
				y := b.Alloc(3, 3)
				b.GatherRows(y, in["x"], []int32{4, 0, 2})
				return download(b, y)
			},
			bwd: func(b engine.TrainBackend, in map[string]*engine.Tensor, dy []float32) map[string][]float32 {
				dx := b.Alloc(5, 3)
				b.ScatterAddRows(dx, tensorFrom(b, dy, 3, 3), []int32{4, 0, 2})
				return map[string][]float32{"x": download(b, dx)}
			},
		},
		logProbsOp(),
	}
}

// rmsnormOp normalises groups of n elements of x [3, 8].
func rmsnormOp(name string, n int) op {
	return op{
		name:   name,
		shapes: map[string][]int{"x": {3, 8}, "w": {n}},
		fwd: func(b engine.TrainBackend, in map[string]*engine.Tensor) []float32 {
			y := b.Alloc(3, 8)
			b.RMSNorm(y, in["x"], in["w"], 1e-5)
			return download(b, y)
		},
		bwd: func(b engine.TrainBackend, in map[string]*engine.Tensor, dy []float32) map[string][]float32 {
			dx, dw := b.Alloc(3, 8), b.Alloc(n)
			b.RMSNormBackward(dx, dw, tensorFrom(b, dy, 3, 8), in["x"], in["w"], 1e-5)
			return map[string][]float32{"x": download(b, dx), "w": download(b, dw)}
		},
	}
}

// ropeTables returns cos and sign·sin tables [8, 3] for head dim 6 and theta 100.
func ropeTables(b engine.TrainBackend, sign float64) (cos, sin *engine.Tensor) {
	const P, half = 8, 3
	c, s := make([]float32, P*half), make([]float32, P*half)
	for p := 0; p < P; p++ {
		for i := 0; i < half; i++ {
			a := float64(p) * math.Pow(100, -float64(2*i)/float64(2*half))
			c[p*half+i], s[p*half+i] = float32(math.Cos(a)), float32(sign*math.Sin(a))
		}
	}
	return tensorFrom(b, c, P, half), tensorFrom(b, s, P, half)
}

// logProbsOp checks LogProbsBackward: the "output" is the vector of log-probs followed by the
// entropies of 3 rows of logits at temperature 0.7, so dy holds dlogp then dent.
func logProbsOp() op {
	const R, V = 3, 7
	targets := []int32{2, 6, 0}
	const temp = 0.7
	return op{
		name:   "LogProbs",
		shapes: map[string][]int{"logits": {R, V}},
		fwd: func(b engine.TrainBackend, in map[string]*engine.Tensor) []float32 {
			lp, ent, err := b.LogProbs(in["logits"], targets, temp)
			if err != nil {
				panic(err)
			}
			return append(lp, ent...)
		},
		bwd: func(b engine.TrainBackend, in map[string]*engine.Tensor, dy []float32) map[string][]float32 {
			d := b.Alloc(R, V)
			b.LogProbsBackward(d, in["logits"], targets, dy[:R], dy[R:], temp)
			return map[string][]float32{"logits": download(b, d)}
		},
	}
}

// checkAdamW runs three AdamW steps on random data and compares with torch.optim.AdamW's
// formula worked in float64.
func checkAdamW(t *testing.T, b engine.TrainBackend) {
	rng := rand.New(rand.NewPCG(3, 1))
	const n = 1000
	p, m, v := make([]float64, n), make([]float64, n), make([]float64, n)
	pf := make([]float32, n)
	for i := range p {
		pf[i] = float32(rng.NormFloat64())
		p[i] = float64(pf[i])
	}
	pt := upload(t, b, pf, []int{n})
	mt, vt := b.Alloc(n), b.Alloc(n)
	const lr, b1, b2, eps, wd = 1e-2, 0.9, 0.95, 1e-8, 0.1
	for step := 1; step <= 3; step++ {
		g := make([]float32, n)
		for i := range g {
			g[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(5)-3)))
		}
		h := engine.AdamWStep{LR: lr, Beta1: b1, Beta2: b2, Eps: eps, WeightDecay: wd,
			BC1: 1 - math.Pow(b1, float64(step)), BC2: 1 - math.Pow(b2, float64(step))}
		b.AdamW(pt, tensorFrom(b, g, n), mt, vt, h)
		for i := range p {
			gi := float64(g[i])
			p[i] *= 1 - lr*wd
			m[i] = b1*m[i] + (1-b1)*gi
			v[i] = b2*v[i] + (1-b2)*gi*gi
			p[i] -= lr / h.BC1 * m[i] / (math.Sqrt(v[i])/math.Sqrt(h.BC2) + eps)
		}
	}
	got := download(b, pt)
	for i := range p {
		if d := math.Abs(float64(got[i]) - p[i]); d > 1e-6*(1+math.Abs(p[i])) {
			t.Fatalf("AdamW p[%d] = %.9g, formula %.9g", i, got[i], p[i])
		}
	}
}
