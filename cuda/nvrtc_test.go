package cuda

import (
	"os"
	"slices"
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
	if !strings.Contains(log, "undefined_name") || !strings.Contains(err.Error(), "broken.cu") ||
		!strings.Contains(err.Error(), "nvrtcCompileProgram: NVRTC_ERROR_COMPILATION (6)") {
		t.Fatalf("error does not name the problem: %v", err)
	}
}

// TestSupportedArchsAndCubin: the NVRTC found lists its targets (NVRTC 11.8: compute_35 to
// compute_90, nvrtc.h's list for 11.8), and compiles the kernels to a cubin for a real
// architecture (the fallback for a driver that refuses NVRTC's PTX): an ELF image.
func TestSupportedArchsAndCubin(t *testing.T) {
	n := openNVRTC(t)
	archs, err := n.SupportedArchs()
	if err != nil {
		t.Fatal(err)
	}
	ver, _ := n.Version()
	t.Logf("NVRTC %s targets %v", ver, archs)
	if !slices.Contains(archs, 80) || !slices.Contains(archs, 90) || !slices.IsSorted(archs) {
		t.Fatalf("NVRTC %s targets %v: want sm_80 and sm_90 among them, ascending", ver, archs)
	}
	if ver == "11.8" && (archs[0] != 35 || archs[len(archs)-1] != 90) {
		t.Fatalf("NVRTC 11.8 targets %v, want 35 to 90", archs)
	}
	cubin, log, err := n.Compile(KernelSource(), "prolong_kernels.cu", "sm_80")
	if err != nil || log != "" {
		t.Fatalf("cubin: %v\n%s", err, log)
	}
	if string(cubin[:4]) != "\x7fELF" {
		t.Fatalf("cubin starts with %q, not an ELF header", cubin[:4])
	}
	if _, _, err := n.Compile(KernelSource(), "prolong_kernels.cu", "compute_999"); err == nil ||
		!strings.Contains(err.Error(), "NVRTC_ERROR_INVALID_OPTION") {
		t.Fatalf("an unknown target: %v", err)
	}
}

// TestTemperedNotFused: NVRTC leaves x·inv - m as a multiply and a subtract without rounding
// modifiers, which the PTX ISA lets the code generator (ptxas, or the driver's JIT) fuse into
// one multiply-add (the default --fmad=true), whose single rounding is not the CPU's.
// tempered (common.cuh), which the sampler and the log-prob kernels use for every tempered
// logit, compiles to mul.rn and sub.rn, which it may not fuse.
func TestTemperedNotFused(t *testing.T) {
	n := openNVRTC(t)
	common, err := kernelFS.ReadFile("kernels/common.cuh")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		expr         string
		contractible bool
	}{
		{"(double)x[0] * inv - m - l", true}, // the plain expression
		{"__dsub_rn(tempered(x[0], inv, m), l)", false},
	} {
		src := string(common) + "\nextern \"C\" __global__ void probe(double* out, const float* x, double inv, double m, double l) { out[0] = " + tc.expr + "; }\n"
		ptx, log, err := n.Compile(src, "probe.cu", "compute_80")
		if err != nil || log != "" {
			t.Fatalf("%s: %v\n%s", tc.expr, err, log)
		}
		body := string(ptx[strings.Index(string(ptx), ".entry probe("):])
		contractible := strings.Contains(body, "fma.rn.f64") || strings.Contains(body, "mul.f64")
		separate := strings.Contains(body, "mul.rn.f64") && strings.Contains(body, "sub.rn.f64")
		if contractible != tc.contractible || separate == tc.contractible {
			t.Errorf("%s: contractible %v, mul.rn and sub.rn %v, want contractible %v:\n%s", tc.expr, contractible, separate, tc.contractible, body)
		}
	}
}
