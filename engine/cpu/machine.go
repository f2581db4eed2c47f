package cpu

import (
	"fmt"
	"slices"
	"time"

	"github.com/prolong-rl/prolong/engine/internal/kern"
)

// PeakFMA measures this machine's fp32 fused multiply-add peak in GFLOP/s on all cores with the
// widest SIMD the CPU has, running for about d. Benchmarks print their speed as a ratio of it.
func PeakFMA(d time.Duration) float64 { return kern.PeakFMA(d) }

// TriadBandwidth measures DRAM bandwidth in GB/s with the STREAM triad on all cores (12 bytes
// counted per fp32 element), running for about d.
func TriadBandwidth(d time.Duration) float64 { return kern.TriadBandwidth(d) }

// KernelISA names the matmul kernels in use: "amx" (avx512 with AMX tiles for bf16 dot
// products), "avx512", "avx2" or "generic".
func KernelISA() string { return kern.ISA() }

// KernelISAs lists the matmul kernel paths this CPU supports, best first.
func KernelISAs() []string { return kern.ISAs() }

// SetKernelISA makes the named path (one of KernelISAs) the one every backend of the process
// uses and returns a function restoring the previous one; benchmarks use it to time the paths
// side by side. It must not run while matmuls do.
func SetKernelISA(name string) (restore func(), err error) {
	if !slices.Contains(kern.ISAs(), name) {
		return nil, fmt.Errorf("kernel path %q: this CPU has %v", name, kern.ISAs())
	}
	return kern.SetISA(name), nil
}
