package cuda

import (
	"time"

	"github.com/prolong-rl/prolong/engine"
)

// CopyBandwidth measures device memory bandwidth in bytes/s: a device-to-device copy of bytes
// bytes, counting bytes read plus bytes written, best of reps after a warm-up.
func (b *Backend) CopyBandwidth(bytes uint64, reps int) (float64, error) {
	var rate float64 // 0 when the op does not run
	err := b.opErr(desc("CopyBandwidth"), func() error {
		src, dst := b.tmp(bytes), b.tmp(bytes)
		b.launchScale(b.gridFor(int64(bytes/4)), 256, dptr(src), float32(0), int64(bytes/4))
		best := time.Duration(1 << 62)
		for r := 0; r <= reps; r++ {
			b.fail(b.synchronize("cuStreamSynchronize"))
			t0 := time.Now()
			b.fail(b.drv.check("cuMemcpyDtoDAsync", call(b.drv.memcpyDtoDAsync, uintptr(dst), uintptr(src), uintptr(bytes), b.strm)))
			b.fail(b.synchronize("cuStreamSynchronize"))
			if r > 0 {
				best = min(best, time.Since(t0))
			}
		}
		if b.failed() {
			return nil
		}
		rate = 2 * float64(bytes) / best.Seconds()
		return nil
	})
	return rate, err
}

// GemmPeak measures the bf16 matmul rate in FLOP/s: n×n×n cublasGemmEx with bf16 operands
// (random data: zeros run faster) and fp32 accumulation, best of reps after a warm-up.
func (b *Backend) GemmPeak(n, reps int) (float64, error) {
	data := make([]float32, n*n)
	for i := range data {
		data[i] = float32((i*7919)%2001-1000) / 1000
	}
	w, err := b.Upload(engine.BF16, data, true, n, n)
	if err != nil {
		return 0, err
	}
	defer b.Free(w)
	x, err := b.Upload(engine.BF16, data, true, n, n)
	if err != nil {
		return 0, err
	}
	defer b.Free(x)
	out := b.Alloc(n, n)
	defer b.Free(out)
	var rate float64 // 0 unless the op succeeds
	err = b.opErr(desc("GemmPeak w x out", w, x, out), func() error {
		g := gemm{transA: opT, transB: opN, m: n, n: n, k: n, a: uint64(ptr(w)), aType: dtBF16, lda: n,
			b: uint64(ptr(x)), bType: dtBF16, ldb: n, c: uint64(ptr(out)), cType: dtF32, ldc: n, compute: computeF32}
		best := time.Duration(1 << 62)
		for r := 0; r <= reps; r++ {
			b.fail(b.synchronize("cuStreamSynchronize"))
			t0 := time.Now()
			b.gemm("GemmPeak", g)
			b.fail(b.synchronize("cuStreamSynchronize"))
			if r > 0 {
				best = min(best, time.Since(t0))
			}
		}
		if b.failed() {
			return nil
		}
		rate = 2 * float64(n) * float64(n) * float64(n) / best.Seconds()
		return nil
	})
	return rate, err
}
