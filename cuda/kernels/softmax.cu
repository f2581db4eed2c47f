// Log-softmax, per-token log-prob and entropy, their backward, and sampling. One block per row
// of logits [R, V]; the row's max in fp32 and its sums of exponentials in double, as the CPU
// reference computes them (engine/sample.go): z = tempered(x, inv, m) (no fused multiply-add),
// exp(z), and a token's log-prob z - log(mass), the formula of LogProbEntropy and of the
// sampler (engine.logProb).

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
		double z = tempered(x[i], inv, mm);
		double e = exp(z);
		a += e;
		b = __dadd_rn(b, __dmul_rn(e, z));
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
		lp[blockIdx.x] = (float)__dsub_rn(tempered(x[targets[blockIdx.x]], inv, m), lse);
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

#define SAMPLE_THREADS 1024

// sample_walk draws one id among those keep(i, x[i]) admits, by inverse CDF at u·Z over
// exp(x_i·inv - m) walked in increasing id order (Z: the kept ids' sum, chunk_sums); every
// thread of the block calls it. The thread whose chunk holds u·Z walks it. When rounding leaves
// u·Z at or past the end, the last kept id. Thread 0 writes the id to *id and its log-prob,
// z_id - log(Z) with z_id = x_id·inv - m (the CPU's formula, engine.logProb), to *lp.
// sample_rows keeps every id, sample_topkp those top-k / top-p kept.
template <typename Keep>
__device__ void sample_walk(const float* x, int V, double inv, double m, double u01, Keep keep, int* id, float* lp) {
	__shared__ double pre[SAMPLE_THREADS];
	__shared__ int pick;
	int tid = threadIdx.x;
	if (tid == 0) pick = -1; // chunk_sums synchronises the block before anyone reads it
	double s;
	int c0, c1;
	double z = chunk_sums(x, 0, V, inv, m, keep, pre, &s, &c0, &c1);
	double u = u01 * z;
	double c = pre[tid];
	if (c0 < c1 && s > 0 && c <= u && u < c + s) {
		int p = -1;
		for (int i = c0; i < c1; i++) {
			if (!keep(i, x[i])) continue;
			p = i;
			c += exp(tempered(x[i], inv, m));
			if (u < c) break;
		}
		pick = p;
	}
	__syncthreads();
	if (tid == 0) {
		int p = pick;
		if (p < 0) { // u at the very top (rounding): the last kept id
			for (int i = V - 1; i >= 0; i--) {
				if (keep(i, x[i])) { p = i; break; }
			}
		}
		*id = p;
		*lp = (float)__dsub_rn(tempered(x[p], inv, m), log(z));
	}
}

