// Attention, causal with grouped-query heads (head h reads key/value head h / (H/KV)).
// Launch: grid (T, heads), block ATT_WARPS*32 threads. Each warp walks every ATT_WARPS-th key
// position with an online softmax (running max m, sum l, accumulator acc); lane L holds head
// dims L, L+32, ... (head_dim <= 32*ATT_MAXD); the warps' partial results are merged at the end.
// Scores are (q·k)·scale, softmax and weighted sums in fp32, exp by expf.

#define ATT_WARPS 4
#define ATT_MAXD 8

// merge_warps combines the warps' (m, l, acc) and writes out[dh] = acc/l; returns m + log(l)
// (the log-sum-exp of the scores) to every thread.
__device__ float merge_warps(float m, float l, const float* acc, float* out, int dh) {
	__shared__ float sm[ATT_WARPS], sl[ATT_WARPS];
	__shared__ float sacc[ATT_WARPS][32 * ATT_MAXD];
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	if (lane == 0) {
		sm[w] = m;
		sl[w] = l;
	}
	for (int j = 0; j < ATT_MAXD; j++) {
		int d = lane + 32 * j;
		if (d < dh) sacc[w][d] = acc[j];
	}
	__syncthreads();
	float M = sm[0];
	for (int i = 1; i < ATT_WARPS; i++) M = fmaxf(M, sm[i]);
	float L = 0, f[ATT_WARPS];
	for (int i = 0; i < ATT_WARPS; i++) {
		f[i] = sl[i] == 0.0f ? 0.0f : expf(sm[i] - M);
		L += sl[i] * f[i];
	}
	for (int d = threadIdx.x; d < dh; d += blockDim.x) {
		float o = 0;
		for (int i = 0; i < ATT_WARPS; i++) o += sacc[i][d] * f[i];
		out[d] = o / L;
	}
	return M + logf(L);
}

// attn_row runs one (query row, head): keys/values at key(p) for p in 0..n-1.
// Paged: position p of the sequence lives in cache block table[p/bs] at offset p%bs, layout
// [blocks, KV, BS, Dh]. Contiguous: position p is row t0+p of k, v [T, KV*Dh].
__device__ float attn_row(float* out, const float* qr, const float* kbuf, const float* vbuf, int n, int dh,
                          float scale, bool paged, const int* table, int bs, int nkv, int kvh, int t0) {
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	float qv[ATT_MAXD], acc[ATT_MAXD];
	for (int j = 0; j < ATT_MAXD; j++) {
		int d = lane + 32 * j;
		qv[j] = d < dh ? qr[d] : 0.0f;
		acc[j] = 0.0f;
	}
	float m = -INFINITY, l = 0.0f;
	for (int p = w; p < n; p += ATT_WARPS) {
		i64 base = paged ? ((((i64)table[p / bs] * nkv + kvh) * bs + p % bs) * dh)
		                 : ((i64)(t0 + p) * nkv * dh + (i64)kvh * dh);
		float s = 0.0f;
		for (int j = 0; j < ATT_MAXD; j++) {
			int d = lane + 32 * j;
			if (d < dh) s += qv[j] * kbuf[base + d];
		}
		s = warp_sum(s) * scale;
		float mn = fmaxf(m, s);
		float corr = expf(m - mn);
		float e = expf(s - mn);
		l = l * corr + e;
		for (int j = 0; j < ATT_MAXD; j++) {
			int d = lane + 32 * j;
			if (d < dh) acc[j] = acc[j] * corr + e * vbuf[base + d];
		}
		m = mn;
	}
	return merge_warps(m, l, acc, out, dh);
}

// Attention of new tokens over the paged KV cache of one layer. q, out [T, H*Dh];
// kc, vc [blocks, KV, BS, Dh]. meta[2t] = offset in meta of token t's block table, meta[2t+1] =
// its position (it attends to positions 0..pos).
extern "C" __global__ void attn_paged(float* out, const float* q, const float* kc, const float* vc,
                                      const int* meta, int nh, int nkv, int dh, int bs, float scale) {
	int t = blockIdx.x, h = blockIdx.y;
	int kvh = h / (nh / nkv);
	i64 row = ((i64)t * nh + h) * dh;
	attn_row(out + row, q + row, kc, vc, meta[2 * t + 1] + 1, dh, scale, true, meta + meta[2 * t], bs, nkv, kvh,
	         0);
}

