package cuda

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
)

// TestLibrarySearchError: a library that is not there gives one error naming what was searched
// and the variable that overrides the search.
func TestLibrarySearchError(t *testing.T) {
	t.Setenv("PROLONG_CUBLAS", "/nonexistent/libcublas.so.13")
	_, _, err := specCublas.open()
	if err == nil {
		t.Fatal("opened a library that does not exist")
	}
	for _, want := range []string{"cuBLAS", "PROLONG_CUBLAS", "/nonexistent/libcublas.so.13"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	// Without the override every soname is tried, by the loader's search and in the usual dirs.
	t.Setenv("PROLONG_CUBLAS", "")
	t.Setenv("CUDA_HOME", "/opt/mycuda")
	c := specCublas.candidates()
	for _, want := range []string{"libcublas.so.13", "/opt/mycuda/lib64/libcublas.so.13", "/usr/local/cuda/lib64/libcublas.so.12"} {
		if !contains(c, want) {
			t.Errorf("candidates %v lack %s", c, want)
		}
	}
	spec := libSpec{"a test library", "PROLONG_TEST_LIB", []string{"libprolong-does-not-exist.so.9"}}
	_, _, err = spec.open()
	if err == nil || !strings.Contains(err.Error(), "libprolong-does-not-exist.so.9") || !strings.Contains(err.Error(), "set PROLONG_TEST_LIB") {
		t.Fatalf("error does not say what was searched and how to override: %v", err)
	}
}

// TestNoDriverIsNoDevice: a driver the search does not find means no GPU here
// (engine.ErrNoDevice: --device auto falls back to the CPU in a few words) and the error keeps
// the search for --device cuda; a driver named by PROLONG_LIBCUDA that does not load is a real
// error.
func TestNoDriverIsNoDevice(t *testing.T) {
	// A machine with a GPU has one: the search is pointed at a library that is nowhere, and
	// the backends opened by earlier tests are set aside (Open returns those).
	savedSpec := specDriver
	openMu.Lock()
	savedOpened := opened
	opened = map[Options]*Backend{}
	openMu.Unlock()
	t.Cleanup(func() {
		specDriver = savedSpec
		openMu.Lock()
		opened = savedOpened
		openMu.Unlock()
	})
	specDriver.names = []string{"libprolong-no-cuda.so.1"}
	t.Setenv("PROLONG_LIBCUDA", "")
	_, err := Open(Options{})
	if !errors.Is(err, engine.ErrNoDevice) || !strings.Contains(err.Error(), "the CUDA driver not found (tried libprolong-no-cuda.so.1, also under") {
		t.Errorf("no driver: %v (ErrNoDevice: %v)", err, errors.Is(err, engine.ErrNoDevice))
	}
	// (The CPU backend is registered in this test binary by engine/enginetest's import.)
	if d, err := engine.OpenDevice("auto", engine.DeviceOptions{}); err != nil || d.Chosen != d.Name()+", no GPU found" || !strings.HasPrefix(d.Chosen, "cpu (") || d.Info.Kind != "cpu" {
		t.Errorf("auto: %+v %v", d, err)
	}
	_, err = engine.OpenBackend("cuda")
	if !errors.Is(err, engine.ErrNoDevice) {
		t.Errorf("registered cuda: %v", err)
	}
	t.Setenv("PROLONG_LIBCUDA", "/nonexistent/libcuda.so.1")
	if _, err := Open(Options{}); err == nil || errors.Is(err, engine.ErrNoDevice) || !strings.Contains(err.Error(), "PROLONG_LIBCUDA=/nonexistent/libcuda.so.1") {
		t.Errorf("PROLONG_LIBCUDA that does not load: %v (ErrNoDevice: %v)", err, errors.Is(err, engine.ErrNoDevice))
	}
}

func contains(l []string, s string) bool {
	for _, v := range l {
		if v == s {
			return true
		}
	}
	return false
}

// TestSizeClass: classes cover the request, waste at most 25% above 2 KiB, and are monotone.
func TestSizeClass(t *testing.T) {
	for _, tc := range []struct{ n, want uint64 }{
		{0, 512}, {1, 512}, {512, 512}, {513, 1024}, {2048, 2048}, {2049, 2560}, {4096, 4096},
		{4097, 5120}, {5121, 6144}, {7169, 8192}, {1 << 30, 1 << 30}, {1<<30 + 1, 1<<30 + 1<<28},
	} {
		if got := sizeClass(tc.n); got != tc.want {
			t.Errorf("sizeClass(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
	prev := uint64(0)
	for n := uint64(1); n < 1<<22; n = n*9/8 + 1 {
		c := sizeClass(n)
		if c < n || c < prev || (n > 2048 && float64(c) > 1.25*float64(n)+512) {
			t.Fatalf("sizeClass(%d) = %d (previous %d)", n, c, prev)
		}
		prev = c
	}
}

// TestAllocator checks the caching allocator's bookkeeping with a fake driver.
func TestAllocator(t *testing.T) {
	var next uint64 = 0x1000
	live := map[uint64]uint64{}
	limit := uint64(1 << 20)
	used := uint64(0)
	mallocs := 0
	a := newAllocator(func(n uint64) (uint64, error) {
		if used+n > limit {
			return 0, errors.New("CUDA_ERROR_OUT_OF_MEMORY")
		}
		mallocs++
		p := next
		next += n
		live[p] = n
		used += n
		return p, nil
	}, func(p uint64) error {
		used -= live[p]
		delete(live, p)
		return nil
	})
	p1, err := a.Alloc(1000)
	if err != nil {
		t.Fatal(err)
	}
	a.Free(p1)
	p2, _ := a.Alloc(900) // same class: reused, no driver call
	if p2 != p1 || mallocs != 1 {
		t.Fatalf("block not reused: %#x vs %#x, %d mallocs", p2, p1, mallocs)
	}
	inUse, cached, peak := a.Stats()
	if inUse != 1024 || cached != 0 || peak != 1024 {
		t.Fatalf("stats %d %d %d", inUse, cached, peak)
	}
	a.Free(p2)
	// Out of memory with cached blocks: they are released and the allocation retried.
	big, err := a.Alloc(limit - 512)
	if err != nil {
		t.Fatalf("retry after releasing the cache failed: %v", err)
	}
	if _, cached, _ := a.Stats(); cached != 0 || len(live) != 1 {
		t.Fatalf("cache not released: cached %d, live %v", cached, live)
	}
	// Out of memory with nothing cached: an error naming the size.
	if _, err := a.Alloc(4096); err == nil || !strings.Contains(err.Error(), "OUT_OF_MEMORY") || !strings.Contains(err.Error(), "4096") {
		t.Fatalf("want an out-of-memory error, got %v", err)
	}
	a.Free(big)
	defer func() {
		if recover() == nil {
			t.Fatal("double free not caught")
		}
	}()
	a.Free(big)
}

// TestPackArgs checks the kernel parameter layout: one 8-byte slot per argument, the value in
// its low bytes (worked by hand: int32 -2 is 0xfffffffe, float32 1.5 is 0x3fc00000, float64
// -0.25 is 0xbfd0000000000000), and a pointer to each slot.
func TestPackArgs(t *testing.T) {
	k := packArgs([]uint64{argPtr(0xdeadbeef00), argI32(-2), argF32(1.5), argI64(1 << 40), argF64(-0.25),
		argU32(7), argU64(1<<63 + 5), argI64(-1)})
	want := []uint64{0xdeadbeef00, 0xfffffffe, 0x3fc00000, 1 << 40, 0xbfd0000000000000, 7, 0x8000000000000005,
		0xffffffffffffffff}
	for i, w := range want {
		if k.vals[i] != w {
			t.Errorf("arg %d = %#x, want %#x", i, k.vals[i], w)
		}
		if k.ptrs[i] != unsafe.Pointer(&k.vals[i]) {
			t.Errorf("pointer %d does not point at its slot", i)
		}
	}
	if *(*int32)(k.ptrs[1]) != -2 || *(*float32)(k.ptrs[2]) != 1.5 || *(*float64)(k.ptrs[4]) != -0.25 {
		t.Error("values not readable as their C type through their pointer")
	}
	if packArgs(nil).params() != nil {
		t.Error("a kernel without parameters gets a non-nil kernelParams")
	}
}

// TestKernelCache: the key changes with the source, the architecture and the compiler version;
// stored PTX reads back; a missing entry is nil.
func TestKernelCache(t *testing.T) {
	src := KernelSource()
	k := cacheKey(src, "compute_90", "13.0")
	for _, other := range []string{cacheKey(src+" ", "compute_90", "13.0"), cacheKey(src, "compute_80", "13.0"), cacheKey(src, "compute_90", "12.8")} {
		if other == k {
			t.Fatal("cache key does not change with its inputs")
		}
	}
	if cacheKey(src, "compute_90", "13.0") != k {
		t.Fatal("cache key not deterministic")
	}
	dir := t.TempDir()
	t.Setenv("PROLONG_CUDA_CACHE", dir)
	d, err := cacheDir()
	if err != nil || d != dir {
		t.Fatalf("cacheDir = %q, %v", d, err)
	}
	if cachedPTX(dir, k) != nil {
		t.Fatal("empty cache returned PTX")
	}
	if err := storePTX(dir, k, []byte(".version 8.0")); err != nil {
		t.Fatal(err)
	}
	if string(cachedPTX(dir, k)) != ".version 8.0" {
		t.Fatal("stored PTX not read back")
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*.tmp"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// TestScatterMeta: destinations grouped ascending, sources in order within each.
func TestScatterMeta(t *testing.T) {
	meta, u := scatterMeta([]int32{5, 2, 5, 7, 2, 5})
	want := []int32{2, 5, 7 /* starts */, 0, 2, 5, 6 /* order */, 1, 4, 0, 2, 5, 3}
	if u != 3 || len(meta) != len(want) {
		t.Fatalf("meta %v (u %d), want %v", meta, u, want)
	}
	for i := range want {
		if meta[i] != want[i] {
			t.Fatalf("meta %v, want %v", meta, want)
		}
	}
}

// TestAllocatorReclaim: out of memory with nothing cached, the allocator asks for unreachable
// tensors to be reclaimed (a garbage collection runs their cleanups, which Free their blocks),
// waits for enqueued work before returning cached blocks to the driver, and retries.
func TestAllocatorReclaim(t *testing.T) {
	used, limit := uint64(0), uint64(4096)
	var events []string
	a := newAllocator(func(n uint64) (uint64, error) {
		if used+n > limit {
			events = append(events, "oom")
			return 0, errors.New("CUDA_ERROR_OUT_OF_MEMORY")
		}
		used += n
		events = append(events, "malloc")
		return 0x1000 + used, nil
	}, func(p uint64) error {
		used -= 4096
		events = append(events, "release")
		return nil
	})
	dropped, err := a.Alloc(4096) // a tensor that will be dropped without Free
	if err != nil {
		t.Fatal(err)
	}
	a.sync = func() { events = append(events, "sync") }
	a.reclaim = func() {
		events = append(events, "reclaim")
		a.Free(dropped) // what the cleanup does
	}
	if _, err := a.Alloc(4096); err != nil {
		t.Fatalf("allocation after reclaim failed: %v", err)
	}
	want := "malloc oom reclaim sync release malloc"
	if got := strings.Join(events, " "); got != want {
		t.Fatalf("events %q, want %q", got, want)
	}
}

// TestOpsAfterFatalError: after a fatal device error (a kernel fault: the context is lost) no
// op touches the device: every op returns at once, without running its body (the tensors here
// have no device memory, so a body that ran would panic), releases the backend's lock, and the
// ops that return an error return the fatal one with their zero results (Alloc: a tensor
// without memory; SumSquares: 0 and the error).
func TestOpsAfterFatalError(t *testing.T) {
	sticky := errors.New("CUDA_ERROR_ILLEGAL_ADDRESS (a test's)")
	b := &Backend{dead: sticky}
	ten := func(shape ...int) *engine.Tensor { return &engine.Tensor{Shape: shape, DType: engine.F32} }
	x, w, lse := ten(2, 4), ten(4, 4), ten(2, 1)
	seq := []int32{0, 2}
	store := &kvStore{b: b, layers: 1, kvHeads: 1, blockSize: 16, headDim: 4, k: make([]uint64, 1), v: make([]uint64, 1)}
	isSticky := func(err error) error {
		if err != sticky {
			return fmt.Errorf("error %v, want the sticky one", err)
		}
		return nil
	}
	for _, c := range []struct {
		name string
		op   func() error
	}{
		{"Alloc", func() error {
			t := b.Alloc(2, 4)
			if bf, ok := t.Buf.(*buf); !ok || bf.ptr != 0 || bf.bytes != 32 {
				return fmt.Errorf("Alloc gave buffer %#v", t.Buf)
			}
			return nil
		}},
		{"Upload", func() error {
			got, err := b.Upload(engine.BF16, make([]float32, 8), true, 2, 4)
			if got != nil {
				return fmt.Errorf("Upload returned a tensor")
			}
			return isSticky(err)
		}},
		{"UploadParam", func() error { _, err := b.UploadParam(make([]float32, 8), 2, 4); return isSticky(err) }},
		{"Download", func() error { return isSticky(b.Download(x, make([]float32, 8))) }},
		{"Sync", func() error { return isSticky(b.Sync()) }},
		{"Sample", func() error {
			ids, lps, err := b.Sample(x, make([]engine.SampleRow, 2))
			if ids != nil || lps != nil {
				return fmt.Errorf("Sample returned %v %v", ids, lps)
			}
			return isSticky(err)
		}},
		{"LogProbs", func() error {
			lp, ent, err := b.LogProbs(x, []int32{0, 3}, 1)
			if lp != nil || ent != nil {
				return fmt.Errorf("LogProbs returned %v %v", lp, ent)
			}
			return isSticky(err)
		}},
		{"SumSquares", func() error {
			s, err := b.SumSquares(x)
			if s != 0 {
				return fmt.Errorf("SumSquares = %g", s)
			}
			return isSticky(err)
		}},
		{"StartProfile", func() error { return isSticky(b.StartProfile(4)) }},
		{"StopProfile", func() error {
			p, err := b.StopProfile()
			if p != nil {
				return fmt.Errorf("StopProfile returned a profile")
			}
			return isSticky(err)
		}},
		{"CopyBandwidth", func() error {
			r, err := b.CopyBandwidth(1024, 1)
			if r != 0 {
				return fmt.Errorf("rate %g", r)
			}
			return isSticky(err)
		}},
		{"GemmPeak", func() error {
			r, err := b.GemmPeak(4, 1)
			if r != 0 {
				return fmt.Errorf("rate %g", r)
			}
			return isSticky(err)
		}},
		{"NewKVStore", func() error { _, err := b.NewKVStore(1, 1, 16, 4, 2, engine.F32); return isSticky(err) }},
		{"Grow", func() error { return isSticky(store.Grow(4)) }},
		{"CopyBlock", func() error { store.CopyBlock(1, 0); return nil }},
		{"GatherRows", func() error { b.GatherRows(x, w, []int32{0, 1}); return nil }},
		{"MatMul", func() error { b.MatMul(x, x, w); return nil }},
		{"MatMul (rows above the matrix-vector kernel's)", func() error { b.MatMul(ten(9, 4), ten(9, 4), w); return nil }},
		{"AddBias", func() error { b.AddBias(x, ten(4)); return nil }},
		{"RMSNorm", func() error { b.RMSNorm(x, x, ten(4), 1e-6); return nil }},
		{"RoPE", func() error { b.RoPE(x, 4, []int32{0, 1}, w, w); return nil }},
		{"SwiGLU", func() error { b.SwiGLU(x, x, x); return nil }},
		{"Add", func() error { b.Add(x, x, x); return nil }},
		{"Attention", func() error {
			b.Attention(x, x, x, x, store, 0, &engine.AttnBatch{SeqStart: seq, CtxLen: []int32{2}, Blocks: [][]int32{{0}}, Slots: []int32{0, 1}})
			return nil
		}},
		{"MatMulDX", func() error { b.MatMulDX(x, x, w); return nil }},
		{"MatMulDW", func() error { b.MatMulDW(w, x, x); return nil }},
		{"BiasDW", func() error { b.BiasDW(ten(4), x); return nil }},
		{"RMSNormBackward", func() error { b.RMSNormBackward(x, ten(4), x, x, ten(4), 1e-6); return nil }},
		{"SwiGLUBackward", func() error { b.SwiGLUBackward(x, x, x, x, x); return nil }},
		{"ScatterAddRows", func() error { b.ScatterAddRows(w, x, []int32{3, 1}); return nil }},
		{"LogProbsBackward", func() error { b.LogProbsBackward(x, x, []int32{0, 1}, []float32{1, 1}, nil, 1); return nil }},
		{"Scale", func() error { b.Scale(x, 2); return nil }},
		{"Copy", func() error { b.Copy(x, x); return nil }},
		{"AdamW", func() error { b.AdamW(x, x, x, x, engine.AdamWStep{}); return nil }},
		{"AdamWMany", func() error {
			b.AdamWMany([]*engine.Tensor{x}, []*engine.Tensor{x}, []*engine.Tensor{x}, []*engine.Tensor{x}, []engine.AdamWStep{{}})
			return nil
		}},
		{"AttentionTrain", func() error { b.AttentionTrain(x, lse, x, x, x, seq); return nil }},
		{"AttentionBackward", func() error { b.AttentionBackward(x, x, x, x, x, x, x, x, lse, seq); return nil }},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := c.op(); err != nil {
				t.Fatal(err)
			}
			if !b.mu.TryLock() {
				t.Fatal("the backend's lock is still held")
			}
			b.mu.Unlock()
		})
	}
}

// TestEnvOptions: PROLONG_CUDA_OPTIONS switches on the paths it names (all: every one but the
// debugging aid poison-uninit), keeps
// what the device name set, and names an unknown option with the known ones;
// PROLONG_CUDA_TILED_ATTENTION=1 still means tiled-attention.
func TestEnvOptions(t *testing.T) {
	all := Options{BF16Matmul: true, TiledAttention: true, BF16KV: true, SplitKVDecode: true, FusedAddRMSNorm: true,
		MatMuls: true, FusedMLP: true, FusedQKVRoPE: true, MultiTensorAdamW: true, DecodeGraphs: true, CublasLt: true, UninitAlloc: true, FoldBF16: true,
		DeviceTopLogProbs: true, SplitSample: true, LogitBudget: 1 << 30}
	for _, c := range []struct {
		env, tiled string
		want       Options
		err        string
	}{
		{"", "", Options{BF16Matmul: true}, ""},
		{"bf16-kv, split-kv", "", Options{BF16Matmul: true, BF16KV: true, SplitKVDecode: true}, ""},
		{"fused-mlp,fused-qkv-rope,matmuls", "", Options{BF16Matmul: true, FusedMLP: true, FusedQKVRoPE: true, MatMuls: true}, ""},
		{"multi-tensor-adamw,fused-add-rmsnorm", "1", Options{BF16Matmul: true, MultiTensorAdamW: true, FusedAddRMSNorm: true, TiledAttention: true}, ""},
		{"all", "", all, ""},
		{"decode-graphs", "", Options{BF16Matmul: true, DecodeGraphs: true}, ""},
		{"cublaslt", "", Options{BF16Matmul: true, CublasLt: true}, ""},
		{"uninit-alloc", "", Options{BF16Matmul: true, UninitAlloc: true}, ""},
		{"uninit-alloc,poison-uninit", "", Options{BF16Matmul: true, UninitAlloc: true, PoisonUninit: true}, ""},
		{"fold-bf16", "", Options{BF16Matmul: true, FoldBF16: true}, ""},
		{"device-top-logprobs", "", Options{BF16Matmul: true, DeviceTopLogProbs: true}, ""},
		{"split-sample", "", Options{BF16Matmul: true, SplitSample: true}, ""},
		{"large-logit-chunks", "", Options{BF16Matmul: true, LogitBudget: 1 << 30}, ""},
		{"poison", "", Options{}, `unknown option "poison" (known: tiled-attention, bf16-kv, split-kv, fused-add-rmsnorm, matmuls, fused-mlp, fused-qkv-rope, multi-tensor-adamw, decode-graphs, cublaslt, uninit-alloc, fold-bf16, device-top-logprobs, split-sample, large-logit-chunks, poison-uninit, all)`},
		{"bf16kv", "", Options{}, `PROLONG_CUDA_OPTIONS: unknown option "bf16kv" (known: tiled-attention, bf16-kv, split-kv,`},
	} {
		t.Setenv("PROLONG_CUDA_OPTIONS", c.env)
		t.Setenv("PROLONG_CUDA_TILED_ATTENTION", c.tiled)
		got, err := EnvOptions(Options{BF16Matmul: true})
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: %v, want an error saying %q", c.env, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q: %+v, %v; want %+v", c.env, got, err, c.want)
		}
	}
}
