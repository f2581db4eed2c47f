// The MLP's gate/up projections fused with SwiGLU, and several projections of one input in one
// launch (the backend's MatMuls: Q, K, V; gate, up). Matrix-vector kernels for decoding take the
// layout and arithmetic of gemv.cu: y[M, N] = x[M, K]·W[N, K]ᵀ with fp32 x and y,
// M <= GEMV_MAXM (common.cuh), K a multiple of 8; wpr warps (1, 2, 4 or 8) share one
// output column, each lane loads 16 bytes of W's row per step and dots them with every row of
// x; sums in fp32, reduced across the warp and then across the wpr warps in order. Grid
// (ceil(N/(8/wpr))) unless said, block 256 (8 warps).

// fm_load8 reads W[k..k+8) of a row as fp32.
__device__ __forceinline__ void fm_load8(const bf16* w, float* w8) { bf16x8(*(const uint4*)w, w8); }

__device__ __forceinline__ void fm_load8(const float* w, float* w8) {
	float4 a = *(const float4*)w, c = *(const float4*)(w + 4);
	w8[0] = a.x, w8[1] = a.y, w8[2] = a.z, w8[3] = a.w;
	w8[4] = c.x, w8[5] = c.y, w8[6] = c.z, w8[7] = c.w;
}

// fm_reduce sums acc over the warp into red[warp][m]; after it (and a __syncthreads) the first
// warp of a column adds red[w .. w+wpr) in order.
__device__ __forceinline__ void fm_reduce(float (*red)[GEMV_MAXM], float* acc) {
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	for (int m = 0; m < GEMV_MAXM; m++) {
		float s = warp_sum(acc[m]);
		if (lane == 0) red[w][m] = s;
	}
}

// fm_gemv is one column n of y = x·Wᵀ for the block's warp w (part w%wpr of the row), as gemv.cu.
template <typename W>
__device__ __forceinline__ void fm_gemv(float* y, const float* x, const W* Wt, int M, int N, int K, int wpr, int blk) {
	__shared__ float red[8][GEMV_MAXM];
	int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
	int n = blk * (8 / wpr) + w / wpr, part = w % wpr;
	float acc[GEMV_MAXM];
	for (int m = 0; m < GEMV_MAXM; m++) acc[m] = 0.0f;
	if (n < N) {
		const W* wr = Wt + (i64)n * K;
#pragma unroll 4
		for (int k = (part * 32 + lane) * 8; k < K; k += wpr * 256) {
			float w8[8];
			fm_load8(wr + k, w8);
			gemv_acc8(acc, w8, x, M, K, k);
		}
	}
	fm_reduce(red, acc);
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

// Up to three products of one x in one launch: yi[M, Ni] = x·Wiᵀ for i < 3 (an unused one has
// Ni = 0). The grid is the sum of each product's gemv grid, ceil(Ni/(8/wpr)) blocks for product
// i in order; each block computes the columns of one product as gemv.cu does.
template <typename W>
__device__ __forceinline__ void fm_gemv3(float* y0, float* y1, float* y2, const float* x, const W* W0, const W* W1,
                                         const W* W2, int N0, int N1, int N2, int M, int K, int wpr) {
	int cpb = 8 / wpr;
	int b = blockIdx.x, nb0 = (N0 + cpb - 1) / cpb, nb1 = (N1 + cpb - 1) / cpb;
	if (b < nb0) {
		fm_gemv(y0, x, W0, M, N0, K, wpr, b);
	} else if (b < nb0 + nb1) {
		fm_gemv(y1, x, W1, M, N1, K, wpr, b - nb0);
	} else {
		fm_gemv(y2, x, W2, M, N2, K, wpr, b - nb0 - nb1);
	}
}

extern "C" __global__ void gemv3_bf16(float* y0, float* y1, float* y2, const float* x, const bf16* W0, const bf16* W1,
                                      const bf16* W2, int N0, int N1, int N2, int M, int K, int wpr) {
	fm_gemv3(y0, y1, y2, x, W0, W1, W2, N0, N1, N2, M, K, wpr);
}

extern "C" __global__ void gemv3_f32(float* y0, float* y1, float* y2, const float* x, const float* W0, const float* W1,
                                     const float* W2, int N0, int N1, int N2, int M, int K, int wpr) {
	fm_gemv3(y0, y1, y2, x, W0, W1, W2, N0, N1, N2, M, K, wpr);
}

// The gate/up products and SwiGLU of decoding in one launch: column n of g = x·Wgᵀ and
// u = x·Wuᵀ (each summed as gemv.cu sums it; x read once for both), then out = silu(g)·u as
// the swiglu kernel computes it; gate and up, where not null, receive g and u. out [M, N].
template <typename W>
__device__ __forceinline__ void fm_gemv_swiglu(float* out, float* gate, float* up, const float* x, const W* Wg,
                                               const W* Wu, int M, int N, int K, int wpr) {
	__shared__ float redg[8][GEMV_MAXM], redu[8][GEMV_MAXM];
	int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
	int n = blockIdx.x * (8 / wpr) + w / wpr, part = w % wpr;
	float accg[GEMV_MAXM], accu[GEMV_MAXM];
	for (int m = 0; m < GEMV_MAXM; m++) accg[m] = accu[m] = 0.0f;
	if (n < N) {
		const W* gr = Wg + (i64)n * K;
		const W* ur = Wu + (i64)n * K;
#pragma unroll 2
		for (int k = (part * 32 + lane) * 8; k < K; k += wpr * 256) {
			float g8[8], u8[8];
			fm_load8(gr + k, g8);
			fm_load8(ur + k, u8);
			gemv_acc8(accg, g8, x, M, K, k);
			gemv_acc8(accu, u8, x, M, K, k);
		}
	}
	fm_reduce(redg, accg);
	fm_reduce(redu, accu);
	__syncthreads();
	if (lane == 0 && w % wpr == 0 && n < N) {
		for (int m = 0; m < GEMV_MAXM; m++) {
			if (m >= M) break;
			float g = 0, u = 0;
			for (int j = 0; j < wpr; j++) g += redg[w + j][m];
			for (int j = 0; j < wpr; j++) u += redu[w + j][m];
			i64 i = (i64)m * N + n;
			out[i] = g / (1.0f + expf(-g)) * u;
			if (gate) gate[i] = g;
			if (up) up[i] = u;
		}
	}
}

extern "C" __global__ void gemv_swiglu_bf16(float* out, float* gate, float* up, const float* x, const bf16* Wg,
                                            const bf16* Wu, int M, int N, int K, int wpr) {
	fm_gemv_swiglu(out, gate, up, x, Wg, Wu, M, N, K, wpr);
}

extern "C" __global__ void gemv_swiglu_f32(float* out, float* gate, float* up, const float* x, const float* Wg,
                                           const float* Wu, int M, int N, int K, int wpr) {
	fm_gemv_swiglu(out, gate, up, x, Wg, Wu, M, N, K, wpr);
}

// out = silu(gate)·up as the swiglu kernel computes it, reading the gate/up GEMMs' outputs,
// and outb = bf16(out) (where not null) for the down projection's bf16 GEMM, which then needs
// no conversion of its own. A 1-D grid-stride loop over n elements.
extern "C" __global__ void swiglu_out_bf16(float* out, bf16* outb, const float* gate, const float* up, i64 n) {
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
		float g = gate[i];
		float o = g / (1.0f + expf(-g)) * up[i];
		out[i] = o;
		if (outb) outb[i] = f32_to_bf16(o);
	}
}
