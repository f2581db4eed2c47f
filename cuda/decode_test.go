package cuda

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestDecodeSplit: the split-KV choice by hand: no split without Options.SplitKVDecode or
// where the blocks already fill the SMs; else about two blocks per SM, each split at least
// SplitKVMinPart positions (a multiple of 32), the last one partial; worked by hand.
func TestDecodeSplit(t *testing.T) {
	for _, tc := range []struct {
		opts              Options
		sms, T, gy, maxN  int
		wantPart, wantNum int
	}{
		{Options{}, 132, 1, 2, 16384, 16384, 1},                                   // off: one split over the whole context
		{Options{BF16KV: true}, 132, 1, 2, 16385, 16416, 1},                       // rounded up to a tile
		{Options{SplitKVDecode: true}, 132, 1, 2, 16384, 128, 128},                // want 198 splits: 83 -> 96 < 128
		{Options{SplitKVDecode: true}, 132, 1, 2, 100000, 512, 196},               // 100000/198 = 506 -> 512
		{Options{SplitKVDecode: true}, 132, 64, 2, 16384, 4096, 4},                // 128 blocks, below 132: 4 splits
		{Options{SplitKVDecode: true}, 132, 66, 2, 16384, 16384, 1},               // 132 blocks fill the SMs
		{Options{SplitKVDecode: true}, 132, 1, 2, 300, 128, 3},                    // the minimum part, the last split partial
		{Options{SplitKVDecode: true}, 132, 1, 2, 20, 32, 1},                      // one tile
		{Options{SplitKVDecode: true, SplitKVMinPart: 32}, 132, 1, 2, 150, 32, 5}, // tests' short splits
		{Options{SplitKVDecode: true, SplitKVMinPart: 500}, 4, 1, 2, 1000, 512, 2},
		{Options{SplitKVDecode: true}, 4, 1, 2, 16384, 2752, 6}, // the fake GPU, 4 SMs: 2731 -> 2752
	} {
		b := &Backend{opts: tc.opts, sms: tc.sms}
		part, n := b.decodeSplit(tc.T, tc.gy, tc.maxN)
		if part != tc.wantPart || n != tc.wantNum {
			t.Errorf("%+v sms %d T %d gy %d maxN %d: part %d, %d splits; want %d, %d", tc.opts, tc.sms, tc.T, tc.gy, tc.maxN, part, n, tc.wantPart, tc.wantNum)
		}
		if n > 1 && ((n-1)*part >= tc.maxN || n*part < tc.maxN || part%decodeTile != 0) {
			t.Errorf("%+v maxN %d: %d splits of %d do not cover the context exactly", tc.opts, tc.maxN, n, part)
		}
	}
}

// decodeCall runs one Attention call on the fake GPU: T query tokens, the last of a sequence
// of ctx positions (the others: one-token contexts), H query heads over KV heads of dh, a
// store of dtype dt. It returns the kernels launched by the call.
func decodeCall(t *testing.T, g *fakeGPU, o Options, dt engine.DType, T, ctx, H, KV, dh int) []fakeLaunch {
	t.Helper()
	b, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	const bs = engine.DefaultBlockSize
	blocks := (ctx+bs-1)/bs + T
	s, err := b.NewKVStore(1, KV, bs, dh, blocks, dt)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Free()
	ab := &engine.AttnBatch{SeqStart: []int32{0}}
	next := int32(0)
	for i := 0; i < T; i++ {
		n := 1
		if i == 0 {
			n = ctx
		}
		var table []int32
		for p := 0; p < n; p += bs {
			table = append(table, next)
			next++
		}
		ab.Blocks = append(ab.Blocks, table)
		ab.CtxLen = append(ab.CtxLen, int32(n))
		ab.Slots = append(ab.Slots, table[(n-1)/bs]*bs+int32((n-1)%bs))
		ab.SeqStart = append(ab.SeqStart, int32(i+1))
	}
	q, k, v, out := b.Alloc(T, H*dh), b.Alloc(T, KV*dh), b.Alloc(T, KV*dh), b.Alloc(T, H*dh)
	g.launches = nil
	b.Attention(out, q, k, v, s, 0, ab)
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	return g.launches
}

