// Multi-tensor AdamW: the update of adamw (elementwise.cu) over many tensors in one launch, as
// PyTorch's multi_tensor_apply and apex's fused Adam do, writing the bf16 copy of each updated
// weight that keeps one (so the next forward converts nothing).

// ADAMW_CHUNK is how many elements of one tensor a block updates at a time; a tensor of n
// elements is ceil(n / ADAMW_CHUNK) chunks, numbered from its descriptor's chunk0 on.
#define ADAMW_CHUNK 16384

// AdamWTensor describes one tensor of adamw_many: the parameter p, its gradient g and moments m,
// v (fp32, n elements each), bf the parameter's bf16 copy or null, chunk0 the number of the
// tensor's first chunk (the chunks of the tensors before it), adamw's folded constants, and
// gscale, the gradient's scale (gradient clipping; 1: none), applied as the scale kernel applies
// it before adamw, and zero: 1 to leave the gradient zeros (the optimizer's ZeroGrad). 96 bytes;
// cuda/adamw_many.go mirrors the layout (adamWTensor).
struct AdamWTensor {
	float* p;
	float* g;
	float* m;
	float* v;
	bf16* bf;
	i64 n;
	i64 chunk0;
	float decay, b1, b2, c1, c2, step, isb2, eps;
	float gscale;
	int zero;
};
static_assert(sizeof(AdamWTensor) == 96, "AdamWTensor must match cuda/adamw_many.go's adamWTensor");

// adamw_many updates nt tensors (descriptors ts, ascending chunk0, none empty) of chunks chunks
// in all. Blocks take chunks in a grid-stride loop; a block finds its chunk's tensor by binary
// search over chunk0. Each element is updated by adamw's expression, in adamw's order, so the
// fp32 results are scale's then adamw's bit for bit; where bf is set, bf[i] = f32_to_bf16(p[i]) as
// f32_to_bf16_kernel writes it. Block 256.
extern "C" __global__ void adamw_many(const AdamWTensor* ts, int nt, i64 chunks) {
	for (i64 c = blockIdx.x; c < chunks; c += gridDim.x) {
		int lo = 0, hi = nt - 1; // the last tensor whose chunk0 <= c
		while (lo < hi) {
			int mid = (lo + hi + 1) >> 1;
			if (ts[mid].chunk0 <= c) lo = mid;
			else hi = mid - 1;
		}
		const AdamWTensor* t = ts + lo;
		i64 start = (c - t->chunk0) * ADAMW_CHUNK;
		int len = (int)min((i64)ADAMW_CHUNK, t->n - start);
		float* p = t->p + start;
		float* g = t->g + start;
		float* m = t->m + start;
		float* v = t->v + start;
		bf16* bf = t->bf ? t->bf + start : (bf16*)0;
		float decay = t->decay, b1 = t->b1, b2 = t->b2, c1 = t->c1, c2 = t->c2, step = t->step, isb2 = t->isb2, eps = t->eps;
		float gscale = t->gscale;
		bool zero = t->zero != 0;
		for (int i = threadIdx.x; i < len; i += blockDim.x) {
			float gi = __fmul_rn(g[i], gscale); // scale's x·s, rounded on its own (g·1 = g)
			if (zero) g[i] = 0.0f;
			float mi = b1 * m[i] + c1 * gi;
			float vi = b2 * v[i] + c2 * gi * gi;
			m[i] = mi;
			v[i] = vi;
			float pi = p[i] * decay - step * mi / (sqrtf(vi) * isb2 + eps);
			p[i] = pi;
			if (bf) bf[i] = f32_to_bf16(pi);
		}
	}
}

// SumsqTensor describes one tensor of sumsq_many: x (n fp32 elements), the blocks its
// sumsq_partial launch would have (gridFor(n)) and block0, the number of the tensor's first
// block (the blocks of the tensors before it). 24 bytes; cuda/adamw_many.go mirrors the layout
// (sumsqTensor).
struct SumsqTensor {
	const float* x;
	i64 n;
	int blocks;
	int block0;
};
static_assert(sizeof(SumsqTensor) == 24, "SumsqTensor must match cuda/adamw_many.go's sumsqTensor");

// sumsq_many is sumsq_partial of nt tensors in one launch: block b finds its tensor (the last
// whose block0 <= b, by binary search) and computes the partial that block b - block0 of that
// tensor's own sumsq_partial launch (of its own blocks) computes, the same elements in the same
// order, into partial[b]; so the host's per-tensor sums of the partials are SumSquares' bit for
// bit. Grid (Σ blocks), block 256.
extern "C" __global__ void sumsq_many(double* partial, const SumsqTensor* ts, int nt) {
	__shared__ double sh[32];
	int lo = 0, hi = nt - 1;
	while (lo < hi) {
		int mid = (lo + hi + 1) >> 1;
		if (ts[mid].block0 <= (int)blockIdx.x) lo = mid;
		else hi = mid - 1;
	}
	const SumsqTensor* t = ts + lo;
	i64 blk = (i64)blockIdx.x - t->block0, grid = t->blocks;
	double s = 0;
	for (i64 i = blk * blockDim.x + threadIdx.x; i < t->n; i += grid * blockDim.x) {
		double v = t->x[i];
		s += v * v;
	}
	s = block_sum_d(s, sh);
	if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
