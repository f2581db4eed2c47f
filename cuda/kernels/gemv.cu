// Matrix-vector products for decoding (a few rows): y[M, N] = x[M, K] · W[N, K]ᵀ with fp32 x and
// y, M <= GEMV_MAXM, K a multiple of 8. wpr warps share one output column n (wpr = 1, 2, 4 or
// 8: more for long rows, so that enough loads are in flight); each reads its share of W's row
// n, 16 bytes per lane per load, and dots it with every row of x (x stays in L1/L2). Sums in
// fp32, reduced across the warp and then across the wpr warps in order. Grid
// (ceil(N/(8/wpr))), block 256 (8 warps).
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
