package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// prefillCase builds a packed prefill batch of fresh sequences of the given lengths (ctx[s]
// positions of context each; ctx[s] > lens[s] puts earlier positions in the cache first) for
// h query heads and kv KV heads of width dh, with random q, k, v.
type prefillCase struct {
	store   *cpuKV
	b       *engine.AttnBatch
	q, k, v *engine.Tensor
	h, dh   int
}

func newPrefillCase(t *testing.T, c *Backend, rng *rand.Rand, h, kv, dh int, lens, ctx []int, scratch bool) *prefillCase {
	t.Helper()
	const bs = engine.DefaultBlockSize
	blocks := 0
	for _, n := range ctx {
		blocks += (n + bs - 1) / bs
	}
	st, err := c.NewKVStore(1, kv, bs, dh, blocks, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	s := st.(*cpuKV)
	// Earlier context positions: random keys and values already in the cache.
	for l := range s.k[0] {
		for i := range s.k[0][l] {
			s.k[0][l][i], s.v[0][l][i] = float32(rng.NormFloat64()), float32(rng.NormFloat64())
		}
	}
	b := &engine.AttnBatch{SeqStart: []int32{0}, Scratch: scratch}
	next := 0
	T := 0
	for i, n := range lens {
		nb := (ctx[i] + bs - 1) / bs
		var blk []int32
		for j := 0; j < nb; j++ {
			blk = append(blk, int32(next+j))
		}
		next += nb
		for p := ctx[i] - n; p < ctx[i]; p++ {
			b.Slots = append(b.Slots, blk[p/bs]*bs+int32(p%bs))
		}
		T += n
		b.SeqStart = append(b.SeqStart, int32(T))
		b.CtxLen = append(b.CtxLen, int32(ctx[i]))
		b.Blocks = append(b.Blocks, blk)
	}
	rnd := func(cols int) *engine.Tensor {
		d := make([]float32, T*cols)
		for i := range d {
			d[i] = float32(rng.NormFloat64())
		}
		x, _ := c.Upload(engine.F32, d, false, T, cols)
		return x
	}
	return &prefillCase{store: s, b: b, q: rnd(h * dh), k: rnd(kv * dh), v: rnd(kv * dh), h: h, dh: dh}
}

func (p *prefillCase) run(c *Backend) []float32 {
	out := c.Alloc(p.q.Rows(), p.h*p.dh)
	c.Attention(out, p.q, p.k, p.v, p.store, 0, p.b)
	return slices.Clone(f32(out))
}

// TestTiledPrefillMatchesRows: a scoring pass's attention on the tiled path (from length 1)
// gives the row path's outputs up to fp32 rounding (max error 1e-5 relative to the largest
// output) on packed fresh sequences of odd lengths across tile edges, GQA groups of 1, 3 and
// 7 and head widths 16 and 64; and the row path's exact bits where the tiled path must not be
// taken: a generation batch (not Scratch) and sequences with cached context before their new
// tokens.
func TestTiledPrefillMatchesRows(t *testing.T) {
	for _, tc := range []struct {
		h, kv, dh int
		lens      []int
	}{
		{2, 2, 16, []int{1}},
		{6, 2, 16, []int{63, 64, 65, 1, 130}},
		{7, 1, 64, []int{257, 3, 200}},
		{4, 4, 64, []int{1100}},
	} {
		t.Run(fmt.Sprintf("H%d/KV%d/Dh%d/%v", tc.h, tc.kv, tc.dh, tc.lens), func(t *testing.T) {
			rows, tiled := New(WithTiledPrefillFrom(math.MaxInt)), New(WithTiledPrefillFrom(1))
			pc := newPrefillCase(t, rows, rand.New(rand.NewPCG(1, 2)), tc.h, tc.kv, tc.dh, tc.lens, tc.lens, true)
			want := pc.run(rows)
			got := pc.run(tiled)
			if pc.q.Rows() > 64 && slices.Equal(got, want) {
				t.Fatal("the tiled path was not taken (its bits equal the row path's)")
			}
			var top, worst float64
			for i := range want {
				top = math.Max(top, math.Abs(float64(want[i])))
				worst = math.Max(worst, math.Abs(float64(got[i]-want[i])))
			}
			if worst > 1e-5*top || math.IsNaN(worst) {
				t.Fatalf("tiled prefill differs from the row path by %.3g (largest output %.3g)", worst, top)
			}
			pc.b.Scratch = false
			for _, c := range []*Backend{tiled, New()} {
				if got := pc.run(c); !slices.Equal(got, want) {
					t.Fatal("a generation batch (not Scratch) took the tiled path")
				}
			}
		})
	}
	t.Run("cached context", func(t *testing.T) {
		rows, tiled := New(WithTiledPrefillFrom(math.MaxInt)), New(WithTiledPrefillFrom(1))
		pc := newPrefillCase(t, rows, rand.New(rand.NewPCG(3, 4)), 4, 2, 16, []int{70, 5}, []int{100, 5}, true)
		if want, got := pc.run(rows), pc.run(tiled); !slices.Equal(got, want) {
			t.Fatal("a batch with cached context took the tiled path")
		}
	})
}

// BenchmarkPrefillAttention times a scoring pass's attention on one fresh sequence of the 122M
// benchmark model's heads (12 query heads, 2 KV heads, Dh 64) on the row and tiled paths, for
// the crossover of DefaultTiledPrefillFrom: GFLOP/s of the causal flops 4·L²/2·H·Dh.
func BenchmarkPrefillAttention(b *testing.B) {
	const h, kv, dh = 12, 2, 64
	for _, L := range []int{64, 128, 256, 512, 1024, 2048} {
		for _, path := range []string{"rows", "tiled"} {
			b.Run(fmt.Sprintf("L%d/%s", L, path), func(b *testing.B) {
				c := New(WithTiledPrefillFrom(math.MaxInt))
				if path == "tiled" {
					c = New(WithTiledPrefillFrom(1))
				}
				t := &testing.T{}
				pc := newPrefillCase(t, c, rand.New(rand.NewPCG(1, 1)), h, kv, dh, []int{L}, []int{L}, true)
				out := c.Alloc(L, h*dh)
				b.ResetTimer()
				for range b.N {
					c.Attention(out, pc.q, pc.k, pc.v, pc.store, 0, pc.b)
				}
				gf := 4 * float64(L) * float64(L+1) / 2 * h * dh * float64(b.N) / b.Elapsed().Seconds() / 1e9
				b.ReportMetric(gf, "GFLOP/s")
			})
		}
	}
}
