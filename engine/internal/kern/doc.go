// Package kern holds the CPU compute kernels of Prolong: packed linear-layer weights and the
// matmul that reads them (AVX-512, AVX2+FMA or pure Go, chosen at run time), SIMD vector
// helpers, bf16 conversion, a persistent worker pool, and machine peak measurements.
package kern
