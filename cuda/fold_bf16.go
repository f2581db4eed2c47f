package cuda

import "github.com/prolong-rl/prolong/engine"

// The f32→bf16 conversions folded into the kernels that produce the converted tensors
// (Options.FoldBF16, kernels/fold_bf16.cu). A bf16 GEMM reads its fp32 activation through
// bf16Copy, which converts it with f32_to_bf16_kernel unless the tensor's bf16 copy is
// current. Here the producing kernel writes the copy beside the fp32 values (bf16Dest) and
// the op marks it current (foldWritten); the next write of the tensor by any op (touched)
// makes it stale again, and the next GEMM converts as before. Folded: the RMSNorm outputs
// (RMSNorm, AddRMSNorm: the inputs of the Q/K/V, gate/up and LM-head projections), the
// unfused SwiGLU's output (the down projection's input; GateUpSwiGLU folds it already), the
// paged attention's output where attn_paged_gqa computes it (o_proj's input in prefill and
// decoding over an fp32 cache), the SwiGLU backward's dgate and dup (the inputs of the gate
// and up projections' MatMulDX and MatMulDW), and qk-norm's backward dq and dk (RMSNormBackward
// over heads: the Q and K projections' backward). Not folded: the other attention kernels (the
// training forward, decode_attn, the tiled kernels) and the backward's other GEMM inputs
// (dq, dk from RoPE without qk-norm, dv, the residual gradient after Add).

// foldDest returns the storage of t's bf16 copy for a kernel that writes it beside t's fp32
// values, or 0 where none is to be written: Options.FoldBF16 off, or no GEMM that would read
// the copy (neither Options.BF16Matmul nor a bf16 linear weight uploaded to this backend: the
// GEMMs then multiply fp32 operands).
func (b *Backend) foldDest(t *engine.Tensor) dptr {
	if !b.opts.FoldBF16 || !(b.opts.BF16Matmul || b.bf16Weights) {
		return 0
	}
	return b.bf16Dest(t)
}

// foldRowDest is foldDest for a layer's normed input or MLP activation t [M, K], the input of
// the next projections: 0 also for rows that the matrix-vector kernels multiply (decoding
// rows: M <= 8, K a multiple of 8, as MatMul, MatMuls and GateUpSwiGLU choose), which read t
// in fp32 and never its copy, and for a norm over parts of a row (n < K: the qk-norm of heads,
// whose output RoPE rewrites before any projection).
func (b *Backend) foldRowDest(t *engine.Tensor, n int) dptr {
	if n != t.Cols() || (t.Rows() <= gemvMaxRows && t.Cols()%8 == 0) {
		return 0
	}
	return b.foldDest(t)
}

// foldWritten marks the copies that a folding kernel wrote as current, unless the op failed
// (the kernel may not have run).
func (b *Backend) foldWritten(ts ...*engine.Tensor) {
	if b.failed() {
		return
	}
	for _, t := range ts {
		b.bf16Written(t)
	}
}
