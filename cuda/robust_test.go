package cuda

import (
	"errors"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// wantIn fails unless err's message holds every part.
func wantIn(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one with %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q lacks %q", err, p)
		}
	}
}

// TestOpenRefusesOldGPU: a GPU below sm_80 is refused with the reason, not as "no GPU" — so
// --device auto falls back to the CPU and its log line says why.
func TestOpenRefusesOldGPU(t *testing.T) {
	newFakeGPU(t, 70, 1<<30)
	_, err := Open(Options{})
	wantIn(t, err, "GPU 0 (Fake GPU) is sm_70", "needs sm_80 (Ampere) or newer", "bf16")
	if errors.Is(err, engine.ErrNoDevice) {
		t.Fatalf("an unsupported GPU is reported as no GPU: %v", err)
	}
	d, err := engine.OpenDevice("auto", engine.DeviceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Info.Kind != "cpu" || !strings.Contains(d.Chosen, "is sm_70") {
		t.Fatalf("auto chose %q (%s), want the CPU and the reason", d.Chosen, d.Info.Kind)
	}
	newFakeGPU(t, 80, 1<<30)
	if _, err := Open(Options{}); err != nil {
		t.Fatalf("sm_80 refused: %v", err)
	}
}

// TestKernelTarget: the kernels are compiled for the highest architecture NVRTC supports at or
// below the GPU's; a driver that refuses NVRTC's PTX as too new gets a cubin for the GPU.
func TestKernelTarget(t *testing.T) {
	for _, tc := range []struct {
		name               string
		cc                 int
		archs              []int
		rejectPTX, noCubin bool
		want               string // b.arch, or the error's words
		compiled           []string
	}{
		{"same", 90, []int{75, 80, 86, 89, 90}, false, false, "compute_90", []string{"compute_90"}},
		{"GPU newer than NVRTC", 120, []int{75, 80, 86, 89, 90}, false, false, "compute_90", []string{"compute_90"}},
		{"GPU between NVRTC's archs", 88, []int{80, 86, 89, 90}, false, false, "compute_86", []string{"compute_86"}},
		{"NVRTC without the list", 86, nil, false, false, "compute_86", []string{"compute_86"}},
		{"driver older than NVRTC", 90, []int{80, 90, 100}, true, false, "sm_90", []string{"compute_90", "sm_90"}},
		{"driver older, no cubin either", 90, []int{80, 90}, true, true,
			"refuses the PTX of NVRTC 12.4 (cuModuleLoadData (compute_90): CUDA_ERROR_UNSUPPORTED_PTX_VERSION (222)", []string{"compute_90", "sm_90"}},
		{"NVRTC without a target low enough", 80, []int{90, 100}, false, false, "NVRTC 12.4 compiles for compute_90 to compute_100, none at or below the GPU's sm_80", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGPU(t, tc.cc, 1<<30)
			g.archs, g.rejectPTX, g.rejectCubin = tc.archs, tc.rejectPTX, tc.noCubin
			b, err := Open(Options{})
			if strings.HasPrefix(tc.want, "compute_") || strings.HasPrefix(tc.want, "sm_") {
				if err != nil {
					t.Fatal(err)
				}
				if b.arch != tc.want {
					t.Fatalf("target %s, want %s", b.arch, tc.want)
				}
				kind := "PTX"
				if strings.HasPrefix(tc.want, "sm_") {
					kind = "CUBIN"
				}
				if g.loaded != kind+" "+tc.want {
					t.Fatalf("the driver loaded %q", g.loaded)
				}
			} else {
				wantIn(t, err, tc.want)
			}
			if strings.Join(g.compiled, " ") != strings.Join(tc.compiled, " ") {
				t.Fatalf("compiled for %v, want %v", g.compiled, tc.compiled)
			}
		})
	}
}

