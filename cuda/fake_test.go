package cuda

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/prolong-rl/prolong/cuda/internal/kernelgen"
)

// fakeGPU stands in for libcuda and cuBLAS through callHook, and for NVRTC as a compiler, so
// that Open and the ops run on a machine without a GPU. Every function address of the fake
// libraries is a small number that names the struct field it was put in ("memAlloc",
// "blas.gemmEx"); results holds the status codes that calls of a function return next, in order
// (then 0).
type fakeGPU struct {
	t        testing.TB
	cc       int    // compute capability, 90 for sm_90
	memLimit uint64 // bytes cuMemAlloc grants in all
	used     uint64
	next     uint64
	blocks   map[uint64]uint64
	results  map[string][]int
	calls    []string // the names of the calls made, in order
	strs     [][]byte // C strings handed out (kept alive)

	// compiler
	archs       []int // nvrtcGetSupportedArchs (nil: an error, as NVRTC before 11.2)
	rejectPTX   bool  // cuModuleLoadData refuses PTX with CUDA_ERROR_UNSUPPORTED_PTX_VERSION
	rejectCubin bool  // ... and cubins with CUDA_ERROR_NO_BINARY_FOR_GPU
	compiled    []string
	loaded      string // the image cuModuleLoadData took
	names       map[uintptr]string

	tl *fakeTimeline // when set, events and launches run on its simulated clocks (profile_test.go)

	kernels  map[uintptr]string // function handles of cuModuleGetFunction, by kernel name
	launches []fakeLaunch       // every cuLaunchKernel, in order

	// graphs and pinned memory
	pinned    map[uintptr][]byte // cuMemHostAlloc's buffers, by address
	capturing bool               // between cuStreamBeginCapture and cuStreamEndCapture
	nGraphs   int
	copies    []fakeCopy // every cuMemcpyHtoDAsync from pinned memory, in order

	gemms   []gemm       // every cublasGemmEx, as its arguments describe it (no batch)
	lt      fakeLt       // the fake cuBLASLt (ltgemm_test.go)
	memsets []fakeMemset // every cuMemsetD32Async, in order
	dtoh    uint64       // bytes of every cuMemcpyDtoHAsync
	uploads []fakeCopy   // every cuMemcpyHtoDAsync of at most 64 KiB from Go memory (not pinned), in order
}

// fakeMemset is a cuMemsetD32Async: where, the 32-bit value, and how many elements.
type fakeMemset struct {
	dst   uint64
	value uint32
	n     uint64
}

// fakeCopy is a cuMemcpyHtoDAsync from pinned memory: where to, and the bytes at the call.
type fakeCopy struct {
	dst  uint64
	data []byte
}

// fakeLaunch is one kernel launch: the kernel, its grid and block, and its arguments' 8-byte
// slots (see kernelArgs).
type fakeLaunch struct {
	name  string
	grid  [3]int
	block int
	args  []uint64
}

// kernelParams counts the parameters of every kernel (from the sources), so that the fake can
// read a launch's arguments.
var kernelParams = sync.OnceValue(func() map[string]int {
	ks, err := kernelgen.Parse("kernels", []byte(KernelSource()))
	if err != nil {
		panic(err)
	}
	n := map[string]int{}
	for _, k := range ks {
		n[k.Name] = len(k.Params)
	}
	return n
})

// goString reads a NUL-terminated C string.
func goString(p uintptr) string {
	var b []byte
	for i := uintptr(0); ; i++ {
		c := *at[byte](p + i)
		if c == 0 {
			return string(b)
		}
		b = append(b, c)
	}
}

// launched returns the launches since index from (of g.launches) by kernel name.
func (g *fakeGPU) launched(from int) []string {
	var s []string
	for _, l := range g.launches[from:] {
		s = append(s, l.name)
	}
	return s
}

// newFakeGPU installs a fake GPU of compute capability cc with memLimit bytes of memory for
// the test's duration: Open then opens it.
func newFakeGPU(t testing.TB, cc int, memLimit uint64) *fakeGPU {
	g := &fakeGPU{t: t, cc: cc, memLimit: memLimit, next: 0x10000, blocks: map[uint64]uint64{},
		results: map[string][]int{}, names: map[uintptr]string{}, archs: []int{75, 80, 86, 87, 89, 90}}
	savedDrv, savedComp, savedBlas, savedLt := loadDriverFn, loadCompilerFn, loadCublasFn, loadCublasLtFn
	openMu.Lock()
	savedOpened, savedLost := opened, lost
	opened, lost = map[Options]*Backend{}, map[int]error{}
	openMu.Unlock()
	t.Setenv("PROLONG_CUDA_CACHE", t.TempDir())
	t.Setenv("PROLONG_CUDA_SYNC", "")
	loadDriverFn = func() (*driver, error) {
		d := &driver{path: "fake libcuda"}
		g.address(d, "")
		return d, nil
	}
	loadCompilerFn = func() (compiler, error) { return g, nil }
	loadCublasFn = func() (*cublas, error) {
		c := &cublas{path: "fake cuBLAS"}
		g.address(c, "blas.")
		c.statusName, c.statusString = 0, 0 // as cuBLAS before 11.4: the header's names
		return c, nil
	}
	loadCublasLtFn = func() (*cublasLt, error) {
		if g.lt.loadErr != nil {
			return nil, g.lt.loadErr
		}
		c := &cublasLt{path: "fake cuBLASLt"}
		g.address(c, "lt.")
		return c, nil
	}
	callHook = g.call
	t.Cleanup(func() {
		callHook = nil
		loadDriverFn, loadCompilerFn, loadCublasFn, loadCublasLtFn = savedDrv, savedComp, savedBlas, savedLt
		openMu.Lock()
		opened, lost = savedOpened, savedLost
		openMu.Unlock()
	})
	return g
}