// TestDecodeAttentionLaunches: which kernels Attention launches on the fake GPU (4 SMs), with
// what grid and split, for each setting: the verified kernels by default, decode_attn for a
// bf16 cache (unsplit without SplitKVDecode) and with SplitKVDecode, split only where the
// blocks leave SMs idle, decode_attn_combine after a split.
func TestDecodeAttentionLaunches(t *testing.T) {
	type launch struct {
		name        string
		grid        [3]int
		part, split int // decode_attn's part and nsplit; 0 for other kernels
	}
	for _, tc := range []struct {
		name              string
		opts              Options
		dt                engine.DType
		T, ctx, H, KV, dh int
		want              []launch
	}{
		{"default fp32, GQA", Options{}, engine.F32, 1, 16384, 12, 2, 128,
			[]launch{{"kv_write", [3]int{1, 1, 1}, 0, 0}, {"attn_paged_gqa", [3]int{1, 2, 1}, 0, 0}}},
		{"default fp32, G above 8", Options{}, engine.F32, 1, 100, 12, 1, 64,
			[]launch{{"kv_write", [3]int{1, 1, 1}, 0, 0}, {"attn_paged", [3]int{1, 12, 1}, 0, 0}}},
		{"bf16 KV, unsplit", Options{BF16KV: true}, engine.BF16, 1, 16384, 12, 2, 128,
			[]launch{{"kv_write_bf16", [3]int{1, 1, 1}, 0, 0}, {"decode_attn_bf16", [3]int{1, 2, 1}, 16384, 1}}},
		{"fp32 KV in the bf16 setting stays on the verified kernel", Options{BF16KV: true}, engine.F32, 1, 100, 12, 2, 128,
			[]launch{{"kv_write", [3]int{1, 1, 1}, 0, 0}, {"attn_paged_gqa", [3]int{1, 2, 1}, 0, 0}}},
		{"bf16 KV, split", Options{BF16KV: true, SplitKVDecode: true}, engine.BF16, 1, 16384, 12, 2, 128,
			[]launch{{"kv_write_bf16", [3]int{1, 1, 1}, 0, 0}, {"decode_attn_bf16", [3]int{1, 2, 6}, 2752, 6},
				{"decode_attn_combine", [3]int{1, 12, 1}, 2752, 6}}},
		{"fp32 KV, split", Options{SplitKVDecode: true}, engine.F32, 1, 5000, 12, 2, 128,
			[]launch{{"kv_write", [3]int{1, 1, 1}, 0, 0}, {"decode_attn_f32", [3]int{1, 2, 6}, 864, 6},
				{"decode_attn_combine", [3]int{1, 12, 1}, 864, 6}}},
		{"fp32 KV, batch fills the SMs: unsplit", Options{SplitKVDecode: true}, engine.F32, 2, 5000, 12, 2, 128,
			[]launch{{"kv_write", [3]int{2, 1, 1}, 0, 0}, {"decode_attn_f32", [3]int{2, 2, 1}, 5024, 1}}},
		{"G of 12 in two head slices, split", Options{SplitKVDecode: true, BF16KV: true}, engine.BF16, 1, 2000, 12, 1, 32,
			[]launch{{"kv_write_bf16", [3]int{1, 1, 1}, 0, 0}, {"decode_attn_bf16", [3]int{1, 2, 6}, 352, 6},
				{"decode_attn_combine", [3]int{1, 12, 1}, 352, 6}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGPU(t, 90, 1<<30)
			ls := decodeCall(t, g, tc.opts, tc.dt, tc.T, tc.ctx, tc.H, tc.KV, tc.dh)
			var got []launch
			for _, l := range ls {
				x := launch{name: l.name, grid: l.grid}
				if l.name == "kv_write" || l.name == "kv_write_bf16" {
					x.grid = [3]int{tc.T, 1, 1} // a grid-stride loop: its size is gridFor's
				}
				switch l.name {
				case "decode_attn_f32", "decode_attn_bf16":
					x.part, x.split = int(int32(l.args[13])), int(int32(l.args[14]))
					if l.block != decodeThreads {
						t.Errorf("%s block %d, want %d", l.name, l.block, decodeThreads)
					}
					if scale := math.Float32frombits(uint32(l.args[12])); math.Abs(float64(scale)-1/math.Sqrt(float64(tc.dh))) > 1e-7 {
						t.Errorf("%s scale %g", l.name, scale)
					}
					if (x.split > 1) != (l.args[1] != 0) {
						t.Errorf("%s: %d splits with partial buffer %#x", l.name, x.split, l.args[1])
					}
					if rows := uint64(tc.T * tc.H * x.split); x.split > 1 && (l.args[2]-l.args[1] != 4*rows || l.args[3]-l.args[1] != 8*rows) {
						t.Errorf("%s: partials pm %#x pl %#x po %#x overlap for %d rows", l.name, l.args[1], l.args[2], l.args[3], rows)
					}
				case "decode_attn_combine":
					x.part, x.split = int(int32(l.args[7])), int(int32(l.args[8]))
					if attn := ls[1]; !slices.Equal(l.args[1:4], attn.args[1:4]) || l.args[0] != attn.args[0] {
						t.Errorf("combine reads partials %#x into %#x, decode_attn wrote %#x into %#x", l.args[1:4], l.args[0], attn.args[1:4], attn.args[0])
					}
				}
				got = append(got, x)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("launches\n%v\nwant\n%v", got, tc.want)
			}
		})
	}
}

// TestBF16KVOption: without Options.BF16KV the cache is fp32 only, as before (KVDTypes, KVAuto
// on bf16 weights, an explicit bf16 refused by name); with it, bf16 stores are made at half the
// bytes and KVAuto picks them for bf16 weights.
func TestBF16KVOption(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	for _, on := range []bool{false, true} {
		b, err := Open(Options{BF16KV: on})
		if err != nil {
			t.Fatal(err)
		}
		if got := engine.KVDTypeSupported(b, engine.BF16); got != on {
			t.Errorf("BF16KV %v: KVDTypeSupported(bf16) = %v", on, got)
		}
		before := g.used
		s, err := b.NewKVStore(2, 2, 16, 128, 3, engine.BF16)
		if !on {
			wantIn(t, err, "cuda: KV cache of BF16: off (cuda.Options.BF16KV)")
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		// 2 layers x (K, V) x 3 blocks x [2, 16, 128] bf16, in the allocator's size classes.
		if want := uint64(2 * 2 * 3 * 2 * 16 * 128 * 2); g.used-before < want || g.used-before >= 2*want {
			t.Errorf("bf16 store of %d bytes took %d", want, g.used-before)
		}
		s.Free()
	}
	if _, err := (&Backend{}).NewKVStore(1, 1, 16, 8, 1, engine.DType(9)); err == nil || !strings.Contains(err.Error(), "not implemented") {
		t.Errorf("unknown dtype: %v", err)
	}
}
