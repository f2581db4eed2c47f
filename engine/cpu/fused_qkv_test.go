package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestQKVRoPEBitExact: the fused op gives AddBias's, RoPE's and the KV write's results bit for
// bit (q, k, v and every block of the cache), with and without biases, into fp32 and bf16
// stores and into none (training), for GQA and plain heads, token counts that do not split
// evenly over the threads, positions that do not start at 0, and padding rows that share a slot.
func TestQKVRoPEBitExact(t *testing.T) {
	r := rand.New(rand.NewPCG(35, 2))
	rnd := normals(r)
	const bs, P = 16, 400
	c := New()
	for _, tc := range []struct {
		T, h, kv, dh, start int
		bias                bool
		kvdt                engine.DType
		noKV                bool
		pad                 int // the last pad rows share one slot, with equal rows
	}{
		{1, 2, 1, 8, 0, true, engine.F32, false, 0},
		{67, 6, 2, 24, 5, true, engine.F32, false, 0},
		{67, 6, 2, 24, 5, false, engine.F32, false, 0},
		{45, 4, 4, 64, 130, true, engine.BF16, false, 0},
		{33, 14, 2, 128, 17, true, engine.F32, false, 0},
		{40, 12, 2, 128, 3, true, engine.F32, false, 7},
		{29, 7, 1, 32, 0, true, engine.F32, true, 0},
	} {
		name := fmt.Sprintf("T=%d,H=%d,KV=%d,Dh=%d,start=%d,bias=%v,%v,noKV=%v,pad=%d", tc.T, tc.h, tc.kv, tc.dh, tc.start, tc.bias, tc.kvdt, tc.noKV, tc.pad)
		qw, kw, half := tc.h*tc.dh, tc.kv*tc.dh, tc.dh/2
		q, k, v := rnd(tc.T*qw, 1), rnd(tc.T*kw, 1), rnd(tc.T*kw, 1)
		qb, kb, vb := rnd(qw, 1), rnd(kw, 1), rnd(kw, 1)
		cos, sin := make([]float32, P*half), make([]float32, P*half)
		for p := range P {
			for i := range half {
				s, co := math.Sincos(float64(p) * math.Pow(10000, -float64(2*i)/float64(tc.dh)))
				cos[p*half+i], sin[p*half+i] = float32(co), float32(s)
			}
		}
		pos, slots := make([]int32, tc.T), make([]int32, tc.T)
		perm := r.Perm(tc.T) // slots scattered over the blocks
		for i := range pos {
			pos[i] = int32(tc.start + i)
			slots[i] = int32(perm[i] + bs) // block 0 stays empty
		}
		for i := tc.T - tc.pad; i < tc.T; i++ { // padding rows: position 0, one slot, equal rows
			pos[i], slots[i] = 0, 0
			copy(q[i*qw:(i+1)*qw], q[(tc.T-1)*qw:])
			copy(k[i*kw:(i+1)*kw], k[(tc.T-1)*kw:])
			copy(v[i*kw:(i+1)*kw], v[(tc.T-1)*kw:])
		}
		blocks := (tc.T+bs-1)/bs + 1
		up := f32Uploader(t, c)
		type run struct {
			q, k, v *engine.Tensor
			kv      *cpuKV
		}
		do := func(fused bool) run {
			ru := run{q: up(q, tc.T, qw), k: up(k, tc.T, kw), v: up(v, tc.T, kw)}
			store, err := c.NewKVStore(2, tc.kv, bs, tc.dh, blocks, tc.kvdt)
			if err != nil {
				t.Fatal(err)
			}
			ru.kv = store.(*cpuKV)
			var qbt, kbt, vbt *engine.Tensor
			if tc.bias {
				qbt, kbt, vbt = up(qb, qw), up(kb, kw), up(vb, kw)
			}
			ct, st := up(cos, P, half), up(sin, P, half)
			if fused {
				var kvs engine.KVStore = store
				if tc.noKV {
					kvs = nil
				}
				c.QKVRoPE(ru.q, ru.k, ru.v, qbt, kbt, vbt, tc.dh, pos, ct, st, kvs, 1, slots)
				return ru
			}
			if tc.bias {
				c.AddBias(ru.q, qbt)
				c.AddBias(ru.k, kbt)
				c.AddBias(ru.v, vbt)
			}
			c.RoPE(ru.q, tc.dh, pos, ct, st)
			c.RoPE(ru.k, tc.dh, pos, ct, st)
			if !tc.noKV {
				ru.kv.write(1, slots, f32(ru.k), f32(ru.v)) // as Attention writes them
			}
			return ru
		}
		got, want := do(true), do(false)
		same := func(what string, g, w []float32) {
			t.Helper()
			for i := range w {
				if math.Float32bits(g[i]) != math.Float32bits(w[i]) {
					t.Fatalf("%s: %s[%d] = %v fused, %v unfused", name, what, i, g[i], w[i])
				}
			}
		}
		same("q", f32(got.q), f32(want.q))
		same("k", f32(got.k), f32(want.k))
		same("v", f32(got.v), f32(want.v))
		for l := range 2 {
			for b := range blocks {
				if tc.kvdt == engine.BF16 {
					if !slices.Equal(got.kv.k16[l][b], want.kv.k16[l][b]) || !slices.Equal(got.kv.v16[l][b], want.kv.v16[l][b]) {
						t.Fatalf("%s: layer %d block %d of the bf16 cache differs", name, l, b)
					}
					continue
				}
				same(fmt.Sprintf("cache layer %d block %d keys", l, b), got.kv.k[l][b], want.kv.k[l][b])
				same(fmt.Sprintf("cache layer %d block %d values", l, b), got.kv.v[l][b], want.kv.v[l][b])
			}
		}
		written := false // whether anything reached the cache
		for b := range blocks {
			if tc.kvdt == engine.BF16 {
				written = written || slices.ContainsFunc(got.kv.v16[1][b], func(f uint16) bool { return f != 0 })
			} else {
				written = written || slices.ContainsFunc(got.kv.v[1][b], func(f float32) bool { return f != 0 })
			}
		}
		if written == tc.noKV {
			t.Fatalf("%s: cache written = %v", name, written)
		}
	}
}

