package cuda

import (
	"fmt"
	"strings"

	"github.com/prolong-rl/prolong/engine"
)

// The projections of one input (engine.MatMulsBackend) and the MLP's gate/up with SwiGLU
// (engine.GateUpSwiGLUBackend), kernels in kernels/fused_mlp.cu. Both are off by default
// (Options.MatMuls, Options.FusedMLP) until a GPU run verifies them; the conformance suite
// calls them either way.
//
// The weights stay separate tensors: one GEMM over Q, K and V stored side by side would need
// the model to upload them as one tensor and view it as three, which the engine's weights do
// not do. The GEMMs of one input share its bf16 copy (bf16Copy converts x once).

// gemvWarps is how many warps share one output column of the matrix-vector kernels: more for
// long rows (4096 and up), so that enough loads are in flight (as MatMul chooses).
func gemvWarps(k int) int {
	wpr := 1
	for wpr < 8 && k >= 4096*wpr {
		wpr *= 2
	}
	return wpr
}

// gemvGrid is the grid of a matrix-vector kernel over n columns with wpr warps per column.
func gemvGrid(n, wpr int) int { return (n + 8/wpr - 1) / (8 / wpr) }

// FusesMatMuls implements engine.MatMulsSwitch: Options.MatMuls.
func (b *Backend) FusesMatMuls() bool { return b.opts.MatMuls }

// MatMuls implements engine.MatMulsBackend: outs[i][M,N_i] = x[M,K]·ws[i][N_i,K]ᵀ as one op.
// Decoding rows (M <= 8, K a multiple of 8) take one gemv3 launch per three weights of the
// same operand type (fp32 or bf16) instead of one launch each; larger M runs one GEMM per
// weight on x's bf16 copy, converted once.
func (b *Backend) MatMuls(outs []*engine.Tensor, x *engine.Tensor, ws []*engine.Tensor) {
	if len(outs) != len(ws) {
		panic(fmt.Sprintf("cuda: matmuls with %d outputs for %d weights", len(outs), len(ws)))
	}
	m, k := x.Rows(), x.Cols()
	for i, w := range ws {
		if w.Shape[1] != k || outs[i].Cols() != w.Shape[0] || outs[i].Rows() != m {
			panic(fmt.Sprintf("cuda: matmuls shapes out %v x %v w %v", outs[i].Shape, x.Shape, w.Shape))
		}
	}
	names := "MatMuls x" + strings.Repeat(" out", len(outs)) + strings.Repeat(" w", len(ws))
	b.op(desc(names, append(append([]*engine.Tensor{x}, outs...), ws...)...), func() {
		touched(outs...)
		if m <= gemvMaxRows && k%8 == 0 {
			wpr := gemvWarps(k)
			for _, bf := range []bool{false, true} {
				var gy, gw []dptr
				var gn []int32
				for i, w := range ws {
					if b.useBF16(w) != bf {
						continue
					}
					gy, gn = append(gy, ptr(outs[i])), append(gn, int32(w.Shape[0]))
					if bf {
						gw = append(gw, b.bf16Copy(w))
					} else {
						gw = append(gw, ptr(w))
					}
				}
				for len(gy) > 0 {
					c := min(3, len(gy))
					var y, wt [3]dptr
					var n [3]int32
					copy(y[:], gy[:c])
					copy(wt[:], gw[:c])
					copy(n[:], gn[:c])
					grid := 0
					for _, ni := range n {
						grid += gemvGrid(int(ni), wpr)
					}
					if bf {
						b.launchGemv3Bf16([3]int{grid, 1, 1}, 256, y[0], y[1], y[2], ptr(x), wt[0], wt[1], wt[2], n[0], n[1], n[2], int32(m), int32(k), int32(wpr))
					} else {
						b.launchGemv3F32([3]int{grid, 1, 1}, 256, y[0], y[1], y[2], ptr(x), wt[0], wt[1], wt[2], n[0], n[1], n[2], int32(m), int32(k), int32(wpr))
					}
					gy, gw, gn = gy[c:], gw[c:], gn[c:]
				}
			}
			return
		}
		for i, w := range ws {
			b.gemmInto(uint64(ptr(outs[i])), x, w, "MatMuls")
		}
	})
}

