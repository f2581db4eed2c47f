package enginetest

import (
	"fmt"
	"math"

	"github.com/prolong-rl/prolong/engine"
)

// Training ops of engine.TrainBackend. Gradients an op writes start from random values (an
// op must overwrite them); gradients an op accumulates into start from random values too (it
// must add to them).

func trainOpCases(o Options) []testCase {
	var cs []testCase
	type attnCase struct {
		s    attnShape
		lens []int
	}
	var acs []attnCase
	for _, s := range attnShapes(o) {
		lens := []int{1, 7, 20}
		if !o.Short {
			lens = append(lens, 70)
		}
		acs = append(acs, attnCase{s, lens})
	}
	if !o.Short {
		// Long sequences (the CPU's tiled path from 1024 rows): odd lengths around its 64-row
		// tiles, GQA groups, packed sequences, 4k tokens.
		acs = append(acs, attnCase{attnShape{4, 2, 24}, []int{1, 1025, 333}}, attnCase{attnShape{6, 1, 64}, []int{4097}})
		// The head dims of GPU tiled kernels (64 and 128, 64-row tiles): packed sequences with
		// odd lengths on both sides of tile edges, GQA groups 2 and 7 (the CPU takes its tiled
		// path for the 1100-row sequence).
		acs = append(acs, attnCase{attnShape{4, 2, 64}, []int{63, 1, 1100, 129}}, attnCase{attnShape{14, 2, 128}, []int{1, 520, 333}})
	}
	for _, ac := range acs {
		s, lens := ac.s, ac.lens
		seqStart := []int32{0}
		for _, n := range lens {
			seqStart = append(seqStart, seqStart[len(seqStart)-1]+int32(n))
		}
		T := int(seqStart[len(seqStart)-1])
		shape := fmt.Sprintf("%s,lens=%v", s, lens)
		qw, kw := s.h*s.dh, s.kv*s.dh
		cs = append(cs, testCase{"AttentionTrain/" + shape, func(c *caseCtx) {
			q, k, v := randn(c.rng, T*qw, 1), randn(c.rng, T*kw, 1), randn(c.rng, T*kw, 1)
			initO, initL := randn(c.rng, T*qw, 1), randn(c.rng, T*s.h, 1)
			c.both(c.tol.Attention, func(e *env) []output {
				out, lse := e.up(initO, T, qw), e.up(initL, T, s.h)
				e.b.AttentionTrain(out, lse, e.up(q, T, qw), e.up(k, T, kw), e.up(v, T, kw), seqStart)
				return []output{{"out", e.down(out)}, {"lse", e.down(lse)}}
			})
		}})
		cs = append(cs, testCase{"AttentionBackward/" + shape, func(c *caseCtx) {
			q, k, v, dout := randn(c.rng, T*qw, 1), randn(c.rng, T*kw, 1), randn(c.rng, T*kw, 1), randn(c.rng, T*qw, 1)
			// out and lse come from the reference, so that only the backward is under test.
			var out, lse []float32
			withEnv(c.ref, func(e *env) []output {
				ot, lt := e.alloc(T, qw), e.alloc(T, s.h)
				e.b.AttentionTrain(ot, lt, e.up(q, T, qw), e.up(k, T, kw), e.up(v, T, kw), seqStart)
				out, lse = e.down(ot), e.down(lt)
				return nil
			})
			init := [][]float32{randn(c.rng, T*qw, 1), randn(c.rng, T*kw, 1), randn(c.rng, T*kw, 1)}
			c.both(c.tol.Attention, func(e *env) []output {
				dq, dk, dv := e.up(init[0], T, qw), e.up(init[1], T, kw), e.up(init[2], T, kw)
				e.b.AttentionBackward(dq, dk, dv, e.up(dout, T, qw), e.up(q, T, qw), e.up(k, T, kw), e.up(v, T, kw),
					e.up(out, T, qw), e.up(lse, T, s.h), seqStart)
				return []output{{"dq", e.down(dq)}, {"dk", e.down(dk)}, {"dv", e.down(dv)}}
			})
		}})
	}
	for _, s := range matmulShapes(o) {
		for _, kind := range []string{"param", "f32"} {
			cs = append(cs, testCase{"MatMulDX/" + s.String() + "/" + kind, func(c *caseCtx) {
				dy, w, init := randn(c.rng, s.m*s.n, 1), randn(c.rng, s.n*s.k, 1/math.Sqrt(float64(s.n))), randn(c.rng, s.m*s.k, 1)
				c.both(c.tol.MatMul, func(e *env) []output {
					wt := e.param(w, s.n, s.k)
					if kind == "f32" {
						wt = e.weight(engine.F32, w, s.n, s.k)
					}
					dx := e.up(init, s.m, s.k)
					e.b.MatMulDX(dx, e.up(dy, s.m, s.n), wt)
					return []output{{"", e.down(dx)}}
				})
			}})
		}
		cs = append(cs, testCase{"MatMulDW/" + s.String(), func(c *caseCtx) {
			dy, x, dw0 := randn(c.rng, s.m*s.n, 1), randn(c.rng, s.m*s.k, 1), randn(c.rng, s.n*s.k, 1)
			c.both(c.tol.MatMul, func(e *env) []output {
				dw := e.param(dw0, s.n, s.k) // accumulates
				e.b.MatMulDW(dw, e.up(dy, s.m, s.n), e.up(x, s.m, s.k))
				return []output{{"", e.down(dw)}}
			})
		}})
	}
	cs = append(cs, testCase{"BiasDW/M=17,N=129", func(c *caseCtx) {
		dy, db0 := randn(c.rng, 17*129, 1), randn(c.rng, 129, 1)
		c.both(c.tol.Elementwise, func(e *env) []output {
			db := e.param(db0, 129)
			e.b.BiasDW(db, e.up(dy, 17, 129))
			return []output{{"", e.down(db)}}
		})
	}})
	for _, n := range []struct {
		rows, groups, size int
		dw                 bool
	}{{5, 1, 257, true}, {5, 1, 257, false}, {7, 4, 24, true}, {3, 2, 128, false}} {
		name := fmt.Sprintf("RMSNormBackward/rows=%d,heads=%d,Dh=%d", n.rows, n.groups, n.size)
		if n.groups == 1 {
			name = fmt.Sprintf("RMSNormBackward/rows=%d,D=%d", n.rows, n.size)
		}
		if !n.dw {
			name += "/nodw"
		}
		cs = append(cs, testCase{name, func(c *caseCtx) {
			width := n.groups * n.size
			x, w, dy := randn(c.rng, n.rows*width, 2), randn(c.rng, n.size, 1), randn(c.rng, n.rows*width, 1)
			init, dw0 := randn(c.rng, n.rows*width, 1), randn(c.rng, n.size, 1)
			c.both(c.tol.Backward, func(e *env) []output {
				dx := e.up(init, n.rows, width)
				var dw *engine.Tensor
				if n.dw {
					dw = e.param(dw0, n.size)
				}
				e.b.RMSNormBackward(dx, dw, e.up(dy, n.rows, width), e.up(x, n.rows, width), e.up(w, n.size), 1e-6)
				outs := []output{{"dx", e.down(dx)}}
				if n.dw {
					outs = append(outs, output{"dw", e.down(dw)})
				}
				return outs
			})
		}})
	}
	cs = append(cs, testCase{"SwiGLUBackward/M=17,N=129", func(c *caseCtx) {
		g, u, d := randn(c.rng, 17*129, 2), randn(c.rng, 17*129, 1), randn(c.rng, 17*129, 1)
		i1, i2 := randn(c.rng, 17*129, 1), randn(c.rng, 17*129, 1)
		c.both(c.tol.Backward, func(e *env) []output {
			dg, du := e.up(i1, 17, 129), e.up(i2, 17, 129)
			e.b.SwiGLUBackward(dg, du, e.up(d, 17, 129), e.up(g, 17, 129), e.up(u, 17, 129))
			return []output{{"dgate", e.down(dg)}, {"dup", e.down(du)}}
		})
	}})
	cs = append(cs, testCase{"EmbeddingBackward/V=31,D=67,T=40", func(c *caseCtx) {
		dx, dt0, ids := randn(c.rng, 40*67, 1), randn(c.rng, 31*67, 1), randIDs(c.rng, 40, 31) // 40 ids of 31: repeats
		c.both(c.tol.Elementwise, func(e *env) []output {
			dt := e.param(dt0, 31, 67)
			e.b.EmbeddingBackward(dt, e.up(dx, 40, 67), ids)
			return []output{{"", e.down(dt)}}
		})
	}})
	cs = append(cs, testCase{"ScatterAddRows/R=9,C=67", func(c *caseCtx) {
		x, out0 := randn(c.rng, 9*67, 1), randn(c.rng, 23*67, 1)
		rows := []int32{22, 0, 5, 5, 17, 0, 3, 22, 22}
		c.both(c.tol.Elementwise, func(e *env) []output {
			out := e.up(out0, 23, 67)
			e.b.ScatterAddRows(out, e.up(x, 9, 67), rows)
			return []output{{"", e.down(out)}}
		})
	}})
	for _, v := range []struct {
		dent, alias bool
		temp        float32
	}{{true, true, 0.7}, {false, true, 1}, {true, false, 1.3}, {false, false, 1}} {
		name := fmt.Sprintf("LogProbsBackward/R=13,V=257/T=%g", v.temp)
		if v.dent {
			name += ",dent"
		}
		if v.alias {
			name += ",inplace"
		}
		cs = append(cs, testCase{name, func(c *caseCtx) {
			const R, V = 13, 257
			logits, targets, init := randn(c.rng, R*V, 3), randIDs(c.rng, R, V), randn(c.rng, R*V, 1)
			dlogp, dent := randn(c.rng, R, 1), randn(c.rng, R, 1)
			if !v.dent {
				dent = nil
			}
			c.both(c.tol.Backward, func(e *env) []output {
				lt := e.up(logits, R, V)
				d := lt
				if !v.alias {
					d = e.up(init, R, V)
				}
				e.b.LogProbsBackward(d, lt, targets, dlogp, dent, v.temp)
				return []output{{"", e.down(d)}}
			})
		}})
	}
	for _, n := range []int{1, 1000, 70001} {
		cs = append(cs, testCase{fmt.Sprintf("SumSquares/n=%d", n), func(c *caseCtx) {
			x := randn(c.rng, n, 3)
			var got, want float64
			sumSquares := func(e *env) float64 {
				s, err := e.b.SumSquares(e.up(x, n))
				if err != nil {
					panic(err)
				}
				return s
			}
			withEnv(c.ref, func(e *env) []output { want = sumSquares(e); return nil })
			withEnv(c.b, func(e *env) []output { got = sumSquares(e); return nil })
			rel := math.Abs(got-want) / want
			r := Result{Metric: MetricRelErr, Error: rel, Tol: c.tol.SumSquares, Pass: rel <= c.tol.SumSquares, BadIndex: -1}
			if !r.Pass {
				r.BadIndex, r.Got, r.Want = 0, got, want
			}
			c.add(r)
		}})
	}
	cs = append(cs, testCase{"SumSquaresMany/n=[1,1000,70001,3]", sumSquaresManyCase})
	for _, s := range []float32{0.37, -2, 0} {
		cs = append(cs, testCase{fmt.Sprintf("Scale/n=1001/s=%g", s), func(c *caseCtx) {
			x := randn(c.rng, 1001, 1)
			if s == 0 { // clearing must clear NaN and Inf too
				x[3], x[500], x[1000] = float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))
			}
			c.both(c.tol.Elementwise, func(e *env) []output {
				xt, p := e.up(x, 1001), e.param(x, 7, 143)
				e.b.Scale(xt, s)
				e.b.Scale(p, s)
				return []output{{"tensor", e.down(xt)}, {"param", e.down(p)}}
			})
		}})
	}
	for _, v := range []struct {
		n      int
		p      float32
		seed   uint64
		stream uint64
		alias  bool
	}{
		{1001, 0.1, 1, 0, false}, {1001, 0.5, 7, 1<<32 | 3<<16 | 5<<4 | 6, true}, {70001, 0.25, 1 << 40, 12345, false}, {1001, 0, 3, 4, false},
	} {
		cs = append(cs, testCase{fmt.Sprintf("Dropout/n=%d/p=%g/stream=%#x/alias=%v", v.n, v.p, v.stream, v.alias), func(c *caseCtx) {
			x := randn(c.rng, v.n, 1)
			got, want := c.pair(func(e *env) []output {
				xt := e.up(x, v.n)
				out := xt
				if !v.alias {
					out = e.alloc(v.n)
				}
				e.b.Dropout(out, xt, v.p, v.seed, v.stream)
				return []output{{"", e.down(out)}}
			})
			// The mask must be the reference's exactly (x holds no zeros): a mismatch count.
			diff := 0
			for i := range x {
				if (got[0].data[i] == 0) != (want[0].data[i] == 0) {
					diff++
				}
			}
			c.add(Result{Name: "mask", Metric: MetricMismatch, Error: float64(diff) / float64(v.n), Pass: diff == 0, BadIndex: -1,
				Detail: fmt.Sprintf("%d of %d elements kept on one backend and dropped on the other", diff, v.n)})
			c.nmse("values", got[0].data, want[0].data, c.tol.Elementwise)
		}})
	}
	cs = append(cs, testCase{"Copy/N=129,K=67/param", func(c *caseCtx) {
		// Copy into a parameter must be seen by the next MatMul with it.
		src, p0, x := randn(c.rng, 129*67, 1), randn(c.rng, 129*67, 1), randn(c.rng, 3*67, 1)
		got, want := c.pair(func(e *env) []output {
			p := e.param(p0, 129, 67)
			out := e.alloc(3, 129)
			xt := e.up(x, 3, 67)
			e.b.MatMul(out, xt, p) // the backend may cache p's matmul layout here
			e.b.Copy(p, e.up(src, 129, 67))
			e.b.MatMul(out, xt, p)
			dst := e.alloc(129, 67)
			e.b.Copy(dst, p)
			return []output{{"param", e.down(p)}, {"tensor", e.down(dst)}, {"matmul", e.down(out)}}
		})
		for i, tol := range []float64{c.tol.Elementwise, c.tol.Elementwise, c.tol.MatMul} {
			c.nmse(want[i].name, got[i].data, want[i].data, tol)
		}
	}})
	cs = append(cs, testCase{"AdamW/N=129,K=67/10steps", adamWCase})
	cs = append(cs, testCase{"AdamWMany/n=[1,1000,70001,129x67]/3steps", adamWManyCase})
	return cs
}