// address gives every uintptr field of the struct at p an address naming it.
func (g *fakeGPU) address(p any, prefix string) {
	v := reflect.ValueOf(p).Elem()
	for i := 0; i < v.NumField(); i++ {
		if f := v.Field(i); f.Kind() == reflect.Struct && v.Type().Field(i).Anonymous {
			g.address(reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Interface(), prefix) // embedded: graphAPI
			continue
		}
		if v.Field(i).Kind() != reflect.Uintptr {
			continue
		}
		a := uintptr(len(g.names) + 1)
		g.names[a] = prefix + v.Type().Field(i).Name
		f := v.Field(i)
		reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().SetUint(uint64(a)) // unexported
	}
}

// fail makes the next calls of fn return codes.
func (g *fakeGPU) fail(fn string, codes ...int) { g.results[fn] = append(g.results[fn], codes...) }

// at is the Go view of a C pointer argument.
func at[T any](p uintptr) *T { return (*T)(*(*unsafe.Pointer)(unsafe.Pointer(&p))) }

// cString hands out a NUL-terminated string that stays alive with the fake.
func (g *fakeGPU) cString(s string) uintptr {
	b := append([]byte(s), 0)
	g.strs = append(g.strs, b)
	return uintptr(unsafe.Pointer(&b[0]))
}

var fakeErrorNames = map[int]string{1: "CUDA_ERROR_INVALID_VALUE", 2: "CUDA_ERROR_OUT_OF_MEMORY",
	209: "CUDA_ERROR_NO_BINARY_FOR_GPU", 222: "CUDA_ERROR_UNSUPPORTED_PTX_VERSION", 700: "CUDA_ERROR_ILLEGAL_ADDRESS"}

