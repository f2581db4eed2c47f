package cuda

import (
	"errors"
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
	if b, line, err := engine.OpenDevice("auto"); err != nil || line != b.Name()+", no GPU found" || !strings.HasPrefix(line, "cpu (") {
		t.Errorf("auto: %q %v", line, err)
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