// Attention within each sequence of a packed batch (training). q, out [T, H*Dh]; k, v [T, KV*Dh];
// lse [T, H]; meta[t] = first row of token t's sequence (-1: skip the row).
extern "C" __global__ void attn_train(float* out, float* lse, const float* q, const float* k, const float* v,
                                      const int* meta, int nh, int nkv, int dh, float scale) {
	int t = blockIdx.x, h = blockIdx.y;
	int kvh = h / (nh / nkv);
	int t0 = meta[t];
	if (t0 < 0) return; // a long sequence's row: the matmul path computes it
	i64 row = ((i64)t * nh + h) * dh;
	float L = attn_row(out + row, q + row, k, v, t - t0 + 1, dh, scale, false, 0, 0, nkv, kvh, t0);
	if (threadIdx.x == 0) lse[(i64)t * nh + h] = L;
}

// Backward, part 1: dq of row i, head h, and D[i,h] = dout_i·out_i for part 2. With
// p_j = exp(scale·q_i·k_j - lse_i): ds_j = p_j·(dout_i·v_j - D)·scale, dq_i = Σ_j ds_j·k_j.
// Grid (T, H). meta = [first[T] | end[T]] (the sequence's first row and one past its last).
extern "C" __global__ void attn_bwd_dq(float* dq, float* Dbuf, const float* dout, const float* q, const float* k,
                                       const float* v, const float* out, const float* lse, const int* meta, int nh,
                                       int nkv, int dh, float scale) {
	int i = blockIdx.x, h = blockIdx.y;
	int kvh = h / (nh / nkv);
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	int t0 = meta[i];
	if (t0 < 0) return;
	i64 row = ((i64)i * nh + h) * dh;
	float qv[ATT_MAXD], dov[ATT_MAXD], acc[ATT_MAXD];
	float D = 0;
	for (int j = 0; j < ATT_MAXD; j++) {
		int d = lane + 32 * j;
		qv[j] = d < dh ? q[row + d] : 0.0f;
		dov[j] = d < dh ? dout[row + d] : 0.0f;
		D += d < dh ? dov[j] * out[row + d] : 0.0f;
		acc[j] = 0.0f;
	}
	D = warp_sum(D);
	float L = lse[(i64)i * nh + h];
	for (int p = w; p < i - t0 + 1; p += ATT_WARPS) {
		i64 base = (i64)(t0 + p) * nkv * dh + (i64)kvh * dh;
		float s = 0, dp = 0;
		for (int j = 0; j < ATT_MAXD; j++) {
			int d = lane + 32 * j;
			if (d < dh) {
				s += qv[j] * k[base + d];
				dp += dov[j] * v[base + d];
			}
		}
		s = warp_sum(s);
		dp = warp_sum(dp);
		float pr = expf(s * scale - L);
		float ds = pr * (dp - D) * scale;
		for (int j = 0; j < ATT_MAXD; j++) {
			int d = lane + 32 * j;
			if (d < dh) acc[j] += ds * k[base + d];
		}
	}
	__shared__ float sacc[ATT_WARPS][32 * ATT_MAXD];
	for (int j = 0; j < ATT_MAXD; j++) {
		int d = lane + 32 * j;
		if (d < dh) sacc[w][d] = acc[j];
	}
	__syncthreads();
	for (int d = threadIdx.x; d < dh; d += blockDim.x) {
		float o = 0;
		for (int x = 0; x < ATT_WARPS; x++) o += sacc[x][d];
		dq[row + d] = o;
	}
	if (threadIdx.x == 0) Dbuf[(i64)i * nh + h] = D;
}

// Backward, part 2: dk, dv of key row j, head kvh, summed over the query heads of its group and
// the rows i >= j of its sequence: dv_j = Σ p·dout_i, dk_j = Σ ds·q_i. Grid (T, KV).
extern "C" __global__ void attn_bwd_dkv(float* dk, float* dv, const float* dout, const float* q, const float* k,
                                        const float* v, const float* lse, const float* Dbuf, const int* meta, int T,
                                        int nh, int nkv, int dh, float scale) {
	int j = blockIdx.x, kvh = blockIdx.y;
	int group = nh / nkv;
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	if (meta[j] < 0) return;
	int end = meta[T + j];
	i64 krow = (i64)j * nkv * dh + (i64)kvh * dh;
	float kv_[ATT_MAXD], vv[ATT_MAXD], dka[ATT_MAXD], dva[ATT_MAXD];
	for (int x = 0; x < ATT_MAXD; x++) {
		int d = lane + 32 * x;
		kv_[x] = d < dh ? k[krow + d] : 0.0f;
		vv[x] = d < dh ? v[krow + d] : 0.0f;
		dka[x] = 0.0f;
		dva[x] = 0.0f;
	}
	for (int h = kvh * group; h < (kvh + 1) * group; h++) {
		for (int i = j + w; i < end; i += ATT_WARPS) {
			i64 row = ((i64)i * nh + h) * dh;
			float s = 0, dp = 0;
			for (int x = 0; x < ATT_MAXD; x++) {
				int d = lane + 32 * x;
				if (d < dh) {
					s += q[row + d] * kv_[x];
					dp += dout[row + d] * vv[x];
				}
			}
			s = warp_sum(s);
			dp = warp_sum(dp);
			float pr = expf(s * scale - lse[(i64)i * nh + h]);
			float ds = pr * (dp - Dbuf[(i64)i * nh + h]) * scale;
			for (int x = 0; x < ATT_MAXD; x++) {
				int d = lane + 32 * x;
				if (d < dh) {
					dva[x] += pr * dout[row + d];
					dka[x] += ds * q[row + d];
				}
			}
		}
	}
	__shared__ float sk[ATT_WARPS][32 * ATT_MAXD], sv[ATT_WARPS][32 * ATT_MAXD];
	for (int x = 0; x < ATT_MAXD; x++) {
		int d = lane + 32 * x;
		if (d < dh) {
			sk[w][d] = dka[x];
			sv[w][d] = dva[x];
		}
	}
	__syncthreads();
	for (int d = threadIdx.x; d < dh; d += blockDim.x) {
		float a = 0, b = 0;
		for (int x = 0; x < ATT_WARPS; x++) {
			a += sk[x][d];
			b += sv[x][d];
		}
		dk[krow + d] = a;
		dv[krow + d] = b;
	}
}

