package cuda

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// The kernels are CUDA C in kernels/: common.cuh (helpers) is put before every .cu file and the
// whole is one NVRTC program, compiled at first use for the GPU present.
//
//go:embed kernels/common.cuh kernels/*.cu
var kernelFS embed.FS

// KernelSource returns the CUDA C source of all kernels as one compilation unit.
func KernelSource() string {
	common, err := kernelFS.ReadFile("kernels/common.cuh")
	if err != nil {
		panic(err) // embedded: cannot happen
	}
	files, _ := fs.Glob(kernelFS, "kernels/*.cu")
	sort.Strings(files)
	var b strings.Builder
	b.Write(common)
	for _, f := range files {
		src, _ := kernelFS.ReadFile(f)
		fmt.Fprintf(&b, "\n// ---- %s\n", f)
		b.Write(src)
	}
	return b.String()
}

var kernelDecl = regexp.MustCompile(`extern "C" __global__ void (\w+)\(`)

// KernelNames lists the entry points of KernelSource.
func KernelNames() []string {
	var names []string
	for _, m := range kernelDecl.FindAllStringSubmatch(KernelSource(), -1) {
		names = append(names, m[1])
	}
	return names
}

// cacheKey identifies a compiled module: the source, the target architecture, the compiler's
// version and its options. Any change to one of them is a different file.
func cacheKey(src, arch, nvrtcVersion string) string {
	h := sha256.New()
	for _, s := range []string{src, arch, nvrtcVersion, strings.Join(compileOptions(arch), " ")} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// cacheDir is where compiled PTX is kept: $PROLONG_CUDA_CACHE, else the user cache dir.
func cacheDir() (string, error) {
	if d := os.Getenv("PROLONG_CUDA_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "prolong", "cuda"), nil
}

// cachedPTX returns the compiled PTX for key, or nil when absent.
func cachedPTX(dir, key string) []byte {
	b, err := os.ReadFile(filepath.Join(dir, key+".ptx"))
	if err != nil || len(b) == 0 {
		return nil
	}
	return b
}

// storePTX writes the PTX under key (temporary name, then rename: a reader never sees half a file).
func storePTX(dir, key string, ptx []byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, key+".*.tmp")
	if err != nil {
		return err
	}
	_, werr := f.Write(ptx)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return err
	}
	return os.Rename(f.Name(), filepath.Join(dir, key+".ptx"))
}

// compileKernels returns the PTX (for compute_XY) or cubin (sm_XY) of all kernels for arch, from
// the disk cache when there (the key holds the arch, so both kinds share the .ptx files),
// else compiled by NVRTC and stored. fromCache says which.
func compileKernels(n compiler, arch string) (ptx []byte, fromCache bool, err error) {
	src := KernelSource()
	ver, err := n.Version()
	if err != nil {
		return nil, false, err
	}
	key := cacheKey(src, arch, ver)
	dir, derr := cacheDir()
	if derr == nil {
		if p := cachedPTX(dir, key); p != nil {
			return p, true, nil
		}
	}
	ptx, _, err = n.Compile(src, "prolong_kernels.cu", arch)
	if err != nil {
		return nil, false, err
	}
	if derr == nil {
		_ = storePTX(dir, key, ptx) // a read-only cache only costs a recompile next time
	}
	return ptx, false, nil
}
