package cuda

import (
	"os"
	"strings"
	"testing"
)

// openNVRTC loads NVRTC for the compile checks. Without it the test skips, unless
// PROLONG_REQUIRE_NVRTC=1 (CI, which fetches Debian's NVRTC with scripts/setup-nvrtc.sh).
func openNVRTC(t *testing.T) *nvrtc {
	t.Helper()
	n, err := loadNVRTC()
	if err != nil {
		if os.Getenv("PROLONG_REQUIRE_NVRTC") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return n
}

// TestKernelsCompile compiles every kernel for Ampere (sm_80) and Hopper (sm_90) with the NVRTC
// found; an error or any warning in the compiler's log fails.
func TestKernelsCompile(t *testing.T) {
	n := openNVRTC(t)
	ver, err := n.Version()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("NVRTC %s from %s", ver, n.path)
	for _, arch := range []string{"compute_80", "compute_90"} {
		t.Run(arch, func(t *testing.T) {
			ptx, log, err := n.Compile(KernelSource(), "prolong_kernels.cu", arch)
			if err != nil {
				t.Fatal(err)
			}
			if log != "" {
				t.Fatalf("compiler log not empty (warnings fail):\n%s", log)
			}
			for _, k := range KernelNames() {
				if !strings.Contains(string(ptx), ".entry "+k+"(") {
					t.Errorf("PTX has no entry %s", k)
				}
			}
			t.Logf("%d kernels, %d bytes of PTX", len(KernelNames()), len(ptx))
		})
	}
}

// TestCompileErrorReported shows a broken kernel fails with the compiler's message.
func TestCompileErrorReported(t *testing.T) {
	n := openNVRTC(t)
	_, log, err := n.Compile(`extern "C" __global__ void k(float* x) { x[0] = undefined_name; }`, "broken.cu", "compute_90")
	if err == nil {
		t.Fatal("a kernel with an undefined name compiled")
	}
	if !strings.Contains(log, "undefined_name") || !strings.Contains(err.Error(), "broken.cu") {
		t.Fatalf("error does not name the problem: %v", err)
	}
}
