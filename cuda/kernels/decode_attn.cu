// Decode attention over the paged KV cache, with keys and values of fp32 or bf16, split over the
// context (flash-decoding, as vLLM's paged_attention_v2): the bf16 KV cache's write and read,
// and the split-KV path of Options.SplitKVDecode (ops.go decodeAttention).
//
// Layouts: kc, vc [blocks, KV, BS, Dh] of E (float or bf16); q, out [T, H*Dh] fp32; meta as
// attn_paged: meta[2t] = offset in meta of token t's block table, meta[2t+1] = its position (it
// attends to positions 0..pos). Partials of a split launch: pm, pl [T, H, nsplit] (maximum and
// sum of the exponentials of a split's scores), po [T, H, nsplit, Dh] (its unnormalised output).

// kv_write_bf16 is kv_store (common.cuh) into a bf16 cache: k, v [T, KV*Dh] rounded to bf16
// (to nearest even, as the CPU's store rounds) at their slots.
extern "C" __global__ void kv_write_bf16(bf16* kc, bf16* vc, const float* k, const float* v, const int* slots,
                                         int T, int nkv, int bs, int dh) {
	kv_store(kc, vc, k, v, slots, T, nkv, bs, dh);
}

#define DA_WARPS 4   // warps per block
#define DA_MAXG 8    // query heads per block (a larger GQA group takes several blocks)
#define DA_MAXD 256  // head_dim
#define DA_ACC 8     // accumulator floats per lane per head: 1 bf16 vector of 8, or 2 fp32 vectors of 4

struct __align__(16) da_u4 {
	u32 x, y, z, w;
};
struct __align__(16) da_f4 {
	float x, y, z, w;
};

// da_load reads the 16-byte vector j of a key or value row of dh elements into f (4 fp32 or 8
// bf16 widened): one 16-byte load where rows are 16-byte aligned (al: Dh·sizeof(E) a multiple of
// 16), else element by element; zeros beyond dh.
__device__ __forceinline__ void da_load(const float* row, int j, int dh, bool al, float* f) {
	if (al) {
		da_f4 x = *(const da_f4*)(row + 4 * j);
		f[0] = x.x;
		f[1] = x.y;
		f[2] = x.z;
		f[3] = x.w;
		return;
	}
	for (int i = 0; i < 4; i++) {
		int d = 4 * j + i;
		f[i] = d < dh ? row[d] : 0.0f;
	}
}

__device__ __forceinline__ void da_load(const bf16* row, int j, int dh, bool al, float* f) {
	if (al) {
		da_u4 x = *(const da_u4*)(row + 8 * j);
		u32 u[4] = {x.x, x.y, x.z, x.w};
		for (int i = 0; i < 4; i++) {
			f[2 * i] = __uint_as_float(u[i] << 16); // the lower address holds the lower half
			f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
		}
		return;
	}
	for (int i = 0; i < 8; i++) {
		int d = 8 * j + i;
		f[i] = d < dh ? bf16_to_f32(row[d]) : 0.0f;
	}
}

