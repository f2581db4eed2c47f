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

// block_argmax returns, in thread 0 (the others get a partial result), the index of the
// largest of x[lo..hi), the lowest index among equal maxima, or 0x7fffffff when no value is
// larger than -Inf (all NaN or -Inf). shv and shi hold 32 each. Every thread of the block calls it.
__device__ int block_argmax(const float* x, int lo, int hi, float* shv, int* shi) {
	int tid = threadIdx.x;
	float best = -INFINITY;
	int bi = 0x7fffffff;
	for (int i = lo + tid; i < hi; i += blockDim.x)
		if (x[i] > best) { best = x[i]; bi = i; }
	for (int o = 16; o > 0; o >>= 1) {
		float ov = __shfl_xor_sync(0xffffffffu, best, o);
		int oi = __shfl_xor_sync(0xffffffffu, bi, o);
		if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
	}
	if ((tid & 31) == 0) { shv[tid >> 5] = best; shi[tid >> 5] = bi; }
	__syncthreads();
	if (tid == 0) {
		for (int w = 1; w < (int)(blockDim.x >> 5); w++)
			if (shv[w] > best || (shv[w] == best && shi[w] < bi)) { best = shv[w]; bi = shi[w]; }
	}
	return bi;
}

// chunk_sums sums exp(x_i·inv - m) over the ids of [lo, hi) that keep(i, x[i]) admits, as the
// samplers and top log-probs add a row's mass: each thread of the block its contiguous chunk
// [*c0, *c1) in increasing id order (its sum: *mine), then thread 0 the chunk sums in thread
// order, leaving in pre (blockDim.x doubles) each chunk's exclusive prefix sum: chunk t covers
// [pre[t], pre[t] + *mine), and pre[t] + *mine is the very sum that made pre[t+1], so the
// chunks tile [0, total) with no gap and no overlap. Returns the total to every thread; every
// thread of the block calls it.
template <typename Keep>
__device__ double chunk_sums(const float* x, int lo, int hi, double inv, double m, Keep keep, double* pre, double* mine,
                             int* c0, int* c1) {
	__shared__ double total;
	int tid = threadIdx.x;
	int chunk = (hi - lo + blockDim.x - 1) / blockDim.x;
	*c0 = min(hi, lo + tid * chunk), *c1 = min(hi, *c0 + chunk);
	double s = 0;
	for (int i = *c0; i < *c1; i++) {
		if (keep(i, x[i])) s += exp(tempered(x[i], inv, m));
	}
	pre[tid] = s;
	*mine = s;
	__syncthreads();
	if (tid == 0) {
		double acc = 0;
		for (int i = 0; i < (int)blockDim.x; i++) {
			double v = pre[i];
			pre[i] = acc;
			acc += v;
		}
		total = acc;
	}
	__syncthreads();
	return total;
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

// Matrix-vector helpers of gemv.cu and fused_mlp.cu: GEMV_MAXM rows of x at most; gemv_acc8
// adds w8 · x[m, k..k+8) to acc[m] for every row m < M; bf16x8 widens 8 bf16 of W to fp32.
#define GEMV_MAXM 8

__device__ __forceinline__ void gemv_acc8(float* acc, const float* w8, const float* x, int M, int K, int k) {
	for (int m = 0; m < GEMV_MAXM; m++) {
		if (m >= M) break;
		const float4* xp = (const float4*)(x + (i64)m * K + k);
		float4 a = xp[0], b = xp[1];
		acc[m] += w8[0] * a.x + w8[1] * a.y + w8[2] * a.z + w8[3] * a.w + w8[4] * b.x + w8[5] * b.y +
		          w8[6] * b.z + w8[7] * b.w;
	}
}

__device__ __forceinline__ void bf16x8(uint4 raw, float* w8) {
	w8[0] = __uint_as_float(raw.x << 16);
	w8[1] = __uint_as_float(raw.x & 0xffff0000u);
	w8[2] = __uint_as_float(raw.y << 16);
	w8[3] = __uint_as_float(raw.y & 0xffff0000u);
	w8[4] = __uint_as_float(raw.z << 16);
	w8[5] = __uint_as_float(raw.z & 0xffff0000u);
	w8[6] = __uint_as_float(raw.w << 16);
	w8[7] = __uint_as_float(raw.w & 0xffff0000u);
}

// to_cache is a value as a KV cache of its type holds it: fp32 as is, bf16 rounded to nearest
// even (as the CPU's store: engine/internal/kern F32ToBF16).
__device__ __forceinline__ float to_cache(float x, float*) { return x; }
__device__ __forceinline__ bf16 to_cache(float x, bf16*) { return f32_to_bf16(x); }

// kv_store writes the keys and values of T new tokens into the paged cache of one layer:
// kc, vc [blocks, KV, BS, Dh]; k, v [T, KV*Dh]; slots[t] = block*BS + offset. One thread per value.
template <typename C>
__device__ __forceinline__ void kv_store(C* kc, C* vc, const float* k, const float* v, const int* slots, int T, int nkv,
                                         int bs, int dh) {
	i64 n = (i64)T * nkv * dh;
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
		int t = (int)(i / (nkv * dh));
		int r = (int)(i % (nkv * dh));
		int h = r / dh, d = r % dh;
		int slot = slots[t];
		i64 dst = (((i64)(slot / bs) * nkv + h) * bs + slot % bs) * dh + d;
		kc[dst] = to_cache(k[i], kc);
		vc[dst] = to_cache(v[i], vc);
	}
}
