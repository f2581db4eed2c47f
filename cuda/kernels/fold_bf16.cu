// Kernels that write their fp32 output and its bf16 copy in the same pass (Options.FoldBF16),
// the copy that the bf16 GEMM reading the output would otherwise get from f32_to_bf16_kernel
// (one more launch, and a read and a write of the tensor). Each is its unfused kernel's fp32
// arithmetic, expression for expression (norm.cu, elementwise.cu), with outb[i] =
// f32_to_bf16(out[i]) beside every out[i] store: f32_to_bf16_kernel's rounding (common.cuh), so
// both outputs are bit for bit those of the unfused kernel followed by the conversion. The
// layouts and launch shapes are the unfused kernels'.

// rmsnorm (norm.cu), and outb = bf16(out). out may be x. One block per group of n, 256 threads.
extern "C" __global__ void rmsnorm_bf16(float* out, bf16* outb, const float* x, const float* w, int n, float eps) {
	__shared__ double sh[32];
	const float* xr = x + (i64)blockIdx.x * n;
	float* o = out + (i64)blockIdx.x * n;
	bf16* ob = outb + (i64)blockIdx.x * n;
	double ss = 0;
	for (int i = threadIdx.x; i < n; i += blockDim.x) ss += (double)xr[i] * xr[i];
	ss = block_sum_d(ss, sh);
	float inv = (float)(1.0 / sqrt(ss / n + (double)eps));
	for (int i = threadIdx.x; i < n; i += blockDim.x) {
		float v = xr[i] * inv * w[i];
		o[i] = v;
		ob[i] = f32_to_bf16(v);
	}
}

// add_rmsnorm (norm.cu), and outb = bf16(out): sum = x + y, out = sum / rms(sum) * w. sum may
// be x (in place); out must be neither. One block per row.
extern "C" __global__ void add_rmsnorm_bf16(float* sum, float* out, bf16* outb, const float* x, const float* y,
                                            const float* w, int n, float eps) {
	__shared__ double sh[32];
	const float* xr = x + (i64)blockIdx.x * n;
	const float* yr = y + (i64)blockIdx.x * n;
	float* s = sum + (i64)blockIdx.x * n;
	float* o = out + (i64)blockIdx.x * n;
	bf16* ob = outb + (i64)blockIdx.x * n;
	double ss = 0;
	for (int i = threadIdx.x; i < n; i += blockDim.x) {
		float v = xr[i] + yr[i];
		s[i] = v;
		ss += (double)v * v;
	}
	ss = block_sum_d(ss, sh);
	float inv = (float)(1.0 / sqrt(ss / n + (double)eps));
	for (int i = threadIdx.x; i < n; i += blockDim.x) {
		float v = s[i] * inv * w[i];
		o[i] = v;
		ob[i] = f32_to_bf16(v);
	}
}

// swiglu_bwd (elementwise.cu), and dgb = bf16(dgate), dub = bf16(dup): the inputs of the gate
// and up projections' MatMulDX and MatMulDW. A 1-D grid-stride loop over n elements.
extern "C" __global__ void swiglu_bwd_bf16(float* dgate, float* dup, bf16* dgb, bf16* dub, const float* dout,
                                           const float* gate, const float* up, i64 n) {
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
		float g = gate[i], u = up[i], d = dout[i];
		float s = 1.0f / (1.0f + expf(-g));
		float dg = d * u * s * (1.0f + g * (1.0f - s));
		float du = d * g * s;
		dgate[i] = dg;
		dup[i] = du;
		dgb[i] = f32_to_bf16(dg);
		dub[i] = f32_to_bf16(du);
	}
}

// attn_paged_gqa (attention.cu: its body, gqa_paged), and outb = bf16(out): the attention
// output that o_proj reads. Grid (T, KV), block GQ_WARPS*32.
extern "C" __global__ void attn_paged_gqa_bf16(float* out, bf16* outb, const float* q, const float* kc, const float* vc,
                                               const int* meta, int nh, int nkv, int dh, int bs, float scale) {
	gqa_paged(out, outb, q, kc, vc, meta, nh, nkv, dh, bs, scale);
}

// rmsnorm_bwd_dx (norm.cu), and dxb = bf16(dx): the backward of qk-norm, whose dx (dq, dk)
// the Q and K projections' MatMulDX and MatMulDW read. dx may alias dy.
extern "C" __global__ void rmsnorm_bwd_dx_bf16(float* dx, bf16* dxb, const double* stats, const float* dy,
                                               const float* x, const float* w, i64 total, int n) {
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
		i64 g = i / n;
		int c = (int)(i % n);
		double r = stats[2 * g], c3 = stats[2 * g + 1];
		float v = (float)(r * dy[i] * w[c] - (double)x[i] * c3);
		dx[i] = v;
		dxb[i] = f32_to_bf16(v);
	}
}