func (g *fakeGPU) call(fn uintptr, a []uintptr) uintptr {
	name, ok := g.names[fn]
	if !ok {
		g.t.Fatalf("call of unknown function address %#x", fn)
	}
	g.calls = append(g.calls, name)
	if g.tl != nil {
		if r, ok := g.tl.call(name, a); ok {
			return r
		}
	}
	if q := g.results[name]; len(q) > 0 {
		g.results[name] = q[1:]
		if q[0] != 0 {
			return uintptr(q[0])
		}
	}
	if strings.HasPrefix(name, "lt.") {
		return g.ltCall(name, a)
	}
	switch name {
	case "blas.gemmEx":
		g.gemms = append(g.gemms, gemm{transA: int(a[1]), transB: int(a[2]), m: int(a[3]), n: int(a[4]), k: int(a[5]),
			alpha: *at[float32](a[6]), a: uint64(a[7]), aType: int(a[8]), lda: int(a[9]),
			b: uint64(a[10]), bType: int(a[11]), ldb: int(a[12]), beta: *at[float32](a[13]),
			c: uint64(a[14]), cType: int(a[15]), ldc: int(a[16]), compute: int(a[17])})
	case "deviceGetCount":
		*at[int32](a[0]) = 1
	case "deviceGet":
		*at[int32](a[0]) = 0
	case "deviceGetName":
		copy(unsafe.Slice(at[byte](a[0]), a[1]), "Fake GPU\x00")
	case "deviceGetAttribute":
		v := map[uintptr]int32{attrComputeCapabilityMajor: int32(g.cc / 10), attrComputeCapabilityMinor: int32(g.cc % 10), attrMultiprocessorCount: 4}[a[1]]
		*at[int32](a[0]) = v
	case "driverGetVersion":
		*at[int32](a[0]) = 12040
	case "primaryCtxRetain", "streamCreate", "blas.create":
		*at[uintptr](a[0]) = 0xc0
	case "memAlloc":
		if g.used+uint64(a[1]) > g.memLimit {
			return cudaErrorOutOfMemory
		}
		g.used += uint64(a[1])
		g.blocks[g.next] = uint64(a[1])
		*at[uint64](a[0]) = g.next
		g.next += uint64(a[1])
	case "memFree":
		g.used -= g.blocks[uint64(a[0])]
		delete(g.blocks, uint64(a[0]))
	case "moduleLoadData":
		img := unsafe.String(at[byte](a[1]), 32)
		g.loaded = strings.TrimRight(img, "\x00 ")
		switch {
		case strings.HasPrefix(img, "PTX") && g.rejectPTX:
			return cudaErrorUnsupportedPTXVersion
		case strings.HasPrefix(img, "CUBIN") && g.rejectCubin:
			return 209
		}
		*at[uintptr](a[0]) = 0xd0
	case "moduleGetFunction":
		if g.kernels == nil {
			g.kernels = map[uintptr]string{}
		}
		h := uintptr(0x100000 + len(g.kernels))
		g.kernels[h] = goString(a[2])
		*at[uintptr](a[0]) = h
	case "launchKernel":
		l := fakeLaunch{name: g.kernels[a[0]], grid: [3]int{int(a[1]), int(a[2]), int(a[3])}, block: int(a[4])}
		if a[9] != 0 {
			ptrs := unsafe.Slice(at[unsafe.Pointer](a[9]), kernelParams()[l.name])
			for _, p := range ptrs {
				l.args = append(l.args, *(*uint64)(p))
			}
		}
		g.launches = append(g.launches, l)
	case "memcpyDtoHAsync":
		g.dtoh += uint64(a[2])
	case "memsetD32Async":
		g.memsets = append(g.memsets, fakeMemset{dst: uint64(a[0]), value: uint32(a[1]), n: uint64(a[2])})
	case "memHostAlloc":
		if g.pinned == nil {
			g.pinned = map[uintptr][]byte{}
		}
		buf := make([]byte, a[1])
		p := uintptr(unsafe.Pointer(&buf[0]))
		g.pinned[p] = buf
		*at[uintptr](a[0]) = p
	case "memHostGetDevicePtr":
		*at[uint64](a[0]) = 0xfeed0000
	case "memFreeHost":
		if _, ok := g.pinned[a[0]]; !ok {
			g.t.Errorf("cuMemFreeHost of %#x, not a pinned buffer", a[0])
		}
		delete(g.pinned, a[0])
	case "memcpyHtoDAsync":
		pinned := false
		for p, buf := range g.pinned {
			if a[1] >= p && a[1] < p+uintptr(len(buf)) {
				off := a[1] - p
				g.copies = append(g.copies, fakeCopy{dst: uint64(a[0]), data: append([]byte(nil), buf[off:off+a[2]]...)})
				pinned = true
			}
		}
		if !pinned && a[2] > 0 && a[2] <= 1<<16 { // parameters and descriptors, not weights
			g.uploads = append(g.uploads, fakeCopy{dst: uint64(a[0]), data: append([]byte(nil), unsafe.Slice(at[byte](a[1]), a[2])...)})
		}
	case "streamBeginCapture":
		if g.capturing {
			return 900 // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
		}
		g.capturing = true
	case "streamEndCapture":
		if !g.capturing {
			return 901 // CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
		}
		g.capturing = false
		g.nGraphs++
		*at[uintptr](a[1]) = uintptr(0xe000 + g.nGraphs)
	case "graphInstantiateWithFlags":
		*at[uintptr](a[0]) = a[1] + 0x1000
	case "getErrorName":
		n, ok := fakeErrorNames[int(a[0])]
		if !ok {
			return 1 // CUDA_ERROR_INVALID_VALUE: a code the driver does not know
		}
		*at[uintptr](a[1]) = g.cString(n)
	case "getErrorString":
		if _, ok := fakeErrorNames[int(a[0])]; !ok {
			return 1
		}
		*at[uintptr](a[1]) = g.cString("the fake driver's description")
	}
	return 0
}

// Version, SupportedArchs and Compile implement compiler.
func (g *fakeGPU) Version() (string, error) { return "12.4", nil }

func (g *fakeGPU) SupportedArchs() ([]int, error) {
	if g.archs == nil {
		return nil, fmt.Errorf("fake NVRTC has no nvrtcGetSupportedArchs")
	}
	return g.archs, nil
}

func (g *fakeGPU) Compile(src, name, arch string) ([]byte, string, error) {
	g.compiled = append(g.compiled, arch)
	var v int
	kind := "PTX"
	if _, err := fmt.Sscanf(arch, "compute_%d", &v); err != nil {
		kind = "CUBIN"
		fmt.Sscanf(arch, "sm_%d", &v)
	}
	if g.archs != nil && !contains(strings.Fields(strings.Trim(fmt.Sprint(g.archs), "[]")), fmt.Sprint(v)) {
		return nil, "", fmt.Errorf("compiling %s for %s failed: %w", name, arch, &Error{Call: "nvrtcCompileProgram", Lib: libNVRTC, Code: nvrtcErrorInvalidOption, Name: "NVRTC_ERROR_INVALID_OPTION"})
	}
	return []byte(fmt.Sprintf("%-31s\x00", kind+" "+arch)), "", nil
}

// count is how many calls of fn were made.
func (g *fakeGPU) count(fn string) int {
	n := 0
	for _, c := range g.calls {
		if c == fn {
			n++
		}
	}
	return n
}
