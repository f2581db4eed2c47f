// Shared helpers of Prolong's CUDA kernels. NVRTC compiles these sources without any CUDA
// header (no cuda_bf16.h, no cuda_runtime.h): bf16 conversions are written here with integer
// arithmetic, and only NVRTC's built-in device functions (expf, logf, sqrtf, __shfl_xor_sync,
// atomics) are used. Every tensor is row-major; each kernel states its layout and launch shape.

typedef unsigned short bf16;
typedef unsigned int u32;
typedef long long i64;

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// bf16 -> f32: the bf16 bits are the high half of the f32.
__device__ __forceinline__ float bf16_to_f32(bf16 b) { return __uint_as_float(((u32)b) << 16); }

// f32 -> bf16, round to nearest even; NaN stays a (quiet) NaN.
__device__ __forceinline__ bf16 f32_to_bf16(float f) {
	u32 u = __float_as_uint(f);
	if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);
	u += 0x7fffu + ((u >> 16) & 1u);
	return (bf16)(u >> 16);
}

// tempered(x, inv, m) = x·inv - m in double, each operation rounded on its own, as the CPU
// reference computes a tempered logit minus the row's maximum (engine/sample.go: the Go
// compiler never fuses on amd64). The intrinsics keep NVRTC from contracting the two into one
// fused multiply-add (its default, --fmad=true), whose single rounding lands on another
// double now and then, and so, through exp, on other sums and other log-probs.
__device__ __forceinline__ double tempered(float x, double inv, double m) {
	return __dsub_rn(__dmul_rn((double)x, inv), m);
}

__device__ __forceinline__ float warp_sum(float v) {
	for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
	for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

__device__ __forceinline__ float warp_max(float v) {
	for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

// block_sum_d returns the sum of v over the block (blockDim.x a multiple of 32, at most 1024)
// to every thread. sh holds 32 doubles.
__device__ double block_sum_d(double v, double* sh) {
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
	v = warp_sum_d(v);
	__syncthreads();
	if (lane == 0) sh[w] = v;
	__syncthreads();
	double t = 0;
	for (int i = 0; i < nw; i++) t += sh[i];
	return t;
}

// block_max returns the maximum of v over the block to every thread. sh holds 32 floats.
__device__ float block_max(float v, float* sh) {
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
	v = warp_max(v);
	__syncthreads();
	if (lane == 0) sh[w] = v;
	__syncthreads();
	float t = sh[0];
	for (int i = 1; i < nw; i++) t = fmaxf(t, sh[i]);
	return t;
}