// adamWCase runs ten AdamW steps with changing hyper-parameters (a gradient scale every third
// step) and gradients of mixed magnitudes on a 2-D parameter, then compares the parameter, both
// moments and a MatMul with the parameter (which must see the updates).
func adamWCase(c *caseCtx) {
	const N, K = 129, 67
	p0, x := randn(c.rng, N*K, 1), randn(c.rng, 3*K, 1)
	var grads [][]float32
	var steps []engine.AdamWStep
	for step := 1; step <= 10; step++ {
		g := randn(c.rng, N*K, 1)
		for i := range g {
			g[i] *= float32(math.Pow(10, float64(c.rng.IntN(5)-3)))
		}
		grads = append(grads, g)
		b1, b2 := 0.9, 0.95
		steps = append(steps, engine.AdamWStep{LR: 1e-2 / float64(step), Beta1: b1, Beta2: b2, Eps: 1e-8,
			WeightDecay: 0.1 * float64(step%2), BC1: 1 - math.Pow(b1, float64(step)), BC2: 1 - math.Pow(b2, float64(step)),
			GradScale: []float64{0, 0.37, 1}[step%3]}) // clipping's scale every third step
	}
	got, want := c.pair(func(e *env) []output {
		p := e.param(p0, N, K)
		m, v := e.alloc(N, K), e.alloc(N, K)
		xt, out := e.up(x, 3, K), e.alloc(3, N)
		var g *engine.Tensor
		for i, h := range steps {
			e.b.MatMul(out, xt, p)
			g = e.up(grads[i], N, K)
			h.ZeroGrad = i == len(steps)-1 // the optimizer's ZeroGrad, on the last step
			e.b.AdamW(p, g, m, v, h)
		}
		e.b.MatMul(out, xt, p)
		return []output{{"p", e.down(p)}, {"m", e.down(m)}, {"v", e.down(v)}, {"matmul", e.down(out)}, {"g", e.down(g)}}
	})
	// The change of p, not p itself: the updates are small against p, and a wrong update
	// must not hide behind the unchanged part.
	for _, o := range []output{got[0], want[0]} {
		o.data = o.data[:len(p0)]
		for i := range o.data {
			o.data[i] -= p0[i]
		}
	}
	got[0].name, want[0].name = "dp", "dp"
	for i, tol := range []float64{c.tol.AdamW, c.tol.AdamW, c.tol.AdamW, c.tol.MatMul, 0} { // g: zeros
		c.nmse(want[i].name, got[i].data, want[i].data, tol)
	}
}

