// Package kern holds the CPU compute kernels of Prolong: packed linear-layer weights and the
// matmul that reads them (AVX-512, AVX2 or pure Go, chosen at run time; bf16 dot products on AMX
// tiles or VDPBF16PS where the CPU and the OS allow, each with an exact Go emulation), SIMD
// vector helpers, bf16 conversion, a persistent worker pool, and machine peak measurements.
package kern
