package cuda

import (
	"fmt"

	"github.com/prolong-rl/prolong/engine"
)

// FusesQKVRoPE implements engine.QKVRoPEBackend: Options.FusedQKVRoPE.
func (b *Backend) FusesQKVRoPE() bool { return b.opts.FusedQKVRoPE }

// QKVRoPE implements engine.QKVRoPEBackend with qkv_rope, one block per token: the biases,
// RoPE on q and k and, with a KV store, the keys and values written to their slots, in one
// launch in place of three add_bias, two rope and the kv_write inside Attention.
func (b *Backend) QKVRoPE(q, k, v, qb, kb, vb *engine.Tensor, headDim int, pos []int32, cos, sin *engine.Tensor, kv engine.KVStore, layer int, slots []int32) {
	T := len(pos)
	if q.Rows() != T || k.Rows() != T || v.Rows() != T || v.Cols() != k.Cols() || q.Cols()%headDim != 0 || k.Cols()%headDim != 0 {
		panic(fmt.Sprintf("cuda: QKVRoPE shapes q %v k %v v %v for %d positions, head_dim %d", q.Shape, k.Shape, v.Shape, T, headDim))
	}
	var s *kvStore
	if kv != nil {
		s = kv.(*kvStore)
		if len(slots) != T || s.kvHeads*s.headDim != k.Cols() || s.headDim != headDim {
			panic(fmt.Sprintf("cuda: QKVRoPE of %d tokens %v into a KV store of %d slots [%d×%d]", T, k.Shape, len(slots), s.kvHeads, s.headDim))
		}
	}
	b.op(desc("QKVRoPE q k v qb kb vb cos sin", q, k, v, qb, kb, vb, cos, sin), func() {
		touched(q, k, v)
		var qbp, kbp, vbp, kc, vc, sl dptr
		if qb != nil {
			qbp, kbp, vbp = ptr(qb), ptr(kb), ptr(vb)
		}
		bs := 0
		if s != nil && s.dt != engine.BF16 { // qkv_rope writes fp32; a bf16 store gets kv_write_bf16
			kc, vc, sl, bs = dptr(s.k[layer]), dptr(s.v[layer]), b.constInts(slots), s.blockSize
		}
		b.launchQkvRope([3]int{T, 1, 1}, 256, ptr(q), ptr(k), ptr(v), qbp, kbp, vbp, b.constInts(pos), ptr(cos), ptr(sin),
			kc, vc, sl, int32(q.Cols()), int32(k.Cols()), int32(headDim), int32(bs))
		if s != nil && s.dt == engine.BF16 {
			b.writeKV(s, layer, k, v, &engine.AttnBatch{Slots: slots})
		}
	})
}