// sumSquaresManyCase: where the backend sums several tensors' squares at once
// (engine.SumSquaresManyBackend), each sum equals its own SumSquares of that tensor bit for bit
// (the optimizer's norm must not depend on the path) and the reference's within the
// SumSquares tolerance. Backends without it pass trivially.
func sumSquaresManyCase(c *caseCtx) {
	ns := []int{1, 1000, 70001, 3}
	xs := make([][]float32, len(ns))
	for i, n := range ns {
		xs[i] = randn(c.rng, n, float64(i+1))
	}
	var want []float64
	withEnv(c.ref, func(e *env) []output {
		for i, n := range ns {
			s, err := e.b.SumSquares(e.up(xs[i], n))
			if err != nil {
				panic(err)
			}
			want = append(want, s)
		}
		return nil
	})
	mb, ok := c.b.(engine.SumSquaresManyBackend)
	if !ok {
		c.add(Result{Name: "absent", Metric: MetricRelErr, Pass: true, Tol: c.tol.SumSquares, BadIndex: -1})
		return
	}
	var many, single []float64
	withEnv(c.b, func(e *env) []output {
		ts := make([]*engine.Tensor, len(ns))
		for i, n := range ns {
			ts[i] = e.up(xs[i], n)
		}
		var err error
		if many, err = mb.SumSquaresMany(ts); err != nil {
			panic(err)
		}
		for _, x := range ts {
			s, err := e.b.SumSquares(x)
			if err != nil {
				panic(err)
			}
			single = append(single, s)
		}
		return nil
	})
	for i := range ns {
		rel := math.Abs(many[i]-want[i]) / want[i]
		r := Result{Name: fmt.Sprintf("x%d", i), Metric: MetricRelErr, Error: rel, Tol: c.tol.SumSquares,
			Pass: rel <= c.tol.SumSquares && many[i] == single[i], BadIndex: -1}
		if !r.Pass {
			r.BadIndex, r.Got, r.Want = 0, many[i], want[i]
			if many[i] != single[i] {
				r.Detail = fmt.Sprintf("SumSquaresMany gave %v, SumSquares of the same tensor %v: the norm depends on the path", many[i], single[i])
			}
		}
		c.add(r)
	}
}

