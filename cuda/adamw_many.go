package cuda

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
)

// adamWChunk is ADAMW_CHUNK of kernels/adamw_many.cu: the elements of one tensor a block
// updates at a time.
const adamWChunk = 16384

// adamWTensor is the descriptor of one tensor that adamw_many reads (struct AdamWTensor of
// kernels/adamw_many.cu, 96 bytes, field for field).
type adamWTensor struct {
	p, g, m, v, bf uint64
	n, chunk0      int64
	decay, b1, b2  float32
	c1, c2, step   float32
	isb2, eps      float32
	gscale         float32 // the gradient's scale (engine.AdamWStep.GradScale; 1: none)
	zero           int32   // 1: leave the gradient zeros (engine.AdamWStep.ZeroGrad)
}

// adamWConsts are the constants that the adamw kernels take for h, folded as the CPU backend
// folds them: decay, b1, b2, c1, c2, step, isb2, eps.
func adamWConsts(h engine.AdamWStep) [8]float32 {
	return [8]float32{float32(1 - h.LR*h.WeightDecay), float32(h.Beta1), float32(h.Beta2), float32(1 - h.Beta1), float32(1 - h.Beta2),
		float32(h.LR / h.BC1), float32(1 / math.Sqrt(h.BC2)), float32(h.Eps)}
}

// FusesAdamWMany implements engine.AdamWManySwitch: Options.MultiTensorAdamW.
func (b *Backend) FusesAdamWMany() bool { return b.opts.MultiTensorAdamW }

// AdamWMany implements engine.AdamWManyBackend: one adamw_many launch for all tensors (their
// descriptors uploaded in one copy), which also writes the bf16 copy of each parameter that
// keeps one (a weight of a bf16 matmul), so that the next forward's matmuls convert nothing,
// scales each gradient as it reads it (GradScale: gradient clipping, a scale launch per tensor
// and a pass over all gradients less; the gradients are left unscaled) and zeroes it after
// (ZeroGrad: a launch per tensor less); each tensor's fp32 values are AdamW's bit for bit. The optimizer uses it only with
// Options.MultiTensorAdamW (FusesAdamWMany).
func (b *Backend) AdamWMany(ps, gs, ms, vs []*engine.Tensor, hs []engine.AdamWStep) {
	if len(gs) != len(ps) || len(ms) != len(ps) || len(vs) != len(ps) || len(hs) != len(ps) {
		panic(fmt.Sprintf("cuda: AdamWMany of %d parameters, %d gradients, %d and %d moments, %d steps", len(ps), len(gs), len(ms), len(vs), len(hs)))
	}
	for i, p := range ps {
		if n := p.Len(); gs[i].Len() != n || ms[i].Len() != n || vs[i].Len() != n {
			panic(fmt.Sprintf("cuda: AdamWMany tensor %d: parameter %v, gradient %v, moments %v and %v", i, p.Shape, gs[i].Shape, ms[i].Shape, vs[i].Shape))
		}
	}
	b.op(desc(fmt.Sprintf("AdamWMany of %d tensors", len(ps))), func() {
		for i, p := range ps {
			if d := desc(fmt.Sprintf("AdamWMany[%d] p g m v", i), p, gs[i], ms[i], vs[i]); d.missing >= 0 {
				b.begin(d) // fails, naming the operand without memory
				return
			}
		}
		descs := make([]adamWTensor, 0, len(ps))
		var chunks int64
		for i, p := range ps {
			n := int64(p.Len())
			if n == 0 {
				continue
			}
			c := adamWConsts(hs[i])
			d := adamWTensor{p: uint64(ptr(p)), g: uint64(ptr(gs[i])), m: uint64(ptr(ms[i])), v: uint64(ptr(vs[i])), n: n, chunk0: chunks,
				decay: c[0], b1: c[1], b2: c[2], c1: c[3], c2: c[4], step: c[5], isb2: c[6], eps: c[7], gscale: 1}
			if hs[i].ScalesGrad() {
				d.gscale = float32(hs[i].GradScale)
			}
			if hs[i].ZeroGrad {
				d.zero = 1
			}
			if p.DType == engine.F32 {
				d.bf = devBuf(p).bf // 0 unless a bf16 matmul made the parameter a copy
			}
			descs = append(descs, d)
			chunks += (n + adamWChunk - 1) / adamWChunk
		}
		if len(descs) > 0 {
			dev := b.upload(unsafe.Pointer(&descs[0]), uint64(len(descs))*uint64(unsafe.Sizeof(adamWTensor{})))
			grid := min(chunks, int64(b.sms)*32)
			b.launchAdamwMany([3]int{int(grid), 1, 1}, 256, dev, int32(len(descs)), chunks)
		}
		for i, p := range ps {
			touched(p, ms[i], vs[i])
			if p.DType == engine.F32 && !b.failed() {
				b.bf16Written(p)
			}
		}
	})
}

// sumsqTensor is the descriptor of one tensor that sumsq_many reads (struct SumsqTensor of
// kernels/adamw_many.cu, 24 bytes, field for field).
type sumsqTensor struct {
	x              uint64
	n              int64
	blocks, block0 int32
}

// sumSquaresOneLaunch enqueues the partial sums of squares of xs (SumSquaresMany, with
// Options.MultiTensorAdamW) as one sumsq_many launch: partial[offs[i]:offs[i+1]] gets what
// tensor i's own sumsq_partial launch of offs[i+1]-offs[i] blocks would write, bit for bit.
// It reports false when a tensor has no memory (the op has then failed, naming it).
func (b *Backend) sumSquaresOneLaunch(partial dptr, xs []*engine.Tensor, offs []int) bool {
	descs := make([]sumsqTensor, 0, len(xs))
	for i, x := range xs {
		if !b.begin(desc("SumSquaresMany x", x)) {
			return false
		}
		descs = append(descs, sumsqTensor{x: uint64(ptr(x)), n: int64(x.Len()), blocks: int32(offs[i+1] - offs[i]), block0: int32(offs[i])})
	}
	dev := b.upload(unsafe.Pointer(&descs[0]), uint64(len(descs))*uint64(unsafe.Sizeof(sumsqTensor{})))
	b.launchSumsqMany([3]int{offs[len(xs)], 1, 1}, 256, partial, dev, int32(len(descs)))
	return true
}

var (
	_ engine.AdamWManyBackend = (*Backend)(nil)
	_ engine.AdamWManySwitch  = (*Backend)(nil)
)
