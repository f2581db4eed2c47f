package cuda

import (
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
)

// bf16CopyBits returns the bits of t's bf16 copy (made by bf16Copy, converting t when the copy
// is stale) and whether the copy was current before.
func bf16CopyBits(t *testing.T, b *Backend, x *engine.Tensor) ([]uint16, bool) {
	t.Helper()
	bits := make([]uint16, x.Len())
	var current bool
	err := b.opErr(desc("bf16 copy x", x), func() error {
		bf := devBuf(x)
		current = bf.bf != 0 && bf.bfVer == bf.ver
		p := b.bf16Copy(x)
		b.download(unsafe.Pointer(&bits[0]), uint64(p), uint64(2*len(bits)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return bits, current
}

// TestGPUFoldBF16 (GPU): the folding kernels of Options.FoldBF16 (rmsnorm_bf16, also in place,
// add_rmsnorm_bf16, swiglu_out_bf16, attn_paged_gqa_bf16, rmsnorm_bwd_dx_bf16, swiglu_bwd_bf16)
// give fp32 outputs and bf16 copies bit for bit equal to the unfused kernels followed by
// f32_to_bf16_kernel, and their copies are current without a conversion.
func TestGPUFoldBF16(t *testing.T) {
	unf := openGPU(t, Options{BF16Matmul: true})
	fold := openGPU(t, Options{BF16Matmul: true, FoldBF16: true})
	r := rand.New(rand.NewPCG(11, 13))
	data := func(n int, scale float64) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64() * scale)
		}
		return v
	}
	up := func(b *Backend, v []float32, shape ...int) *engine.Tensor {
		x, err := b.Upload(engine.F32, v, false, shape...)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	const eps = 1e-6
	for _, tc := range []struct {
		name string
		rows int
		cols int
		// run runs the op on b with the inputs in (in[1] the norm weight [cols], the others
		// [rows, cols]) and returns the outputs whose copies are folded, then any others.
		run func(b *Backend, in []*engine.Tensor) (folded, other []*engine.Tensor)
	}{
		{"RMSNorm", 17, 257, func(b *Backend, in []*engine.Tensor) ([]*engine.Tensor, []*engine.Tensor) {
			out := b.Alloc(17, 257)
			b.RMSNorm(out, in[0], in[1], eps)
			return []*engine.Tensor{out}, nil
		}},
		{"RMSNorm/inplace", 33, 1536, func(b *Backend, in []*engine.Tensor) ([]*engine.Tensor, []*engine.Tensor) {
			b.RMSNorm(in[0], in[0], in[1], eps)
			return []*engine.Tensor{in[0]}, nil
		}},
		{"AddRMSNorm/inplace", 24, 896, func(b *Backend, in []*engine.Tensor) ([]*engine.Tensor, []*engine.Tensor) {
			normed := b.Alloc(24, 896)
			b.AddRMSNorm(in[0], normed, in[0], in[2], in[1], eps)
			return []*engine.Tensor{normed}, []*engine.Tensor{in[0]}
		}},
		{"SwiGLU", 40, 4864, func(b *Backend, in []*engine.Tensor) ([]*engine.Tensor, []*engine.Tensor) {
			out := b.Alloc(40, 4864)
			b.SwiGLU(out, in[0], in[2])
			return []*engine.Tensor{out}, nil
		}},
		{"Attention", 40, 512, func(b *Backend, in []*engine.Tensor) ([]*engine.Tensor, []*engine.Tensor) {
			// One sequence of 40 new tokens (a prefill), 8 query heads over 2 KV heads of 64: the
			// paged GQA kernel; q is in[0], k and v the same random values on both backends.
			const H, KV, dh, T = 8, 2, 64, 40
			bs := engine.DefaultBlockSize
			st, err := b.NewKVStore(1, KV, bs, dh, (T+bs-1)/bs, engine.F32)
			if err != nil {
				t.Fatal(err)
			}
			ab := &engine.AttnBatch{SeqStart: []int32{0, T}, CtxLen: []int32{T}}
			var table []int32
			for i := range (T + bs - 1) / bs {
				table = append(table, int32(i))
			}
			ab.Blocks = [][]int32{table}
			for i := range int32(T) {
				ab.Slots = append(ab.Slots, i)
			}
			kr := rand.New(rand.NewPCG(5, 7))
			kv := make([]float32, 2*T*KV*dh)
			for i := range kv {
				kv[i] = float32(kr.NormFloat64())
			}
			k, v, out := up(b, kv[:T*KV*dh], T, KV*dh), up(b, kv[T*KV*dh:], T, KV*dh), b.Alloc(T, H*dh)
			b.Attention(out, in[0], k, v, st, 0, ab)
			return []*engine.Tensor{out}, nil
		}},
		{"RMSNormBackward/heads", 40, 1024, func(b *Backend, in []*engine.Tensor) ([]*engine.Tensor, []*engine.Tensor) {
			// qk-norm's backward in place (dx = dy = in[2]) over 8 heads of 128, as the engine
			// calls it; the weight the same random values on both backends.
			wr := rand.New(rand.NewPCG(9, 1))
			wv := make([]float32, 128)
			for i := range wv {
				wv[i] = float32(wr.NormFloat64())
			}
			w, gw := up(b, wv, 128), b.Alloc(128)
			b.RMSNormBackward(in[2], gw, in[2], in[0], w, eps)
			return []*engine.Tensor{in[2]}, []*engine.Tensor{gw}
		}},
		{"SwiGLUBackward", 40, 4864, func(b *Backend, in []*engine.Tensor) ([]*engine.Tensor, []*engine.Tensor) {
			dg, du := b.Alloc(40, 4864), b.Alloc(40, 4864)
			b.SwiGLUBackward(dg, du, in[2], in[0], in[3])
			return []*engine.Tensor{dg, du}, nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// in[0] [rows, cols], in[1] the norm weight [cols], in[2], in[3] [rows, cols].
			host := [][]float32{data(tc.rows*tc.cols, 3), data(tc.cols, 1), data(tc.rows*tc.cols, 2), data(tc.rows*tc.cols, 1)}
			var res [2][][]float32
			var copies [2][][]uint16
			for i, b := range []*Backend{unf, fold} {
				in := []*engine.Tensor{up(b, host[0], tc.rows, tc.cols), up(b, host[1], tc.cols), up(b, host[2], tc.rows, tc.cols), up(b, host[3], tc.rows, tc.cols)}
				folded, other := tc.run(b, in)
				for _, x := range append(folded, other...) {
					v := make([]float32, x.Len())
					if err := b.Download(x, v); err != nil {
						t.Fatal(err)
					}
					res[i] = append(res[i], v)
				}
				for _, x := range folded {
					bits, current := bf16CopyBits(t, b, x)
					if b == fold && !current {
						t.Errorf("output %v: its bf16 copy is stale after the folding kernel", x.Shape)
					}
					copies[i] = append(copies[i], bits)
				}
			}
			for j := range res[0] {
				for k := range res[0][j] {
					if math.Float32bits(res[0][j][k]) != math.Float32bits(res[1][j][k]) {
						t.Fatalf("output %d element %d: folded %g, unfused %g", j, k, res[1][j][k], res[0][j][k])
					}
				}
			}
			for j := range copies[0] {
				for k := range copies[0][j] {
					if copies[0][j][k] != copies[1][j][k] {
						t.Fatalf("bf16 copy %d element %d: folded %#04x, converted %#04x", j, k, copies[1][j][k], copies[0][j][k])
					}
				}
			}
		})
	}
}
