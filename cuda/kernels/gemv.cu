// Matrix-vector products for decoding (a few rows): y[M, N] = x[M, K] · W[N, K]ᵀ with fp32 x and
// y, M <= GEMV_MAXM, K a multiple of 8. One warp per output column n reads W's row n once,
// 16 bytes per lane per load, and dots it with every row of x (x stays in L1/L2). Sums in
// fp32, reduced across the warp. Grid (ceil(N/8)), block 256 (8 warps).
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

__device__ __forceinline__ void gemv_store(float* y, float* acc, int M, int N, int n) {
	for (int m = 0; m < GEMV_MAXM; m++) {
		if (m >= M) break;
		float s = warp_sum(acc[m]);
		if ((threadIdx.x & 31) == 0) y[(i64)m * N + n] = s;
	}
}

// W in bf16.
extern "C" __global__ void gemv_bf16(float* y, const float* x, const bf16* W, int M, int N, int K) {
	int n = blockIdx.x * 8 + (threadIdx.x >> 5);
	if (n >= N) return;
	int lane = threadIdx.x & 31;
	float acc[GEMV_MAXM];
	for (int m = 0; m < GEMV_MAXM; m++) acc[m] = 0.0f;
	const bf16* wr = W + (i64)n * K;
	for (int k = lane * 8; k < K; k += 256) {
		uint4 raw = *(const uint4*)(wr + k);
		float w8[8];
		w8[0] = __uint_as_float(raw.x << 16);
		w8[1] = __uint_as_float(raw.x & 0xffff0000u);
		w8[2] = __uint_as_float(raw.y << 16);
		w8[3] = __uint_as_float(raw.y & 0xffff0000u);
		w8[4] = __uint_as_float(raw.z << 16);
		w8[5] = __uint_as_float(raw.z & 0xffff0000u);
		w8[6] = __uint_as_float(raw.w << 16);
		w8[7] = __uint_as_float(raw.w & 0xffff0000u);
		gemv_acc8(acc, w8, x, M, K, k);
	}
	gemv_store(y, acc, M, N, n);
}

// W in fp32.
extern "C" __global__ void gemv_f32(float* y, const float* x, const float* W, int M, int N, int K) {
	int n = blockIdx.x * 8 + (threadIdx.x >> 5);
	if (n >= N) return;
	int lane = threadIdx.x & 31;
	float acc[GEMV_MAXM];
	for (int m = 0; m < GEMV_MAXM; m++) acc[m] = 0.0f;
	const float* wr = W + (i64)n * K;
	for (int k = lane * 8; k < K; k += 256) {
		float4 a = *(const float4*)(wr + k), b = *(const float4*)(wr + k + 4);
		float w8[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
		gemv_acc8(acc, w8, x, M, K, k);
	}
	gemv_store(y, acc, M, N, n);
}