// TestOutOfMemoryRecovers: an allocation that fails fails its op (the error names the op, its
// shape and the driver's error) and the backend goes on; an allocation that fits only once the
// allocator's cache is released succeeds.
func TestOutOfMemoryRecovers(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<20)
	b, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Upload(engine.F32, make([]float32, 1<<19), false, 1<<10, 1<<9) // 2 MiB of 1
	wantIn(t, err, "cuda: Upload out [1024 512]: allocate 2097152 bytes", "cuMemAlloc: CUDA_ERROR_OUT_OF_MEMORY (2): the fake driver's description")
	if !outOfMemory(err) {
		t.Fatalf("not an out-of-memory: %v", err)
	}
	// The backend is usable again: the next op runs.
	x, err := b.Upload(engine.F32, make([]float32, 1<<17), false, 1<<17) // 512 KiB
	if err != nil {
		t.Fatalf("after an out-of-memory: %v", err)
	}
	b.Free(x) // cached, not given back
	if g.used < 1<<19 {
		t.Fatalf("freed block not cached: %d bytes held", g.used)
	}
	y, err := b.Upload(engine.F32, make([]float32, 3<<16), false, 3<<16) // 768 KiB: fits once the cache is released
	if err != nil {
		t.Fatalf("allocation after releasing the cache: %v", err)
	}
	if err := b.Download(y, make([]float32, 3<<16)); err != nil {
		t.Fatal(err)
	}
	// An allocation failing inside an op that returns no error: the ops after it do nothing, the
	// next call that returns an error returns it, once.
	big := b.Alloc(1<<19, 1) // 2 MiB of 1
	before := g.count("launchKernel")
	b.Scale(big, 2) // refused: no memory
	b.Scale(y, 2)   // skipped: an error is pending
	if g.count("launchKernel") != before {
		t.Fatal("ops ran after a failed allocation")
	}
	err = b.Sync()
	wantIn(t, err, "cuda: Alloc out [524288 1]: allocate", "CUDA_ERROR_OUT_OF_MEMORY")
	if err := b.Sync(); err != nil {
		t.Fatalf("the error was returned twice: %v", err)
	}
	b.Scale(big, 2)
	wantIn(t, b.Sync(), "cuda: Scale x [524288 1]: operand 0 (shape [524288 1]) has no device memory")
	b.Scale(y, 2)
	if err := b.Sync(); err != nil || g.count("launchKernel") != before+1 {
		t.Fatalf("the backend did not recover: %v (%d launches)", err, g.count("launchKernel")-before)
	}
	if o, err := Open(Options{}); o != b || err != nil {
		t.Fatalf("Open after recoverable errors: %p %v, want the same backend %p", o, err, b)
	}
}

// TestCublasOutOfMemoryRetries: a matmul whose cuBLAS workspace allocation fails releases the
// allocator's cache and runs once more; failing again, its error names cuBLAS's status.
func TestCublasOutOfMemoryRetries(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	x := b.Alloc(16, 32)
	w := b.Alloc(8, 32)
	out := b.Alloc(16, 8)
	c := b.Alloc(1 << 10)
	b.Free(c) // a cached block
	g.fail("blas.gemmEx", cublasStatusAllocFailed)
	b.MatMul(out, x, w)
	if err := b.Sync(); err != nil || g.count("blas.gemmEx") != 2 || g.count("memFree") != 1 {
		t.Fatalf("retry: %v, %d gemms, %d frees", err, g.count("blas.gemmEx"), g.count("memFree"))
	}
	g.fail("blas.gemmEx", cublasStatusAllocFailed, cublasStatusAllocFailed)
	b.MatMul(out, x, w)
	wantIn(t, b.Sync(), "cuda: MatMul out [16 8] x [16 32] w [8 32]: cublasGemmEx MatMul (m=8 n=16 k=32, after releasing the allocator's cache): CUBLAS_STATUS_ALLOC_FAILED (3)")
	g.fail("blas.gemmEx", 13)
	b.MatMul(out, x, w)
	wantIn(t, b.Sync(), "CUBLAS_STATUS_EXECUTION_FAILED (13)")
	g.fail("blas.gemmEx", 42)
	b.MatMul(out, x, w)
	wantIn(t, b.Sync(), "unknown cuBLAS status (42)")
}