// gemmInto enqueues c[M,N] = x[M,K]·w[N,K]ᵀ as MatMul's GEMM does (outᵀ = W·xᵀ in cuBLAS's
// column-major terms), into the device buffer c.
func (b *Backend) gemmInto(c uint64, x, w *engine.Tensor, what string) {
	m, k, n := x.Rows(), x.Cols(), w.Shape[0]
	g := gemm{transA: opT, transB: opN, m: n, n: m, k: k, lda: k, ldb: k, c: c, cType: dtF32, ldc: n, compute: computeF32}
	b.operands(&g, b.useBF16(w), w, x)
	b.gemm(what, g)
}

// FusesGateUpSwiGLU implements engine.GateUpSwiGLUBackend: Options.FusedMLP.
func (b *Backend) FusesGateUpSwiGLU() bool { return b.opts.FusedMLP }

// GateUpSwiGLU implements engine.GateUpSwiGLUBackend: out[M,I] = silu(x·wgᵀ)·(x·wuᵀ), with the
// products in gate and up where given. Decoding rows (M <= 8, K a multiple of 8, both weights
// of one operand type) take one gemv_swiglu launch for both products and the activation (three
// launches unfused); larger M runs the two GEMMs (into gate and up, or scratch) and
// swiglu_out_bf16, which also writes out's bf16 copy when the weights multiply in bf16, so
// that the down projection's GEMM reads it without a conversion of its own.
func (b *Backend) GateUpSwiGLU(out, gate, up, x, wg, wu *engine.Tensor) {
	m, k, n := x.Rows(), x.Cols(), wg.Shape[0]
	bad := wg.Shape[1] != k || wu.Shape[0] != n || wu.Shape[1] != k || out.Rows() != m || out.Cols() != n
	for _, t := range []*engine.Tensor{gate, up} {
		bad = bad || (t != nil && (t.Rows() != m || t.Cols() != n))
	}
	if bad {
		panic(fmt.Sprintf("cuda: gate/up SwiGLU shapes out %v x %v gate weight %v up weight %v", out.Shape, x.Shape, wg.Shape, wu.Shape))
	}
	b.op(desc("GateUpSwiGLU out x wg wu gate up", out, x, wg, wu, gate, up), func() {
		touched(out, gate, up)
		var gp, upp dptr // 0: not kept
		if gate != nil {
			gp = ptr(gate)
		}
		if up != nil {
			upp = ptr(up)
		}
		bf := b.useBF16(wg)
		if m <= gemvMaxRows && k%8 == 0 && bf == b.useBF16(wu) {
			wpr := gemvWarps(k)
			grid := [3]int{gemvGrid(n, wpr), 1, 1}
			if bf {
				b.launchGemvSwigluBf16(grid, 256, ptr(out), gp, upp, ptr(x), b.bf16Copy(wg), b.bf16Copy(wu), int32(m), int32(n), int32(k), int32(wpr))
			} else {
				b.launchGemvSwigluF32(grid, 256, ptr(out), gp, upp, ptr(x), ptr(wg), ptr(wu), int32(m), int32(n), int32(k), int32(wpr))
			}
			return
		}
		gy, uy := uint64(gp), uint64(upp)
		if gy == 0 {
			gy = b.tmp(uint64(4 * m * n))
		}
		if uy == 0 {
			uy = b.tmp(uint64(4 * m * n))
		}
		b.gemmInto(gy, x, wg, "GateUpSwiGLU gate")
		b.gemmInto(uy, x, wu, "GateUpSwiGLU up")
		var ob dptr // out's bf16 copy, written by the kernel
		if bf && b.useBF16(wu) {
			ob = b.bf16Dest(out)
		}
		b.launchSwigluOutBf16(b.gridFor(int64(m*n)), 256, ptr(out), ob, dptr(gy), dptr(uy), int64(m*n))
		if ob != 0 {
			b.bf16Written(out)
		}
	})
}

// bf16Dest returns the storage of t's bf16 copy (see bf16Copy) for a kernel that writes it
// beside t's fp32 values; after the launch, bf16Written marks it current.
func (b *Backend) bf16Dest(t *engine.Tensor) dptr {
	bf := devBuf(t)
	if bf.bf == 0 {
		bf.bf = b.devAlloc(uint64(max(2*t.Len(), 4)))
	}
	return dptr(bf.bf)
}

// bf16Written marks t's bf16 copy as holding t's current values (t's writer wrote both).
func (b *Backend) bf16Written(t *engine.Tensor) {
	bf := devBuf(t)
	if bf.bf != 0 {
		bf.bfVer = bf.ver
	}
}