// Grouped-query attention over the paged cache: one block per (token, key/value head) computes
// all G = H/KV query heads of the group, so each key and value is read once per group instead
// of once per query head. G <= GQ_MAXG, head_dim <= 32*GQ_MAXD. Grid (T, KV), block
// GQ_WARPS*32; metadata as attn_paged.
#define GQ_WARPS 8
#define GQ_MAXG 8
#define GQ_MAXD 4
// gqa_paged is attn_paged_gqa's body; outb, where not null, receives bf16(out) (its
// f32_to_bf16 rounding: attn_paged_gqa_bf16 in fold_bf16.cu, Options.FoldBF16).
__device__ __forceinline__ void gqa_paged(float* out, bf16* outb, const float* q, const float* kc, const float* vc,
                                          const int* meta, int nh, int nkv, int dh, int bs, float scale) {
	__shared__ float sm[GQ_WARPS][GQ_MAXG], sl[GQ_WARPS][GQ_MAXG];
	__shared__ float sacc[GQ_WARPS][GQ_MAXG][32 * GQ_MAXD];
	int t = blockIdx.x, kvh = blockIdx.y;
	int G = nh / nkv;
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	const int* table = meta + meta[2 * t];
	int n = meta[2 * t + 1] + 1;
	float qv[GQ_MAXG][GQ_MAXD], acc[GQ_MAXG][GQ_MAXD], m[GQ_MAXG], l[GQ_MAXG];
	for (int g = 0; g < GQ_MAXG; g++) {
		for (int j = 0; j < GQ_MAXD; j++) {
			int d = lane + 32 * j;
			qv[g][j] = (g < G && d < dh) ? q[((i64)t * nh + kvh * G + g) * dh + d] : 0.0f;
			acc[g][j] = 0.0f;
		}
		m[g] = -INFINITY;
		l[g] = 0.0f;
	}
	for (int p = w; p < n; p += GQ_WARPS) {
		i64 base = (((i64)table[p / bs] * nkv + kvh) * bs + p % bs) * dh;
		float kk[GQ_MAXD], vv[GQ_MAXD];
		for (int j = 0; j < GQ_MAXD; j++) {
			int d = lane + 32 * j;
			kk[j] = d < dh ? kc[base + d] : 0.0f;
			vv[j] = d < dh ? vc[base + d] : 0.0f;
		}
		for (int g = 0; g < GQ_MAXG; g++) {
			if (g >= G) break;
			float s = 0.0f;
			for (int j = 0; j < GQ_MAXD; j++) s += qv[g][j] * kk[j];
			s = warp_sum(s) * scale;
			float mn = fmaxf(m[g], s);
			float corr = expf(m[g] - mn);
			float e = expf(s - mn);
			l[g] = l[g] * corr + e;
			for (int j = 0; j < GQ_MAXD; j++) acc[g][j] = acc[g][j] * corr + e * vv[j];
			m[g] = mn;
		}
	}
	for (int g = 0; g < GQ_MAXG; g++) {
		if (g >= G) break;
		if (lane == 0) {
			sm[w][g] = m[g];
			sl[w][g] = l[g];
		}
		for (int j = 0; j < GQ_MAXD; j++) {
			int d = lane + 32 * j;
			if (d < dh) sacc[w][g][d] = acc[g][j];
		}
	}
	__syncthreads();
	for (int i = threadIdx.x; i < G * dh; i += blockDim.x) {
		int g = i / dh, d = i % dh;
		float M = sm[0][g];
		for (int x = 1; x < GQ_WARPS; x++) M = fmaxf(M, sm[x][g]);
		float L = 0, o = 0;
		for (int x = 0; x < GQ_WARPS; x++) {
			float f = sl[x][g] == 0.0f ? 0.0f : expf(sm[x][g] - M);
			L += sl[x][g] * f;
			o += sacc[x][g][d] * f;
		}
		i64 at = ((i64)t * nh + kvh * G + g) * dh + d;
		float v = o / L;
		out[at] = v;
		if (outb) outb[at] = f32_to_bf16(v);
	}
}

