package cuda

import (
	"fmt"
	"path/filepath"
	"strings"
	"unsafe"

	"github.com/ebitengine/purego"
)

// nvrtc holds the entry points of NVIDIA's run-time compiler.
type nvrtc struct {
	path                                  string
	version, create, compile, destroy     uintptr
	logSize, log, ptxSize, ptx, errString uintptr
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
	return n, nil
}

func (n *nvrtc) check(what string, r int) error {
	if r == 0 {
		return nil
	}
	return fmt.Errorf("cuda: %s: nvrtc error %d", what, r)
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

// Compile compiles CUDA C source to PTX for arch. The compiler's log comes back too: a warning
// leaves it non-empty, and the tests treat that as a failure.
func (n *nvrtc) Compile(src, name, arch string) (ptx []byte, log string, err error) {
	var prog uintptr
	if err := n.check("nvrtcCreateProgram", call(n.create, uintptr(unsafe.Pointer(&prog)),
		uintptr(unsafe.Pointer(cstr(src))), uintptr(unsafe.Pointer(cstr(name))), 0, 0, 0)); err != nil {
		return nil, "", err
	}
	defer call(n.destroy, uintptr(unsafe.Pointer(&prog)))
	opts := compileOptions(arch)
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
		return nil, log, fmt.Errorf("cuda: compiling %s for %s failed (nvrtc error %d):\n%s", name, arch, r, log)
	}
	if err := n.check("nvrtcGetPTXSize", call(n.ptxSize, prog, uintptr(unsafe.Pointer(&size)))); err != nil {
		return nil, log, err
	}
	ptx = make([]byte, size)
	if err := n.check("nvrtcGetPTX", call(n.ptx, prog, uintptr(unsafe.Pointer(&ptx[0])))); err != nil {
		return nil, log, err
	}
	return ptx, log, nil
}
