package cuda

import (
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestQKVRoPELaunch (fake driver): Options.FusedQKVRoPE is what FusesQKVRoPE says, off by
// default; QKVRoPE is one qkv_rope launch, one block per token, with the tensors, the layer's
// cache buffers and the widths as its arguments (null biases and cache where there are none);
// Attention skips kv_write when the batch says QKVRoPE wrote the keys and values, and only then.
func TestQKVRoPELaunch(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	if b, err := Open(Options{}); err != nil || b.FusesQKVRoPE() {
		t.Fatalf("Open(Options{}): FusesQKVRoPE, err = %v, %v; want false, nil", b != nil && b.FusesQKVRoPE(), err)
	}
	b, err := Open(Options{FusedQKVRoPE: true})
	if err != nil {
		t.Fatal(err)
	}
	if !b.FusesQKVRoPE() {
		t.Fatal("FusesQKVRoPE() = false with Options.FusedQKVRoPE")
	}
	const T, H, KV, Dh, bs = 5, 6, 2, 8, 16
	q, k, v := b.Alloc(T, H*Dh), b.Alloc(T, KV*Dh), b.Alloc(T, KV*Dh)
	qb, kb, vb := b.Alloc(H*Dh), b.Alloc(KV*Dh), b.Alloc(KV*Dh)
	cos, sin := b.Alloc(64, Dh/2), b.Alloc(64, Dh/2)
	store, err := b.NewKVStore(2, KV, bs, Dh, 2, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	s := store.(*kvStore)
	pos, slots := []int32{3, 4, 5, 6, 7}, []int32{19, 20, 21, 22, 23}
	u := func(x *engine.Tensor) uint64 { return uint64(ptr(x)) }
	for _, tc := range []struct {
		name       string
		biased, kv bool
	}{{"biases and cache", true, true}, {"no biases", false, true}, {"no cache (training)", true, false}} {
		g.launches = nil
		var qbt, kbt, vbt *engine.Tensor
		if tc.biased {
			qbt, kbt, vbt = qb, kb, vb
		}
		var kvs engine.KVStore
		if tc.kv {
			kvs = store
		}
		b.QKVRoPE(q, k, v, qbt, kbt, vbt, Dh, pos, cos, sin, kvs, 1, slots)
		if err := b.Sync(); err != nil {
			t.Fatal(err)
		}
		if len(g.launches) != 1 || g.launches[0].name != "qkv_rope" || g.launches[0].grid != [3]int{T, 1, 1} || g.launches[0].block != 256 {
			t.Fatalf("%s: launches %+v, want one qkv_rope of grid (%d,1,1), block 256", tc.name, g.launches, T)
		}
		a := g.launches[0].args
		want := []uint64{u(q), u(k), u(v), 0, 0, 0, a[6], u(cos), u(sin), 0, 0, 0, H * Dh, KV * Dh, Dh, 0}
		if tc.biased {
			want[3], want[4], want[5] = u(qb), u(kb), u(vb)
		}
		if tc.kv {
			want[9], want[10], want[11], want[15] = s.k[1], s.v[1], a[11], bs
			if a[11] == 0 || a[11] == a[6] {
				t.Errorf("%s: slots at %#x, positions at %#x: want two device arrays", tc.name, a[11], a[6])
			}
		}
		if a[6] == 0 || !slices.Equal(a, want) {
			t.Errorf("%s: qkv_rope arguments\n\t%#x\nwant\n\t%#x", tc.name, a, want)
		}
	}
	out := b.Alloc(T, H*Dh)
	ab := &engine.AttnBatch{SeqStart: []int32{0, T}, CtxLen: []int32{8}, Blocks: [][]int32{{0, 1}}, Slots: slots}
	for _, written := range []bool{false, true} {
		g.launches = nil
		ab.KVWritten = written
		b.Attention(out, q, k, v, store, 1, ab)
		if err := b.Sync(); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, l := range g.launches {
			names = append(names, l.name)
		}
		want := []string{"kv_write", "attn_paged_gqa"}
		if written {
			want = want[1:]
		}
		if !slices.Equal(names, want) {
			t.Errorf("Attention with KVWritten %v: launches %v, want %v", written, names, want)
		}
	}
}
