/* Prints the facts of the CUDA driver, cuBLAS and cuBLASLt headers that cuda/'s hand-written
 * bindings depend on (struct sizes and offsets, enum values, the versioned symbol each API name
 * maps to), one "name value" line each. scripts/cuda-abi.sh compiles it against the headers of
 * Debian's nvidia-cuda-dev and writes cuda/testdata/abi.txt, which cuda/abi_test.go compares
 * with the Go side. */
#include <stddef.h>
#include <stdio.h>
#include <cuda.h>
#include <cublasLt.h>

#define STR2(x) #x
#define STR(x) STR2(x)
#define SYM(name) printf("symbol %s %s\n", #name, STR(name))
#define VAL(name) printf("const %s %lld\n", #name, (long long)(name))
#define SIZE(type) printf("sizeof %s %zu\n", #type, sizeof(type))
#define OFF(type, field) printf("offsetof %s.%s %zu\n", #type, #field, offsetof(type, field))

/* Each binding's prototype as the Go side calls it: the compiler checks it against the header
 * (a mismatch does not compile), and the golden records its parameter count, which the Go test
 * checks against the arguments each binding passes. */
#define PROTO(name, n, ret, ...)                                                             \
	_Static_assert(__builtin_types_compatible_p(__typeof__(&name), ret(*)(__VA_ARGS__)), \
	               #name " does not have the prototype cuda/ assumes");                   \
	printf("arity %s %d\n", #name, n)

int main(void) {
	printf("version CUDA_VERSION %d\n", CUDA_VERSION);
	printf("version CUBLAS_VERSION %d\n", CUBLAS_VERSION);
	PROTO(cuStreamBeginCapture, 2, CUresult, CUstream, CUstreamCaptureMode);
	PROTO(cuStreamEndCapture, 2, CUresult, CUstream, CUgraph *);
	PROTO(cuStreamIsCapturing, 2, CUresult, CUstream, CUstreamCaptureStatus *);
	PROTO(cuGraphInstantiateWithFlags, 3, CUresult, CUgraphExec *, CUgraph, unsigned long long);
	PROTO(cuGraphLaunch, 2, CUresult, CUgraphExec, CUstream);
	PROTO(cuGraphExecDestroy, 1, CUresult, CUgraphExec);
	PROTO(cuGraphDestroy, 1, CUresult, CUgraph);
	PROTO(cuMemHostAlloc, 3, CUresult, void **, size_t, unsigned int);
	PROTO(cuMemFreeHost, 1, CUresult, void *);
	PROTO(cuMemHostGetDevicePointer, 3, CUresult, CUdeviceptr *, void *, unsigned int);
	PROTO(cublasLtCreate, 1, cublasStatus_t, cublasLtHandle_t *);
	PROTO(cublasLtDestroy, 1, cublasStatus_t, cublasLtHandle_t);
	PROTO(cublasLtMatmulDescCreate, 3, cublasStatus_t, cublasLtMatmulDesc_t *, cublasComputeType_t, cudaDataType_t);
	PROTO(cublasLtMatmulDescDestroy, 1, cublasStatus_t, cublasLtMatmulDesc_t);
	PROTO(cublasLtMatmulDescSetAttribute, 4, cublasStatus_t, cublasLtMatmulDesc_t, cublasLtMatmulDescAttributes_t, const void *, size_t);
	PROTO(cublasLtMatrixLayoutCreate, 5, cublasStatus_t, cublasLtMatrixLayout_t *, cudaDataType, uint64_t, uint64_t, int64_t);
	PROTO(cublasLtMatrixLayoutDestroy, 1, cublasStatus_t, cublasLtMatrixLayout_t);
	PROTO(cublasLtMatmulPreferenceCreate, 1, cublasStatus_t, cublasLtMatmulPreference_t *);
	PROTO(cublasLtMatmulPreferenceDestroy, 1, cublasStatus_t, cublasLtMatmulPreference_t);
	PROTO(cublasLtMatmulPreferenceSetAttribute, 4, cublasStatus_t, cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t, const void *, size_t);
	PROTO(cublasLtMatmulAlgoGetHeuristic, 10, cublasStatus_t, cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t,
	      cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatmulPreference_t, int,
	      cublasLtMatmulHeuristicResult_t *, int *);
	PROTO(cublasLtMatmul, 16, cublasStatus_t, cublasLtHandle_t, cublasLtMatmulDesc_t, const void *, const void *,
	      cublasLtMatrixLayout_t, const void *, cublasLtMatrixLayout_t, const void *, const void *, cublasLtMatrixLayout_t,
	      void *, cublasLtMatrixLayout_t, const cublasLtMatmulAlgo_t *, void *, size_t, cudaStream_t);
	/* CUDA graphs: capture a stream, instantiate, replay. */
	SYM(cuStreamBeginCapture);
	SYM(cuStreamEndCapture);
	SYM(cuStreamIsCapturing);
	SYM(cuGraphInstantiateWithFlags);
	SYM(cuGraphLaunch);
	SYM(cuGraphExecDestroy);
	SYM(cuGraphDestroy);
	VAL(CU_STREAM_CAPTURE_MODE_GLOBAL);
	VAL(CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
	VAL(CU_STREAM_CAPTURE_MODE_RELAXED);
	VAL(CU_STREAM_CAPTURE_STATUS_NONE);
	VAL(CU_STREAM_CAPTURE_STATUS_ACTIVE);
	VAL(CU_STREAM_CAPTURE_STATUS_INVALIDATED);
	VAL(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
	VAL(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
	/* Pinned host memory, mapped into the device's address space. */
	SYM(cuMemHostAlloc);
	SYM(cuMemFreeHost);
	SYM(cuMemHostGetDevicePointer);
	VAL(CU_MEMHOSTALLOC_PORTABLE);
	VAL(CU_MEMHOSTALLOC_DEVICEMAP);
	VAL(CU_MEMHOSTALLOC_WRITECOMBINED);
	/* cuBLASLt. */
	SYM(cublasLtCreate);
	SYM(cublasLtDestroy);
	SYM(cublasLtMatmulDescCreate);
	SYM(cublasLtMatmulDescDestroy);
	SYM(cublasLtMatmulDescSetAttribute);
	SYM(cublasLtMatrixLayoutCreate);
	SYM(cublasLtMatrixLayoutDestroy);
	SYM(cublasLtMatmulPreferenceCreate);
	SYM(cublasLtMatmulPreferenceDestroy);
	SYM(cublasLtMatmulPreferenceSetAttribute);
	SYM(cublasLtMatmulAlgoGetHeuristic);
	SYM(cublasLtMatmul);
	VAL(CUBLASLT_MATMUL_DESC_TRANSA);
	VAL(CUBLASLT_MATMUL_DESC_TRANSB);
	VAL(CUBLASLT_MATMUL_DESC_EPILOGUE);
	VAL(CUBLASLT_MATMUL_DESC_BIAS_POINTER);
	VAL(CUBLASLT_EPILOGUE_DEFAULT);
	VAL(CUBLASLT_EPILOGUE_BIAS);
	VAL(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES);
	VAL(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES);
	VAL(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES);
	VAL(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES);
	VAL(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES);
	VAL(CUBLAS_OP_N);
	VAL(CUBLAS_OP_T);
	VAL(CUBLAS_COMPUTE_32F);
	VAL(CUBLAS_COMPUTE_32F_FAST_TF32);
	VAL(CUDA_R_32F);
	VAL(CUDA_R_16BF);
	SIZE(cublasLtMatmulAlgo_t);
	SIZE(cublasLtMatmulHeuristicResult_t);
	OFF(cublasLtMatmulHeuristicResult_t, algo);
	OFF(cublasLtMatmulHeuristicResult_t, workspaceSize);
	OFF(cublasLtMatmulHeuristicResult_t, state);
	OFF(cublasLtMatmulHeuristicResult_t, wavesCount);
	SIZE(cublasOperation_t);
	SIZE(cublasLtEpilogue_t);
	SIZE(cublasComputeType_t);
	return 0;
}
