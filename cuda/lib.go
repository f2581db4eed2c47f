package cuda

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"github.com/ebitengine/purego"
)

// A library the backend loads at run time, how it is found, and the variable that overrides the
// search with a path.
type libSpec struct {
	what  string   // "the CUDA driver"
	env   string   // PROLONG_LIBCUDA
	names []string // sonames tried in order, each by the dynamic loader's search and then in dirs
}

var (
	specDriver = libSpec{"the CUDA driver", "PROLONG_LIBCUDA", []string{"libcuda.so.1", "libcuda.so"}}
	specNVRTC  = libSpec{"NVRTC (the CUDA run-time compiler)", "PROLONG_NVRTC",
		[]string{"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so", "libnvrtc.so.11.2"}}
	specCublas = libSpec{"cuBLAS", "PROLONG_CUBLAS", []string{"libcublas.so.13", "libcublas.so.12", "libcublas.so"}}
)

// searchDirs are tried after the loader's own search (LD_LIBRARY_PATH, ldconfig's cache):
// the CUDA toolkit's usual homes.
func searchDirs() []string {
	var dirs []string
	for _, v := range []string{"CUDA_HOME", "CUDA_PATH"} {
		if d := os.Getenv(v); d != "" {
			dirs = append(dirs, filepath.Join(d, "lib64"), filepath.Join(d, "lib"))
		}
	}
	return append(dirs, "/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64")
}

// candidates lists what open tries, in order.
func (s libSpec) candidates() []string {
	if p := os.Getenv(s.env); p != "" {
		return []string{p}
	}
	c := append([]string(nil), s.names...)
	for _, d := range searchDirs() {
		for _, n := range s.names {
			c = append(c, filepath.Join(d, n))
		}
	}
	return c
}

// open dlopens the first candidate that loads. The error names what was searched and the
// environment variable that overrides the search.
func (s libSpec) open() (uintptr, string, error) {
	var last error
	for _, c := range s.candidates() {
		h, err := purego.Dlopen(c, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err == nil {
			return h, c, nil
		}
		last = err
	}
	if p := os.Getenv(s.env); p != "" {
		return 0, "", fmt.Errorf("cuda: %s not loaded from %s=%s: %v", s.what, s.env, p, last)
	}
	return 0, "", fmt.Errorf("cuda: %s not found (tried %s, also under %s; set %s to its path): %v",
		s.what, strings.Join(s.names, ", "), strings.Join(searchDirs(), ", "), s.env, last)
}

// symbols resolves each name into the uintptr it points at.
func symbols(lib uintptr, libName string, syms map[string]*uintptr) error {
	for name, dst := range syms {
		p, err := purego.Dlsym(lib, name)
		if err != nil {
			return fmt.Errorf("cuda: %s has no symbol %s (too old?): %w", libName, name, err)
		}
		*dst = p
	}
	return nil
}

// call runs a C function that returns a status code (CUresult, nvrtcResult, cublasStatus_t).
//
//go:uintptrescapes
func call(fn uintptr, args ...uintptr) int {
	if callHook != nil {
		return int(int32(callHook(fn, args)))
	}
	r, _, _ := purego.SyscallN(fn, args...)
	return int(int32(r))
}

// callPtr runs a C function that returns a pointer (a const char* status name).
func callPtr(fn uintptr, args ...uintptr) uintptr {
	if callHook != nil {
		return callHook(fn, args)
	}
	r, _, _ := purego.SyscallN(fn, args...)
	return r
}

// callHook, when set (by tests), runs every C call of the package in place of the library: a
// fake driver, cuBLAS and NVRTC whose function addresses are the hook's own small numbers.
var callHook func(fn uintptr, args []uintptr) uintptr

// cstr returns a NUL-terminated copy of s.
func cstr(s string) *byte {
	b := append([]byte(s), 0)
	return &b[0]
}

// gostr reads a NUL-terminated C string at address p (C memory, which Go's collector ignores).
func gostr(p uintptr) string {
	if p == 0 {
		return ""
	}
	bp := *(*unsafe.Pointer)(unsafe.Pointer(&p))
	n := 0
	for *(*byte)(unsafe.Add(bp, n)) != 0 {
		n++
	}
	return string(unsafe.Slice((*byte)(bp), n))
}