// adamWManyCase: where the backend updates several tensors in one call
// (engine.AdamWManyBackend), three steps of AdamWMany over tensors of different sizes (one of
// several of a GPU kernel's chunks), weight decays and gradient scales (GradScale, on every
// other tensor and step), the last step zeroing the gradients (ZeroGrad), leave every parameter,
// both moments, the gradients and a MatMul with the 2-D parameter (read before every step, so a
// bf16 copy of it must follow the updates) bit for bit as AdamW per tensor leaves them on the
// same backend, and within the AdamW tolerance of the reference's AdamW per tensor. Backends
// without it pass trivially.
func adamWManyCase(c *caseCtx) {
	shapes := [][]int{{1}, {1000}, {70001}, {129, 67}}
	const weight, N, K = 3, 129, 67
	p0 := make([][]float32, len(shapes))
	for i, sh := range shapes {
		p0[i] = randn(c.rng, sh[0]*shapeCols(sh), 1)
	}
	x := randn(c.rng, 3*K, 1)
	const steps = 3
	grads := make([][][]float32, steps)
	hs := make([][]engine.AdamWStep, steps)
	for s := range steps {
		t := float64(s + 1)
		for i := range shapes {
			g := randn(c.rng, len(p0[i]), 1)
			for j := range g {
				g[j] *= float32(math.Pow(10, float64(c.rng.IntN(5)-3)))
			}
			grads[s] = append(grads[s], g)
			// Every constant differs between the tensors, so that a mix-up of two tensors'
			// constants shows (the optimizer itself varies only the weight decay).
			fi := float64(i)
			b1, b2 := 0.9-0.02*fi, 0.95+0.01*fi
			hs[s] = append(hs[s], engine.AdamWStep{LR: 1e-2 / t * (1 + fi/2), Beta1: b1, Beta2: b2, Eps: 1e-8 * (1 + fi), WeightDecay: 0.1 * float64(i%3),
				BC1: 1 - math.Pow(b1, t), BC2: 1 - math.Pow(b2, t), GradScale: []float64{0, 0.3 + 0.1*fi}[(i+s)%2], ZeroGrad: s == steps-1})
		}
	}
	run := func(many bool) func(e *env) []output {
		return func(e *env) []output {
			var ps, ms, vs []*engine.Tensor
			for i, sh := range shapes {
				ps, ms, vs = append(ps, e.param(p0[i], sh...)), append(ms, e.alloc(sh...)), append(vs, e.alloc(sh...))
			}
			xt, out := e.up(x, 3, K), e.alloc(3, N)
			var gs []*engine.Tensor
			for s := range steps {
				e.b.MatMul(out, xt, ps[weight])
				gs = make([]*engine.Tensor, len(shapes))
				for i, sh := range shapes {
					gs[i] = e.up(grads[s][i], sh...)
				}
				if many {
					e.b.(engine.AdamWManyBackend).AdamWMany(ps, gs, ms, vs, hs[s])
				} else {
					for i := range ps {
						e.b.AdamW(ps[i], gs[i], ms[i], vs[i], hs[s][i])
					}
				}
			}
			e.b.MatMul(out, xt, ps[weight])
			var o []output
			for i := range shapes {
				dp := e.down(ps[i])
				for j := range dp { // the change of p, as adamWCase compares it
					dp[j] -= p0[i][j]
				}
				o = append(o, output{fmt.Sprintf("dp%d", i), dp}, output{fmt.Sprintf("m%d", i), e.down(ms[i])}, output{fmt.Sprintf("v%d", i), e.down(vs[i])},
					output{fmt.Sprintf("g%d", i), e.down(gs[i])}) // the last step's gradients: zeroed (ZeroGrad)
			}
			return append(o, output{"matmul", e.down(out)})
		}
	}
	if _, ok := c.b.(engine.AdamWManyBackend); !ok {
		c.add(Result{Name: "absent", Metric: MetricMismatch, Pass: true, BadIndex: -1})
		return
	}
	want := withEnv(c.ref, run(false))
	single := withEnv(c.b, run(false))
	got := withEnv(c.b, run(true))
	for i := range want {
		tol := c.tol.AdamW
		if want[i].name == "matmul" {
			tol = c.tol.MatMul
		}
		c.nmse(want[i].name, got[i].data, want[i].data, tol)
		diff, first := 0, -1
		for j := range got[i].data {
			if math.Float32bits(got[i].data[j]) != math.Float32bits(single[i].data[j]) {
				if first < 0 {
					first = j
				}
				diff++
			}
		}
		r := Result{Name: want[i].name + "/as-AdamW", Metric: MetricMismatch, Error: float64(diff) / float64(len(got[i].data)), Pass: diff == 0, BadIndex: first}
		if diff > 0 {
			r.Got, r.Want = float64(got[i].data[first]), float64(single[i].data[first])
			r.Detail = fmt.Sprintf("%d of %d values differ from AdamW per tensor on the same backend", diff, len(got[i].data))
		}
		c.add(r)
	}
}

// shapeCols is the product of a shape's dimensions after the first (1 for a vector).
func shapeCols(sh []int) int {
	n := 1
	for _, d := range sh[1:] {
		n *= d
	}
	return n
}
