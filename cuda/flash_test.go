package cuda

import (
	"fmt"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestFlashTiles: the tiles of packed sequences (lengths 1, 65, 0, 134: one, two, none and
// three 64-row tiles, aligned at each sequence's first row) as [t0, t1, r0] triples, costliest
// first, ties in sequence order. Forward and dQ: a query tile's cost is its index + 1 in its
// sequence; dK and dV: a key tile's cost is the number of tiles from it to its sequence's end.
func TestFlashTiles(t *testing.T) {
	seqStart := []int32{0, 1, 66, 66, 200}
	for _, tc := range []struct {
		byKeys bool
		want   []int32
	}{
		{false, []int32{66, 200, 194, 1, 66, 65, 66, 200, 130, 0, 1, 0, 1, 66, 1, 66, 200, 66}},
		{true, []int32{66, 200, 66, 1, 66, 1, 66, 200, 130, 0, 1, 0, 1, 66, 65, 66, 200, 194}},
	} {
		if got := flashTiles(seqStart, tc.byKeys); !slices.Equal(got, tc.want) {
			t.Errorf("flashTiles(%v, byKeys %v) = %v, want %v", seqStart, tc.byKeys, got, tc.want)
		}
	}
	if got := flashTiles([]int32{0}, false); len(got) != 0 {
		t.Errorf("no sequences: %v", got)
	}
}

// TestFlashLaunches runs the attention ops on the fake GPU and checks which kernels they
// launch, with which grids: with TiledAttention the tiled kernels for head dims 64 and 128
// (grid (tiles, heads) for the forward and dQ, (tiles, KV heads) for dK and dV, 128 threads,
// after attn_rowdot), the row and matmul kernels for other head dims and with the option off;
// a scoring pass over fresh sequences runs the tiled forward after the cache write, a
// generation batch (or a scoring pass with context) the paged kernels. SetTiledAttention
// switches an open backend.
func TestFlashLaunches(t *testing.T) {
	// Sequences of 1, 130 and 64 rows: 1 + 3 + 1 = 5 tiles; the 130-row one is long enough for
	// the matmul path when the option is off.
	seqStart := []int32{0, 1, 131, 195}
	const T, nh, nkv = 195, 6, 2
	type launch struct {
		kernel string
		grid   [3]int
		block  int
	}
	flash := func(dh int) (fwd, bwd []launch) {
		fwd = []launch{{fmt.Sprintf("flash_fwd_%d", dh), [3]int{5, nh, 1}, 128}}
		bwd = []launch{{"attn_rowdot", [3]int{(T*nh + 7) / 8, 1, 1}, 256},
			{fmt.Sprintf("flash_bwd_dkv_%d", dh), [3]int{5, nkv, 1}, 128},
			{fmt.Sprintf("flash_bwd_dq_%d", dh), [3]int{5, nh, 1}, 128}}
		return
	}
	for _, tc := range []struct {
		tiled bool
		dh    int
		flash bool
	}{
		{true, 64, true}, {true, 128, true},
		{true, 32, false}, {true, 256, false}, {true, 80, false}, // other head dims: the old kernels
		{false, 64, false}, {false, 128, false},
	} {
		t.Run(fmt.Sprintf("tiled=%v,dh=%d", tc.tiled, tc.dh), func(t *testing.T) {
			g := newFakeGPU(t, 90, 1<<34)
			b, err := Open(Options{TiledAttention: tc.tiled})
			if err != nil {
				t.Fatal(err)
			}
			qw, kw := nh*tc.dh, nkv*tc.dh
			q, k, v, out, lse := b.Alloc(T, qw), b.Alloc(T, kw), b.Alloc(T, kw), b.Alloc(T, qw), b.Alloc(T, nh)
			ran := func(f func()) []launch {
				g.launches = nil
				f()
				if err := b.Sync(); err != nil {
					t.Fatal(err)
				}
				var ls []launch
				for _, l := range g.launches {
					ls = append(ls, launch{l.name, l.grid, l.block})
				}
				return ls
			}
			names := func(ls []launch) []string {
				var n []string
				for _, l := range ls {
					n = append(n, l.kernel)
				}
				return n
			}
			fwd := ran(func() { b.AttentionTrain(out, lse, q, k, v, seqStart) })
			bwd := ran(func() {
				b.AttentionBackward(b.Alloc(T, qw), b.Alloc(T, kw), b.Alloc(T, kw), out, q, k, v, out, lse, seqStart)
			})
			if tc.flash {
				wf, wb := flash(tc.dh)
				if !slices.Equal(fwd, wf) || !slices.Equal(bwd, wb) {
					t.Fatalf("forward %v, backward %v;\nwant %v, %v", fwd, bwd, wf, wb)
				}
			} else {
				for _, n := range append(names(fwd), names(bwd)...) {
					if len(n) > 5 && n[:5] == "flash" {
						t.Fatalf("%s launched: forward %v, backward %v", n, names(fwd), names(bwd))
					}
				}
				if !slices.Contains(names(fwd), "attn_train") || !slices.Contains(names(fwd), "attn_softmax_causal") {
					t.Fatalf("forward %v: want the row kernel and the matmul path", names(fwd))
				}
			}
			// Scoring pass over fresh sequences, then the same tokens with context (not
			// fresh), then a generation batch.
			kv, err := b.NewKVStore(1, nkv, 16, tc.dh, 16, engine.F32)
			if err != nil {
				t.Fatal(err)
			}
			ab := &engine.AttnBatch{SeqStart: []int32{0, 1, 131}, CtxLen: []int32{1, 130}, Scratch: true,
				Blocks: [][]int32{{0}, {1, 2, 3, 4, 5, 6, 7, 8, 9}}}
			for i := 0; i < 131; i++ {
				ab.Slots = append(ab.Slots, int32(16+i-1))
			}
			ab.Slots[0] = 0
			q2, k2, v2, o2 := b.Alloc(131, qw), b.Alloc(131, kw), b.Alloc(131, kw), b.Alloc(131, qw)
			paged := "attn_paged_gqa"
			if tc.dh > gqaMaxHeadDim {
				paged = "attn_paged"
			}
			wantScore := []launch{{"kv_write", b.gridFor(int64(131 * kw)), 256}, {paged, [3]int{131, nkv, 1}, 256}}
			if paged == "attn_paged" {
				wantScore[1] = launch{paged, [3]int{131, nh, 1}, 128}
			}
			wantGen := slices.Clone(wantScore)
			if tc.flash {
				wantScore[1] = launch{fmt.Sprintf("flash_fwd_%d", tc.dh), [3]int{1 + 3, nh, 1}, 128}
			}
			if got := ran(func() { b.Attention(o2, q2, k2, v2, kv, 0, ab) }); !slices.Equal(got, wantScore) {
				t.Errorf("scoring pass: %v, want %v", got, wantScore)
			}
			ctx := *ab
			ctx.CtxLen = []int32{1, 140} // 10 tokens of context before the second sequence's new ones
			if got := ran(func() { b.Attention(o2, q2, k2, v2, kv, 0, &ctx) }); !slices.Equal(got, wantGen) {
				t.Errorf("scoring pass with context: %v, want %v", got, wantGen)
			}
			gen := *ab
			gen.Scratch = false
			if got := ran(func() { b.Attention(o2, q2, k2, v2, kv, 0, &gen) }); !slices.Equal(got, wantGen) {
				t.Errorf("generation batch: %v, want %v", got, wantGen)
			}
			if tc.flash {
				b.SetTiledAttention(false)
				if got := names(ran(func() { b.AttentionTrain(out, lse, q, k, v, seqStart) })); slices.Contains(got, fmt.Sprintf("flash_fwd_%d", tc.dh)) {
					t.Errorf("after SetTiledAttention(false): %v", got)
				}
			}
		})
	}
}
