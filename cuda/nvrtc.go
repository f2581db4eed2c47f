package cuda

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"unsafe"

	"github.com/ebitengine/purego"
)

// nvrtc holds the entry points of NVIDIA's run-time compiler.
type nvrtc struct {
	path                                  string
	version, create, compile, destroy     uintptr
	logSize, log, ptxSize, ptx, errString uintptr
	numArchs, archs, cubinSize, cubin     uintptr // 0 where this NVRTC lacks them (before 11.2)
}

// compiler is what the backend needs of NVRTC (tests put a fake in its place).
type compiler interface {
	// Version is NVRTC's "major.minor".
	Version() (string, error)
	// SupportedArchs lists the architectures it compiles for (80 for sm_80), ascending.
	SupportedArchs() ([]int, error)
	// Compile compiles source for arch: "compute_XY" gives PTX, "sm_XY" a cubin.
	Compile(src, name, arch string) (code []byte, log string, err error)
}

func loadNVRTC() (*nvrtc, error) {
	h, path, err := specNVRTC.open()
	if err != nil {
		return nil, err
	}
	n := &nvrtc{path: path}
	// NVRTC dlopens its builtins library by soname at compile time; when NVRTC came from a
	// folder the loader does not search (a path in PROLONG_NVRTC), load the builtins beside it
	// first so that the loader finds them already there.
	if dir := filepath.Dir(path); dir != "." {
		builtins, _ := filepath.Glob(filepath.Join(dir, "libnvrtc-builtins.so.*"))
		for _, b := range builtins {
			_, _ = purego.Dlopen(b, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		}
	}
	err = symbols(h, path, map[string]*uintptr{
		"nvrtcVersion": &n.version, "nvrtcCreateProgram": &n.create, "nvrtcCompileProgram": &n.compile,
		"nvrtcDestroyProgram": &n.destroy, "nvrtcGetProgramLogSize": &n.logSize, "nvrtcGetProgramLog": &n.log,
		"nvrtcGetPTXSize": &n.ptxSize, "nvrtcGetPTX": &n.ptx, "nvrtcGetErrorString": &n.errString,
	})
	if err != nil {
		return nil, err
	}
	// Optional: the architecture list (NVRTC 11.2) and cubins (11.1).
	n.numArchs, _ = purego.Dlsym(h, "nvrtcGetNumSupportedArchs")
	n.archs, _ = purego.Dlsym(h, "nvrtcGetSupportedArchs")
	n.cubinSize, _ = purego.Dlsym(h, "nvrtcGetCUBINSize")
	n.cubin, _ = purego.Dlsym(h, "nvrtcGetCUBIN")
	return n, nil
}

// check turns an nvrtcResult into an *Error naming the call and the result (NVRTC's own
// nvrtcGetErrorString, which gives the header's name, else the table's).
func (n *nvrtc) check(what string, r int) error {
	if r == 0 {
		return nil
	}
	e := &Error{Call: what, Lib: libNVRTC, Code: r, Name: statusName(nvrtcResultNames, libNVRTC, r)}
	if n.errString != 0 {
		if s := gostr(callPtr(n.errString, uintptr(r))); s != "" {
			e.Name = s
		}
	}
	return e
}

// SupportedArchs implements compiler.
func (n *nvrtc) SupportedArchs() ([]int, error) {
	if n.numArchs == 0 || n.archs == 0 {
		return nil, fmt.Errorf("cuda: %s has no nvrtcGetSupportedArchs (NVRTC before 11.2)", n.path)
	}
	var count int32
	if err := n.check("nvrtcGetNumSupportedArchs", call(n.numArchs, uintptr(unsafe.Pointer(&count)))); err != nil {
		return nil, err
	}
	if count <= 0 {
		return nil, nil
	}
	archs := make([]int32, count)
	if err := n.check("nvrtcGetSupportedArchs", call(n.archs, uintptr(unsafe.Pointer(&archs[0])))); err != nil {
		return nil, err
	}
	out := make([]int, count)
	for i, a := range archs {
		out[i] = int(a)
	}
	sort.Ints(out)
	return out, nil
}

// Version is NVRTC's "major.minor".
func (n *nvrtc) Version() (string, error) {
	var maj, min int32
	if err := n.check("nvrtcVersion", call(n.version, uintptr(unsafe.Pointer(&maj)), uintptr(unsafe.Pointer(&min)))); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d.%d", maj, min), nil
}

// compileOptions are the NVRTC flags for a virtual architecture such as "compute_90". No fast
// math: the kernels keep the CPU reference's IEEE exp, division and square root.
func compileOptions(arch string) []string {
	return []string{"--gpu-architecture=" + arch, "--std=c++17", "-lineinfo"}
}

// Compile compiles CUDA C source to PTX for a virtual architecture ("compute_90") or to a cubin
// for a real one ("sm_90"). The compiler's log comes back too: a warning leaves it non-empty,
// and the tests treat that as a failure.
func (n *nvrtc) Compile(src, name, arch string) (code []byte, log string, err error) {
	return n.CompileWith(src, name, arch)
}

// CompileWith is Compile with NVRTC options after compileOptions: "--ptxas-options=-v" puts
// ptxas's resource report (registers, spills, shared memory per kernel) in the log of a cubin.
func (n *nvrtc) CompileWith(src, name, arch string, extra ...string) (code []byte, log string, err error) {
	sizeFn, getFn, what := n.ptxSize, n.ptx, "nvrtcGetPTX"
	if strings.HasPrefix(arch, "sm_") {
		if n.cubinSize == 0 || n.cubin == 0 {
			return nil, "", fmt.Errorf("cuda: %s cannot make cubins (no nvrtcGetCUBIN: NVRTC before 11.1)", n.path)
		}
		sizeFn, getFn, what = n.cubinSize, n.cubin, "nvrtcGetCUBIN"
	}
	var prog uintptr
	if err := n.check("nvrtcCreateProgram", call(n.create, uintptr(unsafe.Pointer(&prog)),
		uintptr(unsafe.Pointer(cstr(src))), uintptr(unsafe.Pointer(cstr(name))), 0, 0, 0)); err != nil {
		return nil, "", err
	}
	defer call(n.destroy, uintptr(unsafe.Pointer(&prog)))
	opts := append(compileOptions(arch), extra...)
	cs := make([]*byte, len(opts))
	for i, o := range opts {
		cs[i] = cstr(o)
	}
	r := call(n.compile, prog, uintptr(len(cs)), uintptr(unsafe.Pointer(&cs[0])))
	var size uintptr
	if call(n.logSize, prog, uintptr(unsafe.Pointer(&size))) == 0 && size > 1 {
		buf := make([]byte, size)
		call(n.log, prog, uintptr(unsafe.Pointer(&buf[0])))
		log = strings.TrimRight(string(buf), "\x00\n ")
	}
	if r != 0 {
		return nil, log, fmt.Errorf("cuda: compiling %s for %s failed: %w:\n%s", name, arch, n.check("nvrtcCompileProgram", r), log)
	}
	if err := n.check(what+"Size", call(sizeFn, prog, uintptr(unsafe.Pointer(&size)))); err != nil {
		return nil, log, err
	}
	code = make([]byte, size)
	if err := n.check(what, call(getFn, prog, uintptr(unsafe.Pointer(&code[0])))); err != nil {
		return nil, log, err
	}
	return code, log, nil
}