// Draws one token from each listed row. rows[b] is the logits row; temps[b] <= 0 means greedy
// (argmax, lowest id on ties, log-prob under the plain softmax); otherwise the token is drawn
// by inverse CDF at us[b] over exp(x/τ - max) walked in increasing id order, as
// engine.SampleLogits does without top-k/top-p. Grid (B), block 1024 (SAMPLE_THREADS).
extern "C" __global__ void sample_rows(int* ids, float* lps, const float* logits, const int* rows,
                                       const float* temps, const double* us, int V) {
	__shared__ float shv[32];
	__shared__ int shi[32];
	__shared__ int pick;
	int b = blockIdx.x, tid = threadIdx.x;
	const float* x = logits + (i64)rows[b] * V;
	float temp = temps[b];
	if (temp <= 0.0f) {
		int bi = block_argmax(x, 0, V, shv, shi);
		if (tid == 0) {
			if (bi == 0x7fffffff) bi = 0; // all NaN
			pick = bi;
		}
		__syncthreads();
		double m, s, sz;
		row_stats(x, V, 1.0, &m, &s, &sz);
		if (tid == 0) {
			ids[b] = pick;
			lps[b] = (float)__dsub_rn(tempered(x[pick], 1.0, m), log(s));
		}
		return;
	}
	double inv = 1.0 / (double)temp;
	float mx = -INFINITY;
	for (int i = tid; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
	mx = block_max(mx, shv);
	double m = (double)mx * inv;
	sample_walk(x, V, inv, m, us[b], [](int, float) { return true; }, ids + b, lps + b);
}

// ---- Top-k / top-p sampling, as engine.SampleLogits: logits / temperature, keep the top-k by
// rank (probability descending, lower id first on ties), then the smallest prefix in rank order
// whose mass reaches top_p of what top-k kept, then draw by inverse CDF over the kept ids in
// increasing id order. Rank by probability is rank by logit (exp is monotone), so the kept set
// is "key > T, or key == T and id <= tieCut" for an order-preserving integer key of the logit;
// T is found by binary search over keys (32 passes), each pass a block reduction. The key is a
// functor: the sampler ranks by the logit's key (LogitKey); top log-probs (toplogprobs.cu) also
// make every token whose probability underflows to 0 tie at key 0, as the host's ranking by
// probability does.

__device__ __forceinline__ u32 order_key(float f) {
	u32 u = __float_as_uint(f);
	return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// LogitKey ranks by the logit alone.
struct LogitKey {
	__device__ __forceinline__ u32 operator()(float x) const { return order_key(x); }
};

// count_ge returns #{i : key(x_i) >= t} to every thread.
template <typename Key>
__device__ int count_ge(const float* x, int V, u32 t, double* sh, Key key) {
	double c = 0;
	for (int i = threadIdx.x; i < V; i += blockDim.x) c += key(x[i]) >= t ? 1.0 : 0.0;
	return (int)block_sum_d(c, sh);
}

// mass_ge returns Σ_{key(x_i) >= t} exp(x_i·inv - m) to every thread (t = 0: all).
template <typename Key>
__device__ double mass_ge(const float* x, int V, u32 t, double inv, double m, double* sh, Key key) {
	double s = 0;
	for (int i = threadIdx.x; i < V; i += blockDim.x)
		if (key(x[i]) >= t) s += exp(tempered(x[i], inv, m));
	return block_sum_d(s, sh);
}

// max_key_where returns the largest key t with pred(t) true, pred non-increasing in t and
// pred(0) true (binary search over all 2^32 keys).
#define MAX_KEY_WHERE(result, pred)                                \
	{                                                              \
		u32 lo_ = 0, hi_ = 0xffffffffu;                            \
		while (lo_ < hi_) {                                        \
			u32 mid = lo_ + (u32)(((unsigned long long)hi_ - lo_ + 1) / 2); \
			if (pred) lo_ = mid;                                   \
			else hi_ = mid - 1;                                    \
		}                                                          \
		result = lo_;                                              \
	}

// tie_scan: thread 0 walks the ids with key == t in increasing order, adding their mass to base
// until it reaches need or n ties are taken; returns (through shared memory) the id of the
// last tie taken. Ties of equal logits are rare: one thread is enough.
template <typename Key>
__device__ int tie_cut(const float* x, int V, u32 t, int n, double base, double need, double inv, double m, Key key) {
	__shared__ int cut;
	if (threadIdx.x == 0) {
		int taken = 0, last = -1;
		double acc = base;
		for (int i = 0; i < V && taken < n; i++) {
			if (key(x[i]) != t) continue;
			last = i;
			taken++;
			acc += exp(tempered(x[i], inv, m));
			if (acc >= need) break;
		}
		cut = last;
	}
	__syncthreads();
	return cut;
}

// kept_set finds the ids top-k K (0: off) and then top-p P (0 or 1: off) keep of a row whose
// tempered maximum is m: key(x_i) > *T, or key(x_i) == *T and i <= *tieCut. Every thread calls
// it and gets the same T and tieCut.
template <typename Key>
__device__ void kept_set(const float* x, int V, double inv, double m, int K, float P, Key key, double* shd, u32* outT,
                         int* outCut) {
	// Top-k: T = largest key with at least K keys >= it; the first K - #(key > T) ties.
	u32 T = 0;
	int tieCut = V; // ids of key == T up to tieCut are kept
	bool topk = K > 0 && K < V;
	if (topk) {
		MAX_KEY_WHERE(T, count_ge(x, V, mid, shd, key) >= K);
		int above = T == 0xffffffffu ? 0 : count_ge(x, V, T + 1, shd, key);
		int ties = count_ge(x, V, T, shd, key) - above;
		if (above + ties > K) tieCut = tie_cut(x, V, T, K - above, 0.0, INFINITY, inv, m, key);
	}
	// Top-p over what top-k kept: need = p · mass(kept).
	if (P > 0.0f && P < 1.0f) {
		double keptMass;
		if (topk) {
			keptMass = T == 0xffffffffu ? 0.0 : mass_ge(x, V, T + 1, inv, m, shd, key);
			double s = 0;
			for (int i = threadIdx.x; i < V; i += blockDim.x)
				if (key(x[i]) == T && i <= tieCut) s += exp(tempered(x[i], inv, m));
			keptMass += block_sum_d(s, shd);
		} else {
			keptMass = mass_ge(x, V, 0, inv, m, shd, key);
		}
		double need = (double)P * keptMass;
		u32 Tp;
		MAX_KEY_WHERE(Tp, mass_ge(x, V, mid, inv, m, shd, key) >= need);
		// The nucleus is a prefix in rank order: when it ends above the top-k boundary it is
		// what it is; at the boundary it takes ties only up to what top-k kept; below, the
		// mass is not reached (rounding) and top-k's set stays.
		if (!topk || Tp > T) {
			double above = Tp == 0xffffffffu ? 0.0 : mass_ge(x, V, Tp + 1, inv, m, shd, key);
			int na = Tp == 0xffffffffu ? 0 : count_ge(x, V, Tp + 1, shd, key);
			int ties = count_ge(x, V, Tp, shd, key) - na;
			int cut = ties > 1 ? tie_cut(x, V, Tp, ties, above, need, inv, m, key) : V;
			if (mass_ge(x, V, Tp, inv, m, shd, key) >= need || !topk) {
				T = Tp;
				tieCut = cut;
			}
		} else if (Tp == T) {
			double above = T == 0xffffffffu ? 0.0 : mass_ge(x, V, T + 1, inv, m, shd, key);
			int na = T == 0xffffffffu ? 0 : count_ge(x, V, T + 1, shd, key);
			int ties = count_ge(x, V, T, shd, key) - na;
			int allowed = ties;
			if (tieCut < V) { // top-k kept only some ties: count them
				double c = 0;
				for (int i = threadIdx.x; i < V; i += blockDim.x) c += (key(x[i]) == T && i <= tieCut) ? 1.0 : 0.0;
				allowed = (int)block_sum_d(c, shd);
			}
			if (ties > 1 || allowed < ties) tieCut = tie_cut(x, V, T, allowed, above, need, inv, m, key);
		}
	}
	*outT = T;
	*outCut = tieCut;
}

// Grid (B), block 1024. Rows as sample_rows, each with its top-k (0: off) and top-p (0 or 1: off).
extern "C" __global__ void sample_topkp(int* ids, float* lps, const float* logits, const int* rows,
                                        const float* temps, const int* topks, const float* topps,
                                        const double* us, int V) {
	__shared__ double shd[32];
	__shared__ float shv[32];
	int b = blockIdx.x, tid = threadIdx.x;
	const float* x = logits + (i64)rows[b] * V;
	double inv = 1.0 / (double)temps[b];
	float mx = -INFINITY;
	for (int i = tid; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
	mx = block_max(mx, shv);
	double m = (double)mx * inv;
	u32 T;
	int tieCut;
	kept_set(x, V, inv, m, topks[b], topps[b], LogitKey(), shd, &T, &tieCut);
	// Inverse CDF over the kept ids in increasing id order.
	sample_walk(x, V, inv, m, us[b], [=](int i, float xi) {
		u32 k = order_key(xi);
		return k > T || (k == T && i <= tieCut);
	}, ids + b, lps + b);
}
