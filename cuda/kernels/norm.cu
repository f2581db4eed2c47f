// RMSNorm over groups of n consecutive elements (a row, or one head of a row). Block per group,
// 256 threads; sums of squares in double, as the CPU reference does.

// out = x / sqrt(mean(x²)+eps) * w. out may be x.
extern "C" __global__ void rmsnorm(float* out, const float* x, const float* w, int n, float eps) {
	__shared__ double sh[32];
	const float* xr = x + (i64)blockIdx.x * n;
	float* o = out + (i64)blockIdx.x * n;
	double ss = 0;
	for (int i = threadIdx.x; i < n; i += blockDim.x) ss += (double)xr[i] * xr[i];
	ss = block_sum_d(ss, sh);
	float inv = (float)(1.0 / sqrt(ss / n + (double)eps));
	for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = xr[i] * inv * w[i];
}

// Residual add and the next RMSNorm in one pass per row: sum = x + y, out = sum / rms(sum) * w.
// sum may be x (in place); out must be neither. One block per row.
extern "C" __global__ void add_rmsnorm(float* sum, float* out, const float* x, const float* y, const float* w, int n,
                                       float eps) {
	__shared__ double sh[32];
	const float* xr = x + (i64)blockIdx.x * n;
	const float* yr = y + (i64)blockIdx.x * n;
	float* s = sum + (i64)blockIdx.x * n;
	float* o = out + (i64)blockIdx.x * n;
	double ss = 0;
	for (int i = threadIdx.x; i < n; i += blockDim.x) {
		float v = xr[i] + yr[i];
		s[i] = v;
		ss += (double)v * v;
	}
	ss = block_sum_d(ss, sh);
	float inv = (float)(1.0 / sqrt(ss / n + (double)eps));
	for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = s[i] * inv * w[i];
}

// First pass of the backward: per group r = 1/sqrt(mean(x²)+eps) and c3 = r³·Σ(dy·w·x)/n,
// into stats[2*group] (double).
extern "C" __global__ void rmsnorm_bwd_stats(double* stats, const float* dy, const float* x, const float* w,
                                             int n, float eps) {
	__shared__ double sh[32];
	const float* xr = x + (i64)blockIdx.x * n;
	const float* yr = dy + (i64)blockIdx.x * n;
	double ss = 0, gx = 0;
	for (int i = threadIdx.x; i < n; i += blockDim.x) {
		double v = xr[i];
		ss += v * v;
		gx += (double)yr[i] * w[i] * v;
	}
	ss = block_sum_d(ss, sh);
	gx = block_sum_d(gx, sh);
	if (threadIdx.x == 0) {
		double r = 1.0 / sqrt(ss / n + (double)eps);
		stats[2 * blockIdx.x] = r;
		stats[2 * blockIdx.x + 1] = r * r * r * gx / n;
	}
}

// Partial column sums of dy·x·r for dw: block (c, z) sums groups z, z+Z, ... for columns
// 256c..256c+255 into part[z][n] (double). rmsnorm_bwd_dw_sum then adds the Z partials in
// order: deterministic, and Z blocks deep enough to keep the GPU busy. Grid (ceil(n/256), Z).
extern "C" __global__ void rmsnorm_bwd_dw_part(double* part, const double* stats, const float* dy, const float* x,
                                               int groups, int n) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= n) return;
	double acc = 0;
	for (int g = blockIdx.y; g < groups; g += gridDim.y)
		acc += (double)dy[(i64)g * n + i] * x[(i64)g * n + i] * stats[2 * g];
	part[(i64)blockIdx.y * n + i] = acc;
}

// dw[n] += Σ_z part[z][n], z in order. One thread per column.
extern "C" __global__ void colsum_add(float* dw, const double* part, int Z, int n) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= n) return;
	double acc = 0;
	for (int z = 0; z < Z; z++) acc += part[(i64)z * n + i];
	dw[i] += (float)acc;
}

// dx = r·dy·w - x·c3. dx may alias dy (each element is read before it is written, by one thread).
extern "C" __global__ void rmsnorm_bwd_dx(float* dx, const double* stats, const float* dy, const float* x,
                                          const float* w, i64 total, int n) {
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
		i64 g = i / n;
		int c = (int)(i % n);
		double r = stats[2 * g], c3 = stats[2 * g + 1];
		dx[i] = (float)(r * dy[i] * w[c] - (double)x[i] * c3);
	}
}
