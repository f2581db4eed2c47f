// Sampling with each row split over S blocks (Options.SplitSample), for batches too small to
// fill the GPU: sample_rows gives a row one block, which at batch 1 and a 151,936-token
// vocabulary spends about 134 µs in one SM's double exp. Here part j of a row is ids
// [j·P, min(V, (j+1)·P)), P = ceil(V / S), and three launches draw the token by the same rules
// as sample_rows (engine.SampleLogits without top-k/top-p; greedy rows: argmax, lowest id on
// ties, log-prob under the plain softmax):
//   sample_split_max   grid (B, S): part maxima -> pmax [B·S];
//   sample_split_mass  grid (B, S): m = the row's max · inv from the S part maxima, then each
//                      part's Σ exp(x·inv - m) -> pmass [B·S] (greedy rows: inv = 1, and the
//                      part's argmax -> parg [B·S]);
//   sample_split_pick  grid (B): Z = the parts' sums added in part order; greedy rows take the
//                      first part's argmax among equal maxima, the others walk the part that
//                      holds u·Z as sample_walk walks a row; id and log-prob z - log(Z) out.
// A part's sum is taken in the order the walk takes it (chunk_sums, common.cuh), so that the
// walk's chunks tile the part's sum exactly. Block 256 (SPLIT_THREADS) for all three.

#define SPLIT_THREADS 256

// split_part returns part j's ids [lo, hi) of a row of V split in S parts.
__device__ __forceinline__ void split_part(int V, int S, int j, int* lo, int* hi) {
	int P = (V + S - 1) / S;
	*lo = min(V, j * P);
	*hi = min(V, *lo + P);
}

// split_row_max gives row b's inv (1 for a greedy row) and m = its maximum · inv, the maximum
// from the row's S part maxima.
__device__ __forceinline__ void split_row_max(const float* pmax, int b, int S, float temp, double* inv, double* m) {
	float mx = -INFINITY;
	for (int p = 0; p < S; p++) mx = fmaxf(mx, pmax[b * S + p]);
	*inv = temp <= 0.0f ? 1.0 : 1.0 / (double)temp;
	*m = (double)mx * *inv;
}

extern "C" __global__ void sample_split_max(float* pmax, const float* logits, const int* rows, int V, int S) {
	__shared__ float shv[32];
	int b = blockIdx.x, j = blockIdx.y, lo, hi;
	split_part(V, S, j, &lo, &hi);
	const float* x = logits + (i64)rows[b] * V;
	float mx = -INFINITY;
	for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) mx = fmaxf(mx, x[i]);
	mx = block_max(mx, shv);
	if (threadIdx.x == 0) pmax[b * S + j] = mx;
}

extern "C" __global__ void sample_split_mass(double* pmass, int* parg, const float* pmax, const float* logits,
                                             const int* rows, const float* temps, int V, int S) {
	__shared__ double pre[SPLIT_THREADS];
	__shared__ float shv[32];
	__shared__ int shi[32];
	int b = blockIdx.x, j = blockIdx.y, tid = threadIdx.x, lo, hi;
	split_part(V, S, j, &lo, &hi);
	const float* x = logits + (i64)rows[b] * V;
	float temp = temps[b];
	double inv, m;
	split_row_max(pmax, b, S, temp, &inv, &m);
	double mine, s;
	int c0, c1;
	s = chunk_sums(x, lo, hi, inv, m, [](int, float) { return true; }, pre, &mine, &c0, &c1);
	if (tid == 0) pmass[b * S + j] = s;
	if (temp > 0.0f) return;
	// Greedy: the part's argmax, lowest id on ties (0x7fffffff: all NaN or -Inf).
	int bi = block_argmax(x, lo, hi, shv, shi);
	if (tid == 0) parg[b * S + j] = bi;
}

extern "C" __global__ void sample_split_pick(int* ids, float* lps, const double* pmass, const int* parg, const float* pmax,
                                             const float* logits, const int* rows, const float* temps, const double* us,
                                             int V, int S) {
	__shared__ double pre[SPLIT_THREADS];
	__shared__ int pick;
	int b = blockIdx.x, tid = threadIdx.x;
	const float* x = logits + (i64)rows[b] * V;
	float temp = temps[b];
	double inv, m;
	split_row_max(pmax, b, S, temp, &inv, &m);
	double z = 0;
	for (int p = 0; p < S; p++) z += pmass[b * S + p];
	if (temp <= 0.0f) {
		if (tid == 0) {
			int bi = 0x7fffffff;
			float best = -INFINITY;
			for (int p = 0; p < S; p++) {
				int a = parg[b * S + p];
				if (a != 0x7fffffff && (bi == 0x7fffffff || x[a] > best)) { best = x[a]; bi = a; }
			}
			if (bi == 0x7fffffff) bi = 0; // all NaN
			ids[b] = bi;
			lps[b] = (float)__dsub_rn(tempered(x[bi], 1.0, m), log(z));
		}
		return;
	}
	// The part that holds u·Z (every thread finds the same one).
	double u = us[b] * z, c = 0;
	int part = -1;
	for (int p = 0; p < S; p++) {
		double s = pmass[b * S + p];
		if (s > 0 && u < c + s) { part = p; break; }
		c += s;
	}
	if (part < 0) { // u at the very top (rounding): the last id
		if (tid == 0) {
			ids[b] = V - 1;
			lps[b] = (float)__dsub_rn(tempered(x[V - 1], inv, m), log(z));
		}
		return;
	}
	// Walk part "part" at ul = u·Z - (the parts before), in the part's own sums (chunk_sums: the
	// chunks tile the part's range, so at most one thread matches).
	int lo, hi, c0, c1;
	double cs;
	split_part(V, S, part, &lo, &hi);
	if (tid == 0) pick = hi - 1; // rounding left ul at the part's end (chunk_sums synchronises)
	chunk_sums(x, lo, hi, inv, m, [](int, float) { return true; }, pre, &cs, &c0, &c1);
	double ul = u - c;
	if (c0 < c1 && cs > 0 && pre[tid] <= ul && ul < pre[tid] + cs) {
		double acc = pre[tid];
		int p = c1 - 1;
		for (int i = c0; i < c1; i++) {
			acc += exp(tempered(x[i], inv, m));
			if (ul < acc) { p = i; break; }
		}
		pick = p;
	}
	__syncthreads();
	if (tid == 0) {
		int p = pick;
		ids[b] = p;
		lps[b] = (float)__dsub_rn(tempered(x[p], inv, m), log(z));
	}
}
