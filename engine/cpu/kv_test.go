package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/internal/kern"
)

// kvCase is a ragged batch over a paged store: sequences' contexts and how many tokens are new.
type kvCase struct {
	ctx, nNew []int
}

// kvRun prefills each sequence of kc but its last nNew tokens (in one Attention call), then
// runs the new tokens (a second call), on a store of dtype dt with block size 16, GQA 6 query
// heads over 2 KV heads of 64; kvRound rounds the keys and values to bf16 before they reach
// the store. It returns the second call's output [T, 6*64].
func kvRun(t *testing.T, c *Backend, dt engine.DType, kc kvCase, kvRound bool, seed uint64) []float32 {
	t.Helper()
	const bs, nh, nkv, dh = 16, 6, 2, 64
	var blocks [][]int32
	next := int32(0)
	for _, n := range kc.ctx {
		var bl []int32
		for p := 0; p < n; p += bs {
			bl = append(bl, next)
			next++
		}
		blocks = append(blocks, bl)
	}
	store, err := c.NewKVStore(1, nkv, bs, dh, int(next), dt)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Free()
	var out []float32
	for step := 0; step < 2; step++ {
		b := &engine.AttnBatch{SeqStart: []int32{0}}
		for s, n := range kc.ctx {
			from, to := 0, n-kc.nNew[s] // step 0: the prefix
			if step == 1 {
				from, to = to, n
			}
			for p := from; p < to; p++ {
				b.Slots = append(b.Slots, blocks[s][p/bs]*bs+int32(p%bs))
			}
			b.SeqStart = append(b.SeqStart, int32(len(b.Slots)))
			b.CtxLen = append(b.CtxLen, int32(to))
			b.Blocks = append(b.Blocks, blocks[s])
		}
		T := len(b.Slots)
		var qh, kh, vh []float32
		for sq := range kc.ctx {
			for p := int(b.CtxLen[sq]) - int(b.SeqStart[sq+1]-b.SeqStart[sq]); p < int(b.CtxLen[sq]); p++ {
				qh = append(qh, posVec(seed, sq, p, 0, nh*dh)...)
				kh = append(kh, posVec(seed, sq, p, 1, nkv*dh)...)
				vh = append(vh, posVec(seed, sq, p, 2, nkv*dh)...)
			}
		}
		if kvRound {
			for _, x := range [][]float32{kh, vh} {
				h := make([]uint16, len(x))
				kern.F32ToBF16(h, x)
				kern.BF16ToF32(x, h)
			}
		}
		q, _ := c.Upload(engine.F32, qh, false, T, nh*dh)
		k, _ := c.Upload(engine.F32, kh, false, T, nkv*dh)
		v, _ := c.Upload(engine.F32, vh, false, T, nkv*dh)
		o := c.Alloc(T, nh*dh)
		if T > 0 {
			c.Attention(o, q, k, v, store, 0, b)
		}
		out = make([]float32, T*nh*dh)
		if err := c.Download(o, out); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// posVec is the query (what 0), key (1) or value (2) of sequence sq's position p: n values
// ~ N(0, 1) drawn from their own stream, whatever batch the position runs in.
func posVec(seed uint64, sq, p, what, n int) []float32 {
	rng := rand.New(rand.NewPCG(seed+uint64(sq)<<32, uint64(p*3+what)))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	return x
}

func equalBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: [%d] = %g, want %g (bit for bit)", what, i, got[i], want[i])
		}
	}
}

// kvCases: decode of one short and one long sequence (the long one over several AttnChunks, on
// the flash-decoding path), a ragged mix of decode and prefill rows, partial last blocks.
var kvCases = []struct {
	name string
	kc   kvCase
}{
	{"decode 37", kvCase{[]int{37}, []int{1}}},
	{"decode 2500", kvCase{[]int{2500}, []int{1}}},
	{"ragged", kvCase{[]int{21, 1030, 5, 2049}, []int{1, 7, 5, 2}}},
}

// TestBF16KVEqualsRoundedFP32: attention over a bf16 KV store gives the bits of attention over
// an fp32 store holding the same keys and values rounded to bf16 (to nearest even): the store
// rounds on write and widens exactly on read, and the arithmetic after that is the fp32 path's.
func TestBF16KVEqualsRoundedFP32(t *testing.T) {
	c := New()
	for _, tc := range kvCases {
		got := kvRun(t, c, engine.BF16, tc.kc, false, 7)
		want := kvRun(t, c, engine.F32, tc.kc, true, 7)
		equalBits(t, tc.name, got, want)
		// and bf16 rounding does change the result against unrounded fp32 keys and values.
		if plain := kvRun(t, c, engine.F32, tc.kc, false, 7); nmse(got, plain) == 0 {
			t.Errorf("%s: bf16 KV gives exactly the fp32 KV result: nothing was rounded", tc.name)
		}
	}
}

