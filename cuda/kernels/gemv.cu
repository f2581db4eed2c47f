// Matrix-vector products for decoding (a few rows): y[M, N] = x[M, K] · W[N, K]ᵀ with fp32 x and
// y, M <= GEMV_MAXM, K a multiple of 8. wpr warps share one output column n (wpr = 1, 2, 4 or
// 8: more for long rows, so that enough loads are in flight); each reads its share of W's row
// n, 16 bytes per lane per load, and dots it with every row of x (x stays in L1/L2). Sums in
// fp32, reduced across the warp and then across the wpr warps in order. Grid
// (ceil(N/(8/wpr))), block 256 (8 warps).
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

// gemv_finish reduces acc over the warp and over the wpr warps of the column, and writes y.
__device__ __forceinline__ void gemv_finish(float* y, float* acc, int M, int N, int n, int wpr) {
	__shared__ float red[8][GEMV_MAXM];
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	for (int m = 0; m < GEMV_MAXM; m++) {
		float s = warp_sum(acc[m]);
		if (lane == 0) red[w][m] = s;
	}
	__syncthreads();
	if (lane == 0 && w % wpr == 0 && n < N) {
		for (int m = 0; m < GEMV_MAXM; m++) {
			if (m >= M) break;
			float s = 0;
			for (int j = 0; j < wpr; j++) s += red[w + j][m];
			y[(i64)m * N + n] = s;
		}
	}
}

// W in bf16.
extern "C" __global__ void gemv_bf16(float* y, const float* x, const bf16* W, int M, int N, int K, int wpr) {
	int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
	int n = blockIdx.x * (8 / wpr) + w / wpr, part = w % wpr;
	float acc[GEMV_MAXM];
	for (int m = 0; m < GEMV_MAXM; m++) acc[m] = 0.0f;
	if (n < N) {
		const bf16* wr = W + (i64)n * K;
#pragma unroll 4
		for (int k = (part * 32 + lane) * 8; k < K; k += wpr * 256) {
			float w8[8];
			bf16x8(*(const uint4*)(wr + k), w8);
			gemv_acc8(acc, w8, x, M, K, k);
		}
	}
	gemv_finish(y, acc, M, N, n, wpr);
}

// W in fp32.
extern "C" __global__ void gemv_f32(float* y, const float* x, const float* W, int M, int N, int K, int wpr) {
	int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
	int n = blockIdx.x * (8 / wpr) + w / wpr, part = w % wpr;
	float acc[GEMV_MAXM];
	for (int m = 0; m < GEMV_MAXM; m++) acc[m] = 0.0f;
	if (n < N) {
		const float* wr = W + (i64)n * K;
#pragma unroll 4
		for (int k = (part * 32 + lane) * 8; k < K; k += wpr * 256) {
			float4 a = *(const float4*)(wr + k), c = *(const float4*)(wr + k + 4);
			float w8[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
			gemv_acc8(acc, w8, x, M, K, k);
		}
	}
	gemv_finish(y, acc, M, N, n, wpr);
}