// decode_attn computes, for query token t = blockIdx.x, the query heads h0..h0+ng-1 of KV head
// kvh (blockIdx.y = kvh·slices + slice, h0 = kvh·G + slice·DA_MAXG) over the positions
// [z·part, min(n, (z+1)·part)) of its context (z = blockIdx.z; part a multiple of 32).
// Block DA_WARPS·32 threads; warp w takes the tiles of 32 positions at p0 + 32w, every
// DA_WARPS·32 positions:
//  1. scores: lane i holds position tile+i; it reads its key row as 16-byte vectors (VE
//     elements each) and dots it with the ng query rows, which (scaled) sit in shared memory
//     and are read by all lanes at once (a broadcast): 32 keys per warp per iteration;
//  2. online softmax per warp and head: the tile's maximum (a warp reduction), the running
//     maximum m, the rescaling of the sums l (kept per lane, reduced at the end) and of the
//     accumulators; e = exp(s - m) to a warp-private shared row;
//  3. P·V: lanes split over (key, value vector): lane c + NVP·k (NVP = NV rounded up to a power
//     of 2, NV = ceil(Dh/VE) vectors per row, at most 32) reads vector c (and c+32: fp32 rows
//     of more than 128) of the tile's keys k, k+KPW, ... (KPW = 32/NVP keys per load, rows
//     contiguous within a cache block) and accumulates e·v for every head.
// At the end each warp sums its lanes' accumulators of one vector (shuffles), the block merges
// its warps (shared memory), and writes the normalised output (nsplit == 1) or its partial (M,
// L, unnormalised O) for decode_attn_combine.
template <typename E, int VE>
__device__ void decode_attn(float* out, float* pm, float* pl, float* po, const float* q, const E* kc, const E* vc,
                            const int* meta, int nh, int nkv, int dh, int bs, float scale, int part, int nsplit) {
	const int NR = DA_ACC / VE; // value vectors per lane in P·V
	__shared__ __align__(16) float smem[DA_WARPS * DA_MAXG * DA_MAXD]; // q rows and e rows in the loop, then the warps' accumulators
	__shared__ float smx[DA_WARPS][DA_MAXG], ssum[DA_WARPS][DA_MAXG];
	int t = blockIdx.x, z = blockIdx.z;
	int G = nh / nkv, slices = (G + DA_MAXG - 1) / DA_MAXG;
	int kvh = blockIdx.y / slices;
	int h0 = kvh * G + (blockIdx.y % slices) * DA_MAXG;
	int ng = min(DA_MAXG, kvh * G + G - h0);
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	const int* table = meta + meta[2 * t];
	int n = meta[2 * t + 1] + 1;
	int p0 = z * part, p1 = min(n, p0 + part);
	if (p0 >= p1) return; // a split beyond this token's context (the whole block)
	int NV = (dh + VE - 1) / VE;
	bool al = dh % VE == 0;
	float* sq = smem;                     // [DA_MAXG][DA_MAXD] q·scale, zeros beyond dh
	float* se = smem + DA_MAXG * DA_MAXD; // [DA_WARPS][DA_MAXG][32] e of a warp's tile
	for (int i = threadIdx.x; i < ng * NV * VE; i += blockDim.x) {
		int g = i / (NV * VE), d = i % (NV * VE);
		sq[g * DA_MAXD + d] = d < dh ? q[((i64)t * nh + h0 + g) * dh + d] * scale : 0.0f;
	}
	__syncthreads();
	int NVP = 1;
	while (NVP < NV && NVP < 32) NVP <<= 1;
	int KPW = 32 / NVP;
	int c = lane % NVP, kl = lane / NVP;
	float m[DA_MAXG], l[DA_MAXG], acc[DA_MAXG][DA_ACC];
	for (int g = 0; g < DA_MAXG; g++) {
		m[g] = -INFINITY;
		l[g] = 0.0f;
		for (int i = 0; i < DA_ACC; i++) acc[g][i] = 0.0f;
	}
	for (int tile = p0 + 32 * w; tile < p1; tile += 32 * DA_WARPS) {
		// 1. scores of position tile+lane
		int p = tile + lane;
		bool ok = p < p1;
		float s[DA_MAXG];
		for (int g = 0; g < DA_MAXG; g++) s[g] = 0.0f;
		if (ok) {
			const E* krow = kc + (((i64)table[p / bs] * nkv + kvh) * bs + p % bs) * dh;
#pragma unroll 4
			for (int j = 0; j < NV; j++) {
				float f[VE];
				da_load(krow, j, dh, al, f);
				for (int g = 0; g < DA_MAXG; g++) {
					if (g < ng) {
						const da_f4* qg = (const da_f4*)(sq + g * DA_MAXD + j * VE); // 16-byte broadcasts
						for (int i = 0; i < VE / 4; i++) {
							da_f4 x = qg[i];
							s[g] += x.x * f[4 * i];
							s[g] += x.y * f[4 * i + 1];
							s[g] += x.z * f[4 * i + 2];
							s[g] += x.w * f[4 * i + 3];
						}
					}
				}
			}
		}
		// 2. online softmax
		for (int g = 0; g < DA_MAXG; g++) {
			if (g < ng) {
				float sg = ok ? s[g] : -INFINITY;
				float mn = fmaxf(m[g], warp_max(sg)); // finite: position tile is in range
				float cr = expf(m[g] - mn);           // 0 on the first tile
				float e = ok ? expf(sg - mn) : 0.0f;
				l[g] = l[g] * cr + e;
				for (int i = 0; i < DA_ACC; i++) acc[g][i] *= cr;
				m[g] = mn;
				se[(w * DA_MAXG + g) * 32 + lane] = e;
			}
		}
		__syncwarp();
		// 3. P·V over the tile's keys
		for (int k = kl; k < 32 && tile + k < p1; k += KPW) {
			int pk = tile + k;
			const E* vrow = vc + (((i64)table[pk / bs] * nkv + kvh) * bs + pk % bs) * dh;
			float f[DA_ACC];
			for (int r = 0; r < NR; r++) {
				int j = c + 32 * r;
				if (j < NV) {
					da_load(vrow, j, dh, al, f + r * VE);
				} else {
					for (int i = 0; i < VE; i++) f[r * VE + i] = 0.0f;
				}
			}
			for (int g = 0; g < DA_MAXG; g++) {
				if (g < ng) {
					float e = se[(w * DA_MAXG + g) * 32 + k];
					for (int i = 0; i < DA_ACC; i++) acc[g][i] += e * f[i];
				}
			}
		}
		__syncwarp();
	}
	// The lanes c, c+NVP, ... hold parts of the same vector's sums.
	for (int o = NVP; o < 32; o <<= 1) {
		for (int g = 0; g < DA_MAXG; g++) {
			for (int i = 0; i < DA_ACC; i++) acc[g][i] += __shfl_xor_sync(0xffffffffu, acc[g][i], o);
		}
	}
	__syncthreads(); // every warp is done with sq and se: smem becomes the accumulators
	for (int g = 0; g < DA_MAXG; g++) {
		if (g < ng) {
			float L = warp_sum(l[g]);
			if (lane == 0) {
				smx[w][g] = m[g];
				ssum[w][g] = L;
			}
			if (kl == 0) {
				for (int r = 0; r < NR; r++) {
					for (int i = 0; i < VE; i++) {
						int d = (c + 32 * r) * VE + i;
						if (d < dh) smem[(w * DA_MAXG + g) * DA_MAXD + d] = acc[g][r * VE + i];
					}
				}
			}
		}
	}
	__syncthreads();
	for (int i = threadIdx.x; i < ng * dh; i += blockDim.x) {
		int g = i / dh, d = i % dh;
		float M = smx[0][g];
		for (int x = 1; x < DA_WARPS; x++) M = fmaxf(M, smx[x][g]);
		float L = 0.0f, o = 0.0f;
		for (int x = 0; x < DA_WARPS; x++) {
			float f = ssum[x][g] == 0.0f ? 0.0f : expf(smx[x][g] - M);
			L += ssum[x][g] * f;
			o += smem[(x * DA_MAXG + g) * DA_MAXD + d] * f;
		}
		i64 row = (i64)t * nh + h0 + g;
		if (nsplit == 1) {
			out[row * dh + d] = o / L;
		} else {
			i64 r = row * nsplit + z;
			po[r * dh + d] = o;
			if (d == 0) {
				pm[r] = M;
				pl[r] = L;
			}
		}
	}
}

