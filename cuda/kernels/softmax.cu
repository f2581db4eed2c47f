// Log-softmax, per-token log-prob and entropy, their backward, and sampling. One block per row
// of logits [R, V]; the row's max in fp32 and its sums of exponentials in double, as the CPU
// reference computes them (engine/sample.go).

// row_stats: m = max(x)·inv, s = Σ exp(x·inv - m), sz = Σ exp(·)·(x·inv - m), to every thread.
__device__ void row_stats(const float* x, int V, double inv, double* m, double* s, double* sz) {
	__shared__ float shf[32];
	__shared__ double shd[32];
	float mx = -INFINITY;
	for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
	mx = block_max(mx, shf);
	double mm = (double)mx * inv;
	double a = 0, b = 0;
	for (int i = threadIdx.x; i < V; i += blockDim.x) {
		double z = (double)x[i] * inv - mm;
		double e = exp(z);
		a += e;
		b += e * z;
	}
	*m = mm;
	*s = block_sum_d(a, shd);
	*sz = block_sum_d(b, shd);
}

// lp[r] = log softmax(logits[r]/temp)[targets[r]], ent[r] = its entropy. Grid (R), block 256.
extern "C" __global__ void logprobs(float* lp, float* ent, const float* logits, const int* targets, int V,
                                    float temp) {
	const float* x = logits + (i64)blockIdx.x * V;
	double inv = 1.0 / (double)temp, m, s, sz;
	row_stats(x, V, inv, &m, &s, &sz);
	if (threadIdx.x == 0) {
		double lse = log(s);
		lp[blockIdx.x] = (float)((double)x[targets[blockIdx.x]] * inv - m - lse);
		ent[blockIdx.x] = (float)(lse - sz / s);
	}
}

// Gradient of Σ_r dlogp[r]·logp_r + dent[r]·H_r into dlogits [R, V] (may alias logits). With
// z = logits/τ, p = softmax(z): ∂logp_t/∂z = onehot_t - p, ∂H/∂z_i = -p_i·(log p_i + H).
// dent may be null. Grid (R), block 256.
extern "C" __global__ void logprobs_bwd(float* dlogits, const float* logits, const int* targets, const float* dlogp,
                                        const float* dent, int V, float temp) {
	__shared__ float shf[32];
	__shared__ double shd[32];
	int r = blockIdx.x;
	const float* x = logits + (i64)r * V;
	float* out = dlogits + (i64)r * V;
	double inv = 1.0 / (double)temp;
	float mx = -INFINITY;
	for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
	mx = block_max(mx, shf);
	double a = 0, b = 0;
	for (int i = threadIdx.x; i < V; i += blockDim.x) {
		float sv = (float)((double)(x[i] - mx) * inv);
		double e = (double)expf(sv);
		a += e;
		b += (double)sv * e;
	}
	double sum = block_sum_d(a, shd);
	double ses = block_sum_d(b, shd);
	double lse = log(sum), h = lse - ses / sum;
	double gl = dlogp[r], ge = dent ? (double)dent[r] : 0.0;
	for (int i = threadIdx.x; i < V; i += blockDim.x) {
		float sv = (float)((double)(x[i] - mx) * inv);
		double lpi = (double)sv - lse;
		double p = (double)expf((float)lpi);
		out[i] = (float)((-gl * p - ge * p * (lpi + h)) * inv);
	}
	__syncthreads();
	if (threadIdx.x == 0) out[targets[r]] += (float)(gl * inv);
}

// Draws one token from each listed row. rows[b] is the logits row; temps[b] <= 0 means greedy
// (argmax, lowest id on ties, log-prob under the plain softmax); otherwise the token is drawn
// by inverse CDF at us[b] over exp(x/τ - max) walked in increasing id order, as
// engine.SampleLogits does without top-k/top-p. Grid (B), block 1024 (SAMPLE_THREADS).
#define SAMPLE_THREADS 1024
extern "C" __global__ void sample_rows(int* ids, float* lps, const float* logits, const int* rows,
                                       const float* temps, const double* us, int V) {
	__shared__ double pre[SAMPLE_THREADS];
	__shared__ float shv[32];
	__shared__ int shi[32];
	__shared__ int pick;
	__shared__ double total;
	int b = blockIdx.x, tid = threadIdx.x;
	const float* x = logits + (i64)rows[b] * V;
	float temp = temps[b];
	if (temp <= 0.0f) {
		float best = -INFINITY;
		int bi = 0x7fffffff;
		for (int i = tid; i < V; i += blockDim.x)
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
			if (bi == 0x7fffffff) bi = 0; // all NaN
			pick = bi;
		}
		__syncthreads();
		double m, s, sz;
		row_stats(x, V, 1.0, &m, &s, &sz);
		if (tid == 0) {
			ids[b] = pick;
			lps[b] = (float)((double)x[pick] - m - log(s));
		}
		return;
	}
	double inv = 1.0 / (double)temp;
	float mx = -INFINITY;
	for (int i = tid; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
	mx = block_max(mx, shv);
	double m = (double)mx * inv;
	int chunk = (V + blockDim.x - 1) / blockDim.x;
	int c0 = min(V, tid * chunk), c1 = min(V, c0 + chunk);
	double s = 0;
	for (int i = c0; i < c1; i++) s += exp((double)x[i] * inv - m);
	pre[tid] = s;
	if (tid == 0) pick = -1;
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
	double z = total;
	double u = us[b] * z;
	double c = pre[tid];
	if (c0 < c1 && c <= u && u < c + s) {
		int p = c1 - 1;
		for (int i = c0; i < c1; i++) {
			c += exp((double)x[i] * inv - m);
			if (u < c) { p = i; break; }
		}
		pick = p;
	}
	__syncthreads();
	if (tid == 0) {
		int p = pick < 0 ? V - 1 : pick;
		ids[b] = p;
		lps[b] = (float)log(exp((double)x[p] * inv - m) / z);
	}
}
