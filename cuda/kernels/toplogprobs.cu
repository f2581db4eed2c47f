// Top log-probs (engine.TopLogProbsRow) on the device: for each listed row of logits, the k most
// likely tokens of its sampling distribution (temperature, then top-k and top-p as sample_topkp
// keeps them; a greedy row: the plain softmax) and their log-probs, so that k ids and k
// log-probs come back to the host instead of the row. The host ranks by probability
// exp(x·inv - m) in double, ties to the lower id; on the device tokens rank by logit (the same
// order: exp is monotone), except that tokens of equal probability share a key (ProbKey): every
// token whose probability underflows to 0 gets key 0, and distinct logits of the same positive
// probability (+0 and -0, logits absorbed by the maximum, subnormal probabilities) the smallest
// key among them, so those tie and go by id there too. cuda/toplogprobs_emu_test.go emulates
// the kernel in Go against the host's ranking.

#define TOP_MAX 32 // largest k (engine.MaxTopLogProbs is 20)

// key_float is order_key's inverse.
__device__ __forceinline__ float key_float(u32 k) {
	return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// pk_inv and pk_m: the row's inv and m, for ProbKey's rare path (prob_class), in shared memory
// so that the key's common path holds integers only.
__shared__ double pk_inv, pk_m;

// prob_class returns the smallest key of the probability class of key k >= low (the floats of
// the same p = exp(x·inv - m); p is non-decreasing in the key): k unless the next float below
// has k's p; then a binary search over [low, k). One call of exp in all (registers).
__device__ u32 prob_class(u32 k, u32 low) {
	if (k == low) return k;
	double inv = pk_inv, m = pk_m, p = 0;
	u32 lo = low, hi = k, mid = k;
	for (int step = 0;; step++) {
		double e = exp(tempered(key_float(mid), inv, m));
		if (step == 0) {
			p = e, mid = k - 1; // first the next float below
			continue;
		}
		if (e == p) hi = mid;
		else if (step == 1) return k;
		else lo = mid + 1;
		if (lo >= hi) return lo;
		mid = lo + (hi - lo) / 2;
	}
}

// ProbKey ranks by probability p = exp(x·inv - m) as the host does: tokens of equal p tie.
// Below low (the smallest key of a token with a positive probability: exactly the tokens whose
// probability underflows to 0 lie below it), 0. Above, the smallest key of the token's
// probability class (prob_class). Distinct floats share a p only where p is subnormal
// (x·inv - m < -708, where exp has few bits: keys below sub) or where x·inv - m rounds the
// step from the next float below to less than 2^-49 (+0 and -0, subnormal logits, logits
// absorbed by the maximum: |x·inv| below about 2^-25 + 2^-28·|m|; ProbKey takes keys strictly
// between z0 and z1, |x| < t with t·inv = 2^-19·(1 + |m|), 2^5 times that and more). Elsewhere
// a key is its own class and costs no arithmetic (toplogprobs_emu_test.go checks the bounds).
struct ProbKey {
	u32 low, sub, z0, z1;
	__device__ __forceinline__ u32 operator()(float x) const {
		u32 k = order_key(x);
		if (k < low) return 0u;
		if (k >= sub && (k <= z0 || k >= z1)) return k;
		return prob_class(k, low);
	}
};

// Grid (B), block 1024 (SAMPLE_THREADS). Row b is logits row rows[b] with temperature temps[b]
// (<= 0: greedy), top-k topks[b] (0: off) and top-p topps[b] (0 or 1: off); 1 <= k <= min(V,
// TOP_MAX). Writes ids[b·k + j] and lps[b·k + j], j = 0..k-1, most likely first; a token that
// top-k or top-p leaves out has -Inf.
extern "C" __global__ void top_logprobs(int* ids, float* lps, const float* logits, const int* rows, const float* temps,
                                        const int* topks, const float* topps, int k, int V) {
	__shared__ double shd[32];
	__shared__ float shv[32];
	__shared__ double pre[SAMPLE_THREADS];
	__shared__ int tiePre[SAMPLE_THREADS];
	__shared__ u32 low;
	__shared__ int nCand;
	__shared__ u32 candKey[TOP_MAX];
	__shared__ int candID[TOP_MAX];
	int b = blockIdx.x, tid = threadIdx.x;
	const float* x = logits + (i64)rows[b] * V;
	float temp = temps[b];
	bool greedy = temp <= 0.0f;
	double inv = greedy ? 1.0 : 1.0 / (double)temp;
	int K = greedy ? 0 : topks[b];
	float P = greedy ? 0.0f : topps[b];
	float mx = -INFINITY;
	for (int i = tid; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
	mx = block_max(mx, shv);
	double m = (double)mx * inv;

	// low: the smallest key whose probability is positive (the maximum's is 1).
	if (tid == 0) low = 0xffffffffu, nCand = 0;
	__syncthreads();
	u32 mine = 0xffffffffu;
	for (int i = tid; i < V; i += blockDim.x)
		if (exp(tempered(x[i], inv, m)) > 0.0) mine = min(mine, order_key(x[i]));
	atomicMin(&low, mine);
	__syncthreads();
	// ProbKey's bounds: sub, the smallest key of a normal probability (x·inv - m >= -708, by
	// binary search over [low, key(max)]); z0 and z1, the keys of -t and t.
	__shared__ u32 sub, z0, z1;
	if (tid == 0) {
		pk_inv = inv, pk_m = m;
		u32 lo = low, hi = order_key(mx);
		while (lo < hi) {
			u32 mid = lo + (hi - lo) / 2;
			if (tempered(key_float(mid), inv, m) >= -708.0) hi = mid;
			else lo = mid + 1;
		}
		sub = lo;
		float t = fmaxf((float)(0x1p-19 * (1.0 + fabs(m)) / inv), 0x1p-125f);
		z0 = order_key(-t), z1 = order_key(t);
	}
	__syncthreads();
	ProbKey key = {low, sub, z0, z1};

	u32 T;
	int tieCut;
	kept_set(x, V, inv, m, K, P, key, shd, &T, &tieCut);
	auto kept = [=](int i, float xi) {
		u32 q = key(xi);
		return q > T || (q == T && i <= tieCut);
	};
	double own; // this thread's chunk sum (unused)
	int w0, w1;
	double lz = log(chunk_sums(x, 0, V, inv, m, kept, pre, &own, &w0, &w1)); // the sampler's sum (sample_walk)

	// The k best: every key above Tk (fewer than k), then the lowest ids of key Tk.
	u32 Tk;
	MAX_KEY_WHERE(Tk, count_ge(x, V, mid, shd, key) >= k);
	for (int i = tid; i < V; i += blockDim.x) {
		u32 q = key(x[i]);
		if (q > Tk) {
			int at = atomicAdd(&nCand, 1);
			candKey[at] = q, candID[at] = i;
		}
	}
	__syncthreads();
	int above = nCand;
	int chunk = (V + blockDim.x - 1) / blockDim.x;
	int c0 = min(V, tid * chunk), c1 = min(V, c0 + chunk);
	int n = 0;
	for (int i = c0; i < c1; i++) n += key(x[i]) == Tk;
	tiePre[tid] = n;
	__syncthreads();
	if (tid == 0) {
		int acc = 0;
		for (int i = 0; i < (int)blockDim.x; i++) {
			int v = tiePre[i];
			tiePre[i] = acc;
			acc += v;
		}
	}
	__syncthreads();
	for (int i = c0, at = above + tiePre[tid]; i < c1 && at < k; i++) {
		if (key(x[i]) == Tk) {
			candKey[at] = Tk, candID[at] = i;
			at++;
		}
	}
	__syncthreads();
	// Rank each candidate among the k: probability descending, then id ascending.
	if (tid < k) {
		u32 q = candKey[tid];
		int id = candID[tid], r = 0;
		for (int j = 0; j < k; j++) r += candKey[j] > q || (candKey[j] == q && candID[j] < id);
		ids[(i64)b * k + r] = id;
		lps[(i64)b * k + r] = kept(id, x[id]) ? (float)__dsub_rn(tempered(x[id], inv, m), lz) : -INFINITY;
	}
}
