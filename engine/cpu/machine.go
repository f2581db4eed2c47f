package cpu

import (
	"time"

	"github.com/prolong-rl/prolong/engine/internal/kern"
)

// PeakFMA measures this machine's fp32 fused multiply-add peak in GFLOP/s on all cores with the
// widest SIMD the CPU has, running for about d. Benchmarks print their speed as a ratio of it.
func PeakFMA(d time.Duration) float64 { return kern.PeakFMA(d) }

// TriadBandwidth measures DRAM bandwidth in GB/s with the STREAM triad on all cores (12 bytes
// counted per fp32 element), running for about d.
func TriadBandwidth(d time.Duration) float64 { return kern.TriadBandwidth(d) }

// KernelISA names the matmul kernels in use: "avx512", "avx2" or "generic".
func KernelISA() string { return kern.ISA() }