// Decode attention over an fp32 cache. Grid (T, KV·ceil(G/DA_MAXG), nsplit), block 128.
extern "C" __global__ void decode_attn_f32(float* out, float* pm, float* pl, float* po, const float* q,
                                           const float* kc, const float* vc, const int* meta, int nh, int nkv,
                                           int dh, int bs, float scale, int part, int nsplit) {
	decode_attn<float, 4>(out, pm, pl, po, q, kc, vc, meta, nh, nkv, dh, bs, scale, part, nsplit);
}

// Decode attention over a bf16 cache. Grid (T, KV·ceil(G/DA_MAXG), nsplit), block 128.
extern "C" __global__ void decode_attn_bf16(float* out, float* pm, float* pl, float* po, const float* q,
                                            const bf16* kc, const bf16* vc, const int* meta, int nh, int nkv,
                                            int dh, int bs, float scale, int part, int nsplit) {
	decode_attn<bf16, 8>(out, pm, pl, po, q, kc, vc, meta, nh, nkv, dh, bs, scale, part, nsplit);
}

// decode_attn_combine merges the nsplit partials of (token t, head h) = (blockIdx.x, blockIdx.y)
// into out: with M the largest maximum of the ns = ceil(n/part) splits that hold positions of
// t's context and f_s = exp(m_s - M), out = Σ f_s·o_s / Σ f_s·l_s. Block 128 threads over Dh.
extern "C" __global__ void decode_attn_combine(float* out, const float* pm, const float* pl, const float* po,
                                               const int* meta, int nh, int dh, int part, int nsplit) {
	int t = blockIdx.x, h = blockIdx.y;
	int n = meta[2 * t + 1] + 1;
	int ns = min(nsplit, (n + part - 1) / part);
	i64 r = ((i64)t * nh + h) * nsplit;
	float M = pm[r];
	for (int s = 1; s < ns; s++) M = fmaxf(M, pm[r + s]);
	float L = 0.0f;
	for (int s = 0; s < ns; s++) L += pl[r + s] * expf(pm[r + s] - M);
	for (int d = threadIdx.x; d < dh; d += blockDim.x) {
		float o = 0.0f;
		for (int s = 0; s < ns; s++) o += po[(r + s) * dh + d] * expf(pm[r + s] - M);
		out[((i64)t * nh + h) * dh + d] = o / L;
	}
}
