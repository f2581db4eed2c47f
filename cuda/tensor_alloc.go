package cuda

import "github.com/prolong-rl/prolong/engine"

// Tensors' device memory: Alloc zeroes it, AllocUninit may leave it as it is (Options.UninitAlloc)
// or fill it with NaN (Options.PoisonUninit), Free returns it to the caching allocator.

// Alloc implements engine.Backend: a zeroed F32 tensor.
func (b *Backend) Alloc(shape ...int) *engine.Tensor { return b.allocF32(shape, true, 0) }

// poisonBits is what Options.PoisonUninit fills uninitialised tensors with: a quiet NaN.
const poisonBits = 0xFFFFFFFF

// AllocUninit implements engine.UninitAllocator: an F32 tensor whose contents are undefined,
// with no memset enqueued (Options.UninitAlloc), or every element NaN (Options.PoisonUninit), or
// else zeroed as by Alloc.
func (b *Backend) AllocUninit(shape ...int) *engine.Tensor {
	switch {
	case b.opts.PoisonUninit:
		return b.allocF32(shape, true, poisonBits)
	case b.opts.UninitAlloc:
		return b.allocF32(shape, false, 0)
	}
	return b.allocF32(shape, true, 0)
}

// allocF32 allocates an F32 tensor of shape, each 32-bit element set to bits when fill.
func (b *Backend) allocF32(shape []int, fill bool, bits uint32) *engine.Tensor {
	t := &engine.Tensor{Shape: append([]int(nil), shape...), DType: engine.F32}
	n := uint64(t.Len()) * 4
	b.op(desc("Alloc out", t), func() {
		bf := b.newBuf(b.devAlloc(max(n, 4)), n)
		t.Buf = bf
		if fill && bf.ptr != 0 && n > 0 {
			b.enq("cuMemsetD32Async", b.drv.memsetD32Async, uintptr(bf.ptr), uintptr(bits), uintptr(n/4), b.strm)
		}
	})
	if t.Buf == nil { // after an error: a tensor without memory, which ops refuse
		t.Buf = &buf{devMem: &devMem{}, bytes: n}
	}
	return t
}

// Free implements engine.Backend.
func (b *Backend) Free(t *engine.Tensor) {
	if t == nil || t.Buf == nil {
		return
	}
	bf, ok := t.Buf.(*buf)
	if !ok {
		return
	}
	bf.cleanup.Stop()
	b.mu.Lock()
	var r *stepRec
	if len(b.recs) > 0 {
		r = b.recs[threadID()]
	}
	if r != nil { // the recorded launches that use it are enqueued at EndDecodeStep
		r.frees = append(r.frees, bf.ptr, bf.bf)
	} else {
		b.alloc.Free(bf.ptr)
		b.alloc.Free(bf.bf)
	}
	b.mu.Unlock()
	bf.ptr, bf.bf = 0, 0
	t.Buf = nil
}
