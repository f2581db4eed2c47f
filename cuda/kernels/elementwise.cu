// Element-wise and row-copy kernels. Launch: a 1-D grid-stride loop over n elements unless said.

// out[n] = bf16(in[n]).
extern "C" __global__ void f32_to_bf16_kernel(bf16* out, const float* in, i64 n) {
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
		out[i] = f32_to_bf16(in[i]);
}

// out[R, C] = x[rows[r], :]. Grid (R), block 256. Embedding is the same with x the table.
extern "C" __global__ void gather_rows(float* out, const float* x, const int* rows, int C) {
	int r = blockIdx.x;
	const float* src = x + (i64)rows[r] * C;
	float* dst = out + (i64)r * C;
	for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c];
}

// out[uniq[u], :] += x[order[k], :] for k in starts[u]..starts[u+1]-1, in that order (the host
// groups repeated destinations so that no two blocks write one row and the sums are
// deterministic). meta = [uniq[U] | starts[U+1] | order[R]]. Grid (U), block 256.
extern "C" __global__ void scatter_add_rows(float* out, const float* x, const int* meta, int U, int C) {
	int u = blockIdx.x;
	const int* uniq = meta;
	const int* starts = meta + U;
	const int* order = meta + 2 * U + 1;
	float* dst = out + (i64)uniq[u] * C;
	for (int c = threadIdx.x; c < C; c += blockDim.x) {
		float acc = dst[c];
		for (int k = starts[u]; k < starts[u + 1]; k++) acc += x[(i64)order[k] * C + c];
		dst[c] = acc;
	}
}

// x[M, N] += b[N].
extern "C" __global__ void add_bias(float* x, const float* b, i64 n, int N) {
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
		x[i] += b[i % N];
}

// Partial column sums for db: block (c, z) sums rows z, z+Z, ... of dy[M, N] for columns
// 256c..256c+255 into part[z][N] (double); colsum_add (norm.cu) adds them into db in order.
extern "C" __global__ void bias_dw_part(double* part, const float* dy, int M, int N) {
	int c = blockIdx.x * blockDim.x + threadIdx.x;
	if (c >= N) return;
	double acc = 0;
	for (int r = blockIdx.y; r < M; r += gridDim.y) acc += dy[(i64)r * N + c];
	part[(i64)blockIdx.y * N + c] = acc;
}

// out = a + b.
extern "C" __global__ void add(float* out, const float* a, const float* b, i64 n) {
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
		out[i] = a[i] + b[i];
}

// x *= s; s == 0 writes zeros (clearing NaN and Inf).
extern "C" __global__ void scale(float* x, float s, i64 n) {
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
		x[i] = s == 0.0f ? 0.0f : x[i] * s;
}

// Dropout (engine/dropout.go): u_i = SplitMix64's (i+1)-th output from key, top 24 bits;
// out[i] = u_i >= thr ? x[i]*s : 0. key = DropoutKey(seed, stream), thr = round(p*2^24) and
// s = float32(1/(1-p)) come from the host. out may alias x.
extern "C" __global__ void dropout(float* out, const float* x, unsigned long long key, u32 thr, float s, i64 n) {
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
		unsigned long long z = key + ((unsigned long long)i + 1ull) * 0x9e3779b97f4a7c15ull;
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		z ^= z >> 31;
		out[i] = (u32)(z >> 40) >= thr ? x[i] * s : 0.0f;
	}
}

// out = silu(gate) * up. out may alias gate or up.
extern "C" __global__ void swiglu(float* out, const float* gate, const float* up, i64 n) {
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
		float g = gate[i];
		out[i] = g / (1.0f + expf(-g)) * up[i];
	}
}

// Backward of out = silu(g)*u: with s = sigmoid(g), dg = dout*u*s*(1+g*(1-s)), du = dout*g*s.
extern "C" __global__ void swiglu_bwd(float* dgate, float* dup, const float* dout, const float* gate,
                                      const float* up, i64 n) {
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
		float g = gate[i], u = up[i], d = dout[i];
		float s = 1.0f / (1.0f + expf(-g));
		dgate[i] = d * u * s * (1.0f + g * (1.0f - s));
		dup[i] = d * g * s;
	}
}

// RoPE in place on x[T, width] (width = heads*Dh), HF rotate-half: pairs (i, i+Dh/2) of each
// head rotated by the angle of pos[t] from the tables cos, sin [P, Dh/2]. One thread per pair.
extern "C" __global__ void rope(float* x, const int* pos, const float* cosT, const float* sinT,
                                int T, int width, int headDim) {
	int half = headDim / 2;
	i64 pairs = (i64)T * (width / 2);
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < pairs; i += (i64)gridDim.x * blockDim.x) {
		int t = (int)(i / (width / 2));
		int r = (int)(i % (width / 2));
		int h = r / half, j = r % half;
		float* row = x + (i64)t * width + h * headDim;
		i64 p = pos[t];
		float c = cosT[p * half + j], s = sinT[p * half + j];
		float x1 = row[j], x2 = row[j + half];
		row[j] = x1 * c - x2 * s;
		row[j + half] = x2 * c + x1 * s;
	}
}

// AdamW as torch.optim.AdamW, constants folded by the host: p = p*decay - step*m/(sqrt(v)*isb2+eps).
extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, i64 n, float decay, float b1,
                                 float b2, float c1, float c2, float step, float isb2, float eps) {
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
		float gi = g[i];
		float mi = b1 * m[i] + c1 * gi;
		float vi = b2 * v[i] + c2 * gi * gi;
		m[i] = mi;
		v[i] = vi;
		p[i] = p[i] * decay - step * mi / (sqrtf(vi) * isb2 + eps);
	}
}

// partial[blockIdx.x] = sum of x² over this block's grid-stride share, in double. The host adds
// the partials in order, so the result is deterministic. Block 256.
extern "C" __global__ void sumsq_partial(double* partial, const float* x, i64 n) {
	__shared__ double sh[32];
	double s = 0;
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
		double v = x[i];
		s += v * v;
	}
	s = block_sum_d(s, sh);
	if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// kv_write is kv_store (common.cuh) into an fp32 cache.
extern "C" __global__ void kv_write(float* kc, float* vc, const float* k, const float* v, const int* slots,
                                    int T, int nkv, int bs, int dh) {
	kv_store(kc, vc, k, v, slots, T, nkv, bs, dh);
}