extern "C" __global__ void attn_paged_gqa(float* out, const float* q, const float* kc, const float* vc,
                                          const int* meta, int nh, int nkv, int dh, int bs, float scale) {
	gqa_paged(out, 0, q, kc, vc, meta, nh, nkv, dh, bs, scale);
}

// ---- Training attention on matmuls (long sequences): for one sequence and one key/value
// head, the G query heads' scores S [G, L, L] come from a batched GEMM (already scaled), these
// kernels turn them into probabilities and back, and batched GEMMs do the rest. Row b of head
// i keeps keys 0..b (causal). Grid (L, G), block 256. lse and D are [T, H] at rows t0.., heads
// h0...

// S -> P = softmax over keys 0..b (0 beyond), lse = log-sum-exp of the kept scores.
extern "C" __global__ void attn_softmax_causal(float* S, float* lse, int L, int t0, int nh, int h0) {
	__shared__ float shf[32];
	__shared__ double shd[32];
	int b = blockIdx.x, i = blockIdx.y;
	float* row = S + ((i64)i * L + b) * L;
	float mx = -INFINITY;
	for (int a = threadIdx.x; a <= b; a += blockDim.x) mx = fmaxf(mx, row[a]);
	mx = block_max(mx, shf);
	double s = 0;
	for (int a = threadIdx.x; a <= b; a += blockDim.x) s += (double)expf(row[a] - mx);
	s = block_sum_d(s, shd);
	float inv = (float)(1.0 / s);
	for (int a = threadIdx.x; a < L; a += blockDim.x) row[a] = a <= b ? expf(row[a] - mx) * inv : 0.0f;
	if (threadIdx.x == 0) lse[(i64)(t0 + b) * nh + h0 + i] = mx + (float)log(s);
}

// S -> P = exp(S - lse) over keys 0..b, 0 beyond (the backward's recomputation).
extern "C" __global__ void attn_probs(float* S, const float* lse, int L, int t0, int nh, int h0) {
	int b = blockIdx.x, i = blockIdx.y;
	float* row = S + ((i64)i * L + b) * L;
	float l = lse[(i64)(t0 + b) * nh + h0 + i];
	for (int a = threadIdx.x; a < L; a += blockDim.x) row[a] = a <= b ? expf(row[a] - l) : 0.0f;
}

// dP -> dS = P ⊙ (dP - D_b) · scale over keys 0..b, 0 beyond.
extern "C" __global__ void attn_dsoftmax(float* dP, const float* P, const float* D, float scale, int L, int t0,
                                         int nh, int h0) {
	int b = blockIdx.x, i = blockIdx.y;
	i64 off = ((i64)i * L + b) * L;
	float d = D[(i64)(t0 + b) * nh + h0 + i];
	for (int a = threadIdx.x; a < L; a += blockDim.x) dP[off + a] = a <= b ? P[off + a] * (dP[off + a] - d) * scale : 0.0f;
}

// D[t, h] = dout[t, h, :] · out[t, h, :]. One warp per (t, h); grid (ceil(T*H/8)), block 256.
extern "C" __global__ void attn_rowdot(float* D, const float* dout, const float* out, int rows, int dh) {
	int r = blockIdx.x * 8 + (threadIdx.x >> 5);
	if (r >= rows) return;
	int lane = threadIdx.x & 31;
	float s = 0;
	for (int d = lane; d < dh; d += 32) s += dout[(i64)r * dh + d] * out[(i64)r * dh + d];
	s = warp_sum(s);
	if (lane == 0) D[r] = s;
}

// Stacks the G heads h0..h0+G-1 of rows t0..t0+L-1 of x [T, width] into dst [G, L, Dh]
// (contiguous), so that sums over a group's heads become one matmul. One thread per value.
extern "C" __global__ void stack_heads(float* dst, const float* x, int L, int G, int dh, int width, int t0, int h0) {
	i64 n = (i64)G * L * dh;
	for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
		int g = (int)(i / ((i64)L * dh));
		int r = (int)(i / dh % L);
		int d = (int)(i % dh);
		dst[i] = x[(i64)(t0 + r) * width + (i64)(h0 + g) * dh + d];
	}
}
