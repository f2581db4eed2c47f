// Package cuda is the engine's CUDA backend, loaded at run time: the driver (libcuda.so.1),
// NVRTC and cuBLAS are opened with dlopen through purego, so binaries build with
// CGO_ENABLED=0 and run unchanged on machines without a GPU (where opening the backend
// returns an error naming the library that was searched for and the variable that overrides
// the search: PROLONG_LIBCUDA, PROLONG_NVRTC, PROLONG_CUBLAS).
//
// Kernels are CUDA C in kernels/, embedded in the binary and compiled by NVRTC at first use
// for the GPU present; the PTX is cached on disk under $PROLONG_CUDA_CACHE (default
// ~/.cache/prolong/cuda), keyed by the source's hash, the architecture and NVRTC's version.
// Matmuls run on cuBLAS (cublasGemmEx): bf16 operands with fp32 accumulation for bf16 weights
// and, with Options.BF16Matmul, for fp32 parameters too; exact fp32 otherwise. Device memory
// comes from a caching allocator over cuMemAlloc (never managed memory); all work runs on one
// stream per backend.
//
// Importing the package registers the backend as "cuda" with package engine.
package cuda