// BenchmarkQKVRoPE: the fused op against AddBias ×3, RoPE ×2 and the KV write on the shapes of
// Qwen2.5-1.5B (12 query heads, 2 KV heads of 128, biases): a decode batch of 1 and 64 rows and
// a 1024-token prefill.
func BenchmarkQKVRoPE(b *testing.B) {
	const h, kvh, dh, bs = 12, 2, 128, 16
	c := New()
	for _, T := range []int{1, 64, 1024} {
		q, k, v := c.Alloc(T, h*dh), c.Alloc(T, kvh*dh), c.Alloc(T, kvh*dh)
		qb, kb, vb := c.Alloc(h*dh), c.Alloc(kvh*dh), c.Alloc(kvh*dh)
		P := T + 100
		cos, sin := c.Alloc(P, dh/2), c.Alloc(P, dh/2)
		store, err := c.NewKVStore(1, kvh, bs, dh, (T+bs-1)/bs, engine.F32)
		if err != nil {
			b.Fatal(err)
		}
		s := store.(*cpuKV)
		pos, slots := make([]int32, T), make([]int32, T)
		for i := range pos {
			pos[i], slots[i] = int32(100+i), int32(i)
		}
		for _, fused := range []bool{false, true} {
			b.Run(fmt.Sprintf("T=%d/fused=%v", T, fused), func(b *testing.B) {
				b.SetBytes(int64(4 * T * (2*h*dh + 6*kvh*dh))) // read and write q, k, v; write the cache
				for b.Loop() {
					if fused {
						c.QKVRoPE(q, k, v, qb, kb, vb, dh, pos, cos, sin, s, 0, slots)
						continue
					}
					c.AddBias(q, qb)
					c.AddBias(k, kb)
					c.AddBias(v, vb)
					c.RoPE(q, dh, pos, cos, sin)
					c.RoPE(k, dh, pos, cos, sin)
					s.write(0, slots, f32(k), f32(v))
				}
			})
		}
	}
}
