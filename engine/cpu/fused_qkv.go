package cpu

import (
	"fmt"

	"github.com/prolong-rl/prolong/engine"
)

// DefaultFusedQKVRoPE is whether a Backend fuses QKVRoPE unless told otherwise.
const DefaultFusedQKVRoPE = true

// WithFusedQKVRoPE says whether the engine uses the backend's QKVRoPE (the biases, RoPE and the
// KV-cache write in one pass over the q, k, v projections) in place of AddBias, RoPE and the
// write inside Attention; see DefaultFusedQKVRoPE for the default. Both give the same bits.
func WithFusedQKVRoPE(on bool) Option {
	return func(c *Backend) { c.SetFusedQKVRoPE(on) }
}

// SetFusedQKVRoPE is WithFusedQKVRoPE for a backend already made.
func (c *Backend) SetFusedQKVRoPE(on bool) {
	c.qkvRoPE = -1
	if on {
		c.qkvRoPE = 1
	}
}

// FusesQKVRoPE implements engine.QKVRoPEBackend: DefaultFusedQKVRoPE unless set otherwise.
func (c *Backend) FusesQKVRoPE() bool {
	if c.qkvRoPE == 0 {
		return DefaultFusedQKVRoPE
	}
	return c.qkvRoPE > 0
}

// QKVRoPE implements engine.QKVRoPEBackend: per token, its rows of q, k and v get their biases
// and RoPE and its keys and values go to the cache while the rows are in cache; parallel over
// tokens. The arithmetic is AddBias's and RoPE's, so the results are theirs bit for bit. Of rows
// that share a slot only the last writes it (they bring equal keys and values), so no two
// workers write one slot.
func (c *Backend) QKVRoPE(q, k, v, qb, kb, vb *engine.Tensor, headDim int, pos []int32, cos, sin *engine.Tensor, kv engine.KVStore, layer int, slots []int32) {
	T := len(pos)
	qs, ks, vs, cs, sn := f32(q), f32(k), f32(v), f32(cos), f32(sin)
	qw, kw := q.Cols(), k.Cols()
	if q.Rows() != T || k.Rows() != T || v.Rows() != T || v.Cols() != kw {
		panic(fmt.Sprintf("engine/cpu: QKVRoPE shapes q %v k %v v %v for %d positions", q.Shape, k.Shape, v.Shape, T))
	}
	var qbs, kbs, vbs []float32
	if qb != nil {
		qbs, kbs, vbs = f32(qb), f32(kb), f32(vb)
	}
	var s *cpuKV
	if kv != nil {
		s = kv.(*cpuKV)
		if len(slots) != T || s.kvHeads*s.headDim != kw {
			panic(fmt.Sprintf("engine/cpu: QKVRoPE of %d tokens [%d] into a KV store of %d slots [%d×%d]", T, kw, len(slots), s.kvHeads, s.headDim))
		}
	}
	half := headDim / 2
	c.thr.Parallel(T, 16, func(lo, hi int) {
		for t := lo; t < hi; t++ {
			p := int(pos[t])
			cr, sr := cs[p*half:(p+1)*half], sn[p*half:(p+1)*half]
			qr, kr, vr := qs[t*qw:(t+1)*qw], ks[t*kw:(t+1)*kw], vs[t*kw:(t+1)*kw]
			addRow(qr, qbs)
			ropeRow(qr, headDim, cr, sr)
			addRow(kr, kbs)
			ropeRow(kr, headDim, cr, sr)
			addRow(vr, vbs)
			if s != nil && (t+1 == T || slots[t+1] != slots[t]) {
				s.writeRow(layer, slots[t], kr, vr)
			}
		}
	})
}

// addRow adds b to x (nothing for b nil), as AddBias does to each row.
func addRow(x, b []float32) {
	if b == nil {
		return
	}
	x = x[:len(b)]
	for i, v := range b {
		x[i] += v
	}
}

// ropeRow rotates each head of row by the angles whose cosines and sines are cr, sr [Dh/2], as
// RoPE does.
func ropeRow(row []float32, headDim int, cr, sr []float32) {
	half := headDim / 2
	cr, sr = cr[:half], sr[:half]
	for h := 0; h < len(row); h += headDim {
		a, b := row[h:h+half], row[h+half:h+headDim]
		b = b[:len(a)]
		for i, c := range cr {
			x1, x2, s := a[i], b[i], sr[i]
			a[i] = x1*c - x2*s
			b[i] = x2*c + x1*s
		}
	}
}
