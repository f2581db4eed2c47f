package cuda

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
)

// ltShape is one linear layer of the model: out[M,N] = x[M,K]·w[N,K]ᵀ.
type ltShape struct {
	name    string
	m, n, k int
}

// qwen15BGemmShapes are the linear layers of a Qwen2-1.5B training step (hidden 1536,
// intermediate 8960, vocab 151936, 12 query heads and 2 KV heads of 128) over 8192 tokens; the
// LM head over 1024 rows, the chunk the trainer computes logits in (tools/bench: MaxLogitRows).
var qwen15BGemmShapes = []ltShape{
	{"q, o", 8192, 1536, 1536},
	{"k, v", 8192, 256, 1536},
	{"gate, up", 8192, 8960, 1536},
	{"down", 8192, 1536, 8960},
	{"lm_head", 1024, 151936, 1536},
}

// TestGPUCublasLtMatchesGemmEx: on the 1.5B training shapes, the forward, dX and dW GEMMs
// (bf16 operands, fp32 accumulation, as Options.BF16Matmul trains) give the same result with
// Options.CublasLt (cublasLtMatmul, the heuristic's algorithm, a 32 MiB workspace) as on
// cublasGemmEx: NMSE at most 1e-6 between the two (they differ only in the order of fp32 sums,
// about 1e-10 at these depths; a wrong layout or transpose gives about 1). Logs each GEMM's
// rate both ways (TFLOP/s, best of a few batches of back-to-back calls) and the ratio.
func TestGPUCublasLtMatchesGemmEx(t *testing.T) {
	b := openGPU(t, Options{BF16Matmul: true})
	defer b.SetCublasLt(false)
	// One pool of values in [-1, 1) for every operand (its slices), made once.
	maxLen := 0
	for _, s := range qwen15BGemmShapes {
		maxLen = max(maxLen, s.m*s.k, s.n*s.k, s.m*s.n)
	}
	pool := make([]float32, maxLen+8)
	for i := range pool {
		pool[i] = float32(int64(uint32(i)*2654435761)%2001-1000) / 1000
	}
	// up uploads pool[off:] as a tensor of shape (a bf16 one as a linear weight).
	up := func(dt engine.DType, off int, shape ...int) *engine.Tensor {
		t.Helper()
		n := shape[0] * shape[1]
		x, err := b.Upload(dt, pool[off:off+n], dt == engine.BF16, shape...)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	var table []string
	for _, s := range qwen15BGemmShapes {
		x := up(engine.F32, 1, s.m, s.k)
		w := up(engine.BF16, 2, s.n, s.k)
		dy := up(engine.F32, 3, s.m, s.n)
		out, dx, dw := b.Alloc(s.m, s.n), b.Alloc(s.m, s.k), b.Alloc(s.n, s.k)
		for _, op := range []struct {
			name string
			res  *engine.Tensor
			run  func()
		}{
			{"forward", out, func() { b.MatMul(out, x, w) }},
			{"dX", dx, func() { b.MatMulDX(dx, dy, w) }},
			{"dW", dw, func() { b.MatMulDW(dw, dy, x) }}, // accumulates: zeroed before the compared call
		} {
			flops := 2 * float64(s.m) * float64(s.n) * float64(s.k)
			// Enough back-to-back calls for about 20 ms of GPU time at 700 TFLOP/s.
			reps := min(50, max(3, int(20e-3*700e12/flops)))
			var got [2][]float32
			var rate [2]float64
			for path := range 2 {
				if err := b.SetCublasLt(path == 1); err != nil {
					t.Fatal(err)
				}
				lt0, _, _, none0 := b.CublasLtStats()
				b.Scale(op.res, 0)
				op.run()
				got[path] = download(t, b, op.res)
				best := time.Duration(1 << 62)
				for range 3 {
					if err := b.Sync(); err != nil {
						t.Fatal(err)
					}
					t0 := time.Now()
					for range reps {
						op.run()
					}
					if err := b.Sync(); err != nil {
						t.Fatal(err)
					}
					best = min(best, time.Since(t0))
				}
				rate[path] = flops * float64(reps) / best.Seconds()
				if lt1, _, _, none1 := b.CublasLtStats(); path == 1 && (lt1-lt0 != 3*reps+1 || none1 != none0) {
					t.Errorf("%s %s: %d of %d GEMMs ran on cuBLASLt (shapes without an algorithm: %d)", s.name, op.name, lt1-lt0, 3*reps+1, none1-none0)
				}
			}
			if e := nmse(got[1], got[0]); e > 1e-6 {
				t.Errorf("%s %s (M=%d N=%d K=%d): cuBLASLt against cublasGemmEx NMSE %.3g, want <= 1e-6", s.name, op.name, s.m, s.n, s.k, e)
			}
			table = append(table, fmt.Sprintf("%-9s %-8s %6d %6d %6d %8.1f %8.1f %6.3f", s.name, op.name, s.m, s.n, s.k,
				rate[0]/1e12, rate[1]/1e12, rate[1]/rate[0]))
		}
		for _, x := range []*engine.Tensor{x, w, dy, out, dx, dw} {
			b.Free(x)
		}
	}
	t.Logf("bf16 GEMMs of the 1.5B training step (%s), TFLOP/s:\n%-9s %-8s %6s %6s %6s %8s %8s %6s\n%s", b.Name(),
		"layer", "GEMM", "M", "N", "K", "GemmEx", "Lt", "Lt/Ex", strings.Join(table, "\n"))
	lt, ex, plans, none := b.CublasLtStats()
	t.Logf("cuBLASLt: %d GEMMs, %d on cublasGemmEx while on, %d plans, %d shapes without an algorithm", lt, ex, plans, none)
}

// nmse is Σ(got-want)² / Σwant².
func nmse(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	if den == 0 {
		return num
	}
	return num / den
}