// TestKernelFault: a fault surfaces at the next synchronisation; its error lists the ops
// enqueued since the last one, every later op returns it, and Open refuses the device. With
// PROLONG_CUDA_SYNC=1 the error names the op that faulted.
func TestKernelFault(t *testing.T) {
	for _, syncEach := range []bool{false, true} {
		g := newFakeGPU(t, 90, 1<<30)
		if syncEach {
			t.Setenv("PROLONG_CUDA_SYNC", "1")
		}
		b, err := Open(Options{})
		if err != nil {
			t.Fatal(err)
		}
		x, w := b.Alloc(2, 4), b.Alloc(4)
		if err := b.Sync(); err != nil {
			t.Fatal(err)
		}
		g.fail("streamSynchronize", 700)
		b.RMSNorm(x, x, w, 1e-6)
		b.Add(x, x, x)
		err = b.Download(x, make([]float32, 8))
		if syncEach {
			wantIn(t, err, "cuda: RMSNorm out [2 4] x [2 4] w [4]: cuStreamSynchronize: CUDA_ERROR_ILLEGAL_ADDRESS (700)")
		} else {
			wantIn(t, err, "cuda: Download x [2 4]: cuStreamSynchronize: CUDA_ERROR_ILLEGAL_ADDRESS (700)",
				"one of the ops enqueued since the last synchronisation: RMSNorm out [2 4] x [2 4] w [4]; Add out [2 4] x [2 4] y [2 4]; Download x [2 4]",
				"PROLONG_CUDA_SYNC=1")
		}
		if !fatal(err) {
			t.Fatalf("a kernel fault is not fatal: %v", err)
		}
		if s, err2 := b.SumSquares(x); s != 0 || err2 != err {
			t.Fatalf("after the fault: SumSquares %g, %v", s, err2)
		}
		if err2 := b.Sync(); err2 != err {
			t.Fatalf("after the fault: Sync %v", err2)
		}
		o, err2 := Open(Options{})
		if o != nil {
			t.Fatal("Open returned the dead backend")
		}
		wantIn(t, err2, "GPU 0 is unusable in this process after a fatal error", "restart the process", "CUDA_ERROR_ILLEGAL_ADDRESS")
	}
}

// TestSumSquaresError: a device error while computing a sum of squares is returned (the old
// backend returned NaN, which the optimizer reported as a NaN gradient norm).
func TestSumSquaresError(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	x := b.Alloc(3, 5)
	g.fail("memcpyDtoHAsync", 1)
	s, err := b.SumSquares(x)
	wantIn(t, err, "cuda: SumSquares x [3 5]: cuMemcpyDtoHAsync: CUDA_ERROR_INVALID_VALUE (1)")
	if s != 0 {
		t.Fatalf("SumSquares %g with an error", s)
	}
	if _, err := b.SumSquares(x); err != nil {
		t.Fatalf("second SumSquares: %v", err)
	}
}

// TestDriverErrorNames: the driver's own name where cuGetErrorName knows the code, the
// header's table where it does not.
func TestDriverErrorNames(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	x := b.Alloc(4)
	g.fail("launchKernel", 701) // not in the fake driver's table
	b.Scale(x, 2)
	wantIn(t, b.Sync(), "cuda: Scale x [4]: launch scale grid [1 1 1] block 256: CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES (701)")
	g.fail("launchKernel", 12345)
	b.Scale(x, 2)
	wantIn(t, b.Sync(), "unknown CUDA driver status (12345)")
}

// TestSumSquaresManyOneRoundTrip: the gradient norm of many tensors is one launch per tensor,
// one download and one synchronisation in all (SumSquares per tensor: one of each per tensor).
func TestSumSquaresManyOneRoundTrip(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	var xs []*engine.Tensor
	for _, n := range []int{5, 1000, 70001, 3} {
		xs = append(xs, b.Alloc(n))
	}
	l0, d0, s0 := g.count("launchKernel"), g.count("memcpyDtoHAsync"), g.count("streamSynchronize")
	sums, err := b.SumSquaresMany(xs)
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != len(xs) {
		t.Fatalf("%d sums for %d tensors", len(sums), len(xs))
	}
	if l, d, s := g.count("launchKernel")-l0, g.count("memcpyDtoHAsync")-d0, g.count("streamSynchronize")-s0; l != 4 || d != 1 || s != 1 {
		t.Errorf("SumSquaresMany of 4 tensors: %d launches, %d downloads, %d synchronisations; want 4, 1, 1", l, d, s)
	}
	d0, s0 = g.count("memcpyDtoHAsync"), g.count("streamSynchronize")
	for _, x := range xs {
		if _, err := b.SumSquares(x); err != nil {
			t.Fatal(err)
		}
	}
	if d, s := g.count("memcpyDtoHAsync")-d0, g.count("streamSynchronize")-s0; d != 4 || s != 4 {
		t.Errorf("SumSquares of 4 tensors: %d downloads, %d synchronisations; want 4 each (the cost SumSquaresMany saves)", d, s)
	}
}