// TestAttentionRowInvariant: a row's bits depend on its context alone, not on the batch: the
// last token of a 2100-token sequence decoded alone (flash-decoding: partials of AttnChunk
// positions spread over the cores, then combined) equals the same row computed inside a
// prefill of 40 tokens (each row's partials computed in turn by one core), on 1 and 2
// threads, fp32 and bf16 KV. A preempted sample recomputed by prefill relies on it. The row
// agrees with attention in float64 (rounded keys and values for bf16) to fp32 rounding.
func TestAttentionRowInvariant(t *testing.T) {
	const n, nh, nkv, dh = 2100, 6, 2, 64
	for _, thr := range []int{1, 2} {
		c := New(WithThreads(thr))
		for _, dt := range []engine.DType{engine.F32, engine.BF16} {
			dec := kvRun(t, c, dt, kvCase{[]int{n}, []int{1}}, false, 3)
			pre := kvRun(t, c, dt, kvCase{[]int{n}, []int{40}}, false, 3)
			equalBits(t, fmt.Sprintf("%d threads, %v: decoded row against prefilled row", thr, dt), dec, pre[len(pre)-nh*dh:])
			if thr != 2 {
				continue
			}
			// float64 reference of the row
			q := posVec(3, 0, n-1, 0, nh*dh)
			keys, vals := make([][]float32, n), make([][]float32, n)
			for p := range n {
				keys[p], vals[p] = posVec(3, 0, p, 1, nkv*dh), posVec(3, 0, p, 2, nkv*dh)
				if dt == engine.BF16 {
					for _, x := range [][]float32{keys[p], vals[p]} {
						h := make([]uint16, len(x))
						kern.F32ToBF16(h, x)
						kern.BF16ToF32(x, h)
					}
				}
			}
			want := make([]float32, nh*dh)
			for h := range nh {
				kvh := h / (nh / nkv)
				sc := make([]float64, n)
				m := math.Inf(-1)
				for p := range n {
					for d := range dh {
						sc[p] += float64(q[h*dh+d]) * float64(keys[p][kvh*dh+d])
					}
					sc[p] /= math.Sqrt(dh)
					m = max(m, sc[p])
				}
				var l float64
				o := make([]float64, dh)
				for p := range n {
					e := math.Exp(sc[p] - m)
					l += e
					for d := range dh {
						o[d] += e * float64(vals[p][kvh*dh+d])
					}
				}
				for d := range dh {
					want[h*dh+d] = float32(o[d] / l)
				}
			}
			if e := nmse(dec, want); e > 1e-10 {
				t.Errorf("%v: decoded row against float64 attention: NMSE %g", dt, e)
			}
		}
	}
}

// BenchmarkPagedDecode times one decode row of paged attention (one layer of the 122M bench
// model's heads: 12 query heads over 2 KV heads of 64) at 256 and 16k positions of context,
// over fp32 and bf16 stores, with the partials of the row spread over the cores
// (flash-decoding) and on one core; it reports the KV bytes read per second.
func BenchmarkPagedDecode(b *testing.B) {
	const bs, nh, nkv, dh = 16, 12, 2, 64
	for _, n := range []int{256, 16384} {
		for _, dt := range []engine.DType{engine.F32, engine.BF16} {
			for _, flash := range []bool{true, false} {
				b.Run(fmt.Sprintf("ctx%d/%v/flash=%v", n, dt, flash), func(b *testing.B) {
					c := New()
					blocks := make([]int32, (n+bs-1)/bs)
					for i := range blocks {
						blocks[i] = int32(i)
					}
					store, err := c.NewKVStore(1, nkv, bs, dh, len(blocks), dt)
					if err != nil {
						b.Fatal(err)
					}
					q, _ := c.Upload(engine.F32, posVec(1, 0, 0, 0, nh*dh), false, 1, nh*dh)
					k, _ := c.Upload(engine.F32, posVec(1, 0, 0, 1, nkv*dh), false, 1, nkv*dh)
					v, _ := c.Upload(engine.F32, posVec(1, 0, 0, 2, nkv*dh), false, 1, nkv*dh)
					o := c.Alloc(1, nh*dh)
					ab := &engine.AttnBatch{SeqStart: []int32{0, 1}, CtxLen: []int32{int32(n)}, Blocks: [][]int32{blocks},
						Slots: []int32{int32(n - 1)}}
					defer func(f bool) { flashDecoding = f }(flashDecoding)
					flashDecoding = flash
					elem := 4
					if dt == engine.BF16 {
						elem = 2
					}
					b.SetBytes(int64(n * nkv * dh * 2 * elem))
					for b.Loop() {
						c.Attention(o, q, k, v, store, 0, ab)
					}
				})
			}
		}
	}
}
