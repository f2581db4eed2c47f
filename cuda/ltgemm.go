package cuda

import (
	"fmt"
	"log/slog"
)

// The GEMM path of Options.CublasLt: the backend's unbatched GEMMs run as cublasLtMatmul with
// an algorithm cuBLASLt's heuristic chose for the GEMM's descriptor and a workspace, instead of
// cublasGemmEx (whose algorithm cuBLAS picks inside every call, with its own workspace).

// ltWorkspaceBytes is the workspace of a backend's cuBLASLt GEMMs: 32 MiB, what NVIDIA
// recommends for Hopper (cuBLAS's own default workspace there is 32 MiB too).
const ltWorkspaceBytes = 32 << 20

// ltMaxPlans bounds the plan cache. Training shapes repeat, but prefill batches of varying
// token counts bring new M values; past this many plans one is dropped for each new one (a
// variable for tests).
var ltMaxPlans = 4096

// ltGemms is a backend's cuBLASLt state (guarded by the backend's mutex).
type ltGemms struct {
	lib    *cublasLt
	handle uintptr
	ws     uint64 // the device workspace, ltWorkspaceBytes, allocated once
	on     bool   // the GEMMs go through cuBLASLt (Options.CublasLt, SetCublasLt)
	err    error  // why cuBLASLt could not be set up (logged once), or nil
	// plans by descriptor; nil: the heuristic found no algorithm, the shape runs on GemmEx.
	plans map[ltKey]*ltPlan
	// GEMMs run each way (tests and the benchmark read them).
	runs, gemmEx int
}

// ltKey is what a cuBLASLt plan depends on: the GEMM's descriptor without its addresses and
// scalars, and the alignment of the addresses (ptrAlign).
type ltKey struct {
	transA, transB, m, n, k int
	aType, lda              int
	bType, ldb              int
	cType, ldc              int
	compute                 int
	alignA, alignB, alignC  uint32
}

func ltKeyOf(g gemm) ltKey {
	return ltKey{transA: g.transA, transB: g.transB, m: g.m, n: g.n, k: g.k, aType: g.aType, lda: g.lda,
		bType: g.bType, ldb: g.ldb, cType: g.cType, ldc: g.ldc, compute: g.compute,
		alignA: ptrAlign(g.a), alignB: ptrAlign(g.b), alignC: ptrAlign(g.c)}
}

// String names the shape as the log shows it.
func (k ltKey) String() string {
	op := map[int]string{opN: "N", opT: "T"}
	dt := map[int]string{dtF32: "f32", dtBF16: "bf16"}
	ct := map[int]string{computeF32: "32F", computeF32FastTF32: "32F_FAST_TF32"}
	return fmt.Sprintf("m=%d n=%d k=%d op(A)=%s op(B)=%s lda=%d ldb=%d ldc=%d types %s,%s->%s compute %s alignment %d,%d,%d",
		k.m, k.n, k.k, op[k.transA], op[k.transB], k.lda, k.ldb, k.ldc, dt[k.aType], dt[k.bType], dt[k.cType], ct[k.compute],
		k.alignA, k.alignB, k.alignC)
}

// setupLt loads cuBLASLt, makes its handle and allocates the workspace, once; the context must
// be current. A failure is logged once and kept: the GEMMs stay on cublasGemmEx.
func (b *Backend) setupLt() error {
	if b.lt.lib != nil || b.lt.err != nil {
		return b.lt.err
	}
	err := func() error {
		lib, err := loadCublasLtFn()
		if err != nil {
			return err
		}
		h, err := lib.newHandle()
		if err != nil {
			return err
		}
		ws, err := b.alloc.Alloc(ltWorkspaceBytes)
		if err != nil {
			lib.destroyHandle(h)
			return fmt.Errorf("its workspace of %d MiB: %w", ltWorkspaceBytes>>20, err)
		}
		b.lt.lib, b.lt.handle, b.lt.ws = lib, h, ws
		b.lt.plans = map[ltKey]*ltPlan{}
		return nil
	}()
	if err != nil {
		b.lt.err = fmt.Errorf("cuda: cuBLASLt (Options.CublasLt) is unavailable, the GEMMs run on cublasGemmEx: %w", err)
		slog.Warn("cuda: cuBLASLt (Options.CublasLt) is unavailable; the GEMMs run on cublasGemmEx", "reason", err)
	}
	return b.lt.err
}

// SetCublasLt switches the cuBLASLt GEMMs (Options.CublasLt) on or off for the ops enqueued
// from now on, loading cuBLASLt and allocating its workspace the first time; an error says why
// cuBLASLt cannot be used (the GEMMs then stay on cublasGemmEx). Open hands out one Backend per
// Options, so this changes it for every holder of b; benchmarks use it to time both paths on
// one backend. Call it between steps, not while a decode step is being recorded.
func (b *Backend) SetCublasLt(on bool) error {
	return b.opErr(desc("SetCublasLt"), func() error {
		if !on {
			b.lt.on = false
			return nil
		}
		err := b.setupLt()
		b.lt.on = err == nil
		return err
	})
}

// CublasLtStats reports the cuBLASLt GEMM path's work so far: GEMMs run by cublasLtMatmul,
// GEMMs run by cublasGemmEx while it was on (batched ones, and shapes without an algorithm),
// plans made, and shapes without an algorithm.
func (b *Backend) CublasLtStats() (lt, gemmEx, plans, noAlgo int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.lt.plans {
		if p == nil {
			noAlgo++
		} else {
			plans++
		}
	}
	return b.lt.runs, b.lt.gemmEx, plans, noAlgo
}

// ltPlanFor returns the cuBLASLt plan that runs g, or nil when g runs on cublasGemmEx: the
// option is off, g is batched, or the heuristic has no algorithm for g's descriptor (logged
// once per descriptor). The heuristic is asked once per descriptor.
func (b *Backend) ltPlanFor(what string, g gemm) *ltPlan {
	if !b.lt.on {
		return nil
	}
	if g.batch > 0 {
		b.lt.gemmEx++
		return nil
	}
	key := ltKeyOf(g)
	p, ok := b.lt.plans[key]
	if !ok {
		if len(b.lt.plans) >= ltMaxPlans {
			for k, old := range b.lt.plans { // any one: cublasLtMatmul reads a plan's descriptors when called only
				if old != nil {
					old.destroy()
				}
				delete(b.lt.plans, k)
				break
			}
		}
		var err error
		p, err = b.lt.lib.newLtPlan(b.lt.handle, g, ltWorkspaceBytes)
		if err != nil {
			slog.Warn("cuda: cuBLASLt has no algorithm for a GEMM; this shape runs on cublasGemmEx", "gemm", what, "shape", key.String(), "reason", err)
			p = nil
		}
		b.lt.plans[key] = p
	}
	if p == nil {
		b.lt.gemmEx++
		return nil
	}
	b.lt.runs++
	return p
}
