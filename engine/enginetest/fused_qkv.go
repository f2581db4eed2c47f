package enginetest

import (
	"fmt"
	"strings"

	"github.com/prolong-rl/prolong/engine"
)

// qkvRoPECases check engine.QKVRoPEBackend's QKVRoPE (the biases, RoPE and the KV write in one
// op) against the reference's AddBias, RoPE and Attention's own write: for GQA and plain heads,
// head dims 8 to 256, with and without biases, into the paged cache (two steps, odd token
// counts, positions that do not start at 0) and into none (training). The backend under test
// runs QKVRoPE whether or not it fuses it by default (the GPU check verifies it before it
// becomes one); a backend without it runs the unfused ops and passes trivially.
func qkvRoPECases(o Options) []testCase {
	shapes := []attnShape{{3, 3, 8}, {12, 2, 128}, {7, 1, 64}, {2, 1, 256}}
	if o.Short {
		shapes = []attnShape{{12, 2, 128}, {3, 3, 8}}
	}
	var cs []testCase
	for _, s := range shapes {
		for _, bias := range []bool{true, false} {
			for _, noKV := range []bool{false, true} {
				name := fmt.Sprintf("QKVRoPE/%v/bias=%v", s, bias)
				if noKV {
					name += "/nokv"
				}
				cs = append(cs, testCase{name, func(c *caseCtx) { qkvRoPE(c, s, bias, noKV) }})
			}
		}
	}
	return cs
}

// qkvRoPE runs two steps over a paged KV store (layer 1 of 2): step 1 prefills sequence A (13
// tokens) and B (6); step 2 decodes a token of A, brings 3 more of B and prefills C (2). Each
// step takes q, k, v as projected, adds the biases and RoPE and writes the keys and values, then
// attends (told that the cache is written, on the backend under test); the outputs are q, k, v
// after the op and the attention of both steps, which reads every key and value from the cache.
// With noKV, one QKVRoPE of 11 rows at positions 4..14 into no store.
func qkvRoPE(c *caseCtx, s attnShape, bias, noKV bool) {
	const bs, P = engine.DefaultBlockSize, 64
	cfg := &engine.Config{HeadDim: s.dh, RopeTheta: 10000}
	cos, sin := modelRopeTables(cfg, P)
	qw, kw := s.h*s.dh, s.kv*s.dh
	biases := [][]float32{randn(c.rng, qw, 1), randn(c.rng, kw, 1), randn(c.rng, kw, 1)}
	steps := [][]attnSeq{
		{{[]int32{0}, 13, 13}, {[]int32{3}, 6, 6}},
		{{[]int32{0}, 14, 1}, {[]int32{3}, 9, 3}, {[]int32{2, 1}, 2, 2}},
	}
	var batches []*engine.AttnBatch
	var pos [][]int32
	if noKV {
		steps = nil
		p := make([]int32, 11)
		for i := range p {
			p[i] = int32(4 + i)
		}
		pos = append(pos, p)
	}
	for _, st := range steps {
		b := attnBatch(st, bs)
		var p []int32
		for _, sq := range st {
			for i := sq.ctx - sq.n; i < sq.ctx; i++ {
				p = append(p, int32(i))
			}
		}
		batches, pos = append(batches, b), append(pos, p)
	}
	var ins [][][]float32 // per step: q, k, v, the attention output's initial values
	for _, p := range pos {
		T := len(p)
		ins = append(ins, [][]float32{randn(c.rng, T*qw, 1), randn(c.rng, T*kw, 1), randn(c.rng, T*kw, 1), randn(c.rng, T*qw, 1)})
	}
	got, want := c.pair(func(e *env) []output {
		fb, fused := e.b.(engine.QKVRoPEBackend)
		fused = fused && e.b != c.ref
		var qb, kb, vb *engine.Tensor
		if bias {
			qb, kb, vb = e.up(biases[0], qw), e.up(biases[1], kw), e.up(biases[2], kw)
		}
		ct, st := e.up(cos, P, s.dh/2), e.up(sin, P, s.dh/2)
		var kv engine.KVStore
		if !noKV {
			kv = e.kvOf(engine.F32, 2, s.kv, bs, s.dh, 4)
		}
		var outs []output
		for i, p := range pos {
			T := len(p)
			q, k, v := e.up(ins[i][0], T, qw), e.up(ins[i][1], T, kw), e.up(ins[i][2], T, kw)
			var slots []int32
			if !noKV {
				slots = batches[i].Slots
			}
			if fused {
				fb.QKVRoPE(q, k, v, qb, kb, vb, s.dh, p, ct, st, kv, 1, slots)
			} else {
				if bias {
					e.b.AddBias(q, qb)
					e.b.AddBias(k, kb)
					e.b.AddBias(v, vb)
				}
				e.b.RoPE(q, s.dh, p, ct, st)
				e.b.RoPE(k, s.dh, p, ct, st)
			}
			step := fmt.Sprintf("step%d/", i+1)
			outs = append(outs, output{step + "q", e.down(q)}, output{step + "k", e.down(k)}, output{step + "v", e.down(v)})
			if noKV {
				continue
			}
			out := e.up(ins[i][3], T, qw)
			batches[i].KVWritten = fused
			e.b.Attention(out, q, k, v, kv, 1, batches[i])
			outs = append(outs, output{step + "attention", e.down(out)})
		}
		return outs
	})
	for i := range want {
		tol := c.tol.Elementwise
		if strings.HasSuffix(want[i].name, "/attention") {
			tol = c.tol.Attention
		}
		c.nmse(want[i].name, got[i].data, want[i].data, tol)
	}
}
