// Tiled causal attention for training and scoring prefill, FlashAttention-2 style, on the
// tensor cores: bf16 operands (the fp32 tensors are rounded to bf16, nearest even, as tiles are
// loaded), fp32 accumulation, an online softmax in fp32. Varlen over packed sequences: a
// sequence is rows t0..t1-1 of q, out, dq [T, H*D] and k, v, dk, dv [T, KV*D] (seqStart as
// cu_seqlens); lse, Dbuf [T, H]. Grouped-query heads: head h reads key/value head h / (H/KV).
// Head dims D = 64 and 128 (one entry point each); others take attention.cu's kernels.
//
// Tiles are FL_TILE = 64 rows, aligned at each sequence's first row. A block of FL_WARPS = 4
// warps owns one tile; warp w owns its rows 16w..16w+15 of it. The host lists the tiles as
// meta = [t0, t1, r0] triples (the sequence's rows and the tile's first row), one block each,
// grid (tiles, heads). Masking compares absolute rows: key j counts for query i when
// t0 <= j <= i < t1; key tiles beyond the diagonal are never loaded.
//
// Determinism: every block writes only its own rows (no atomics): the forward and dQ per
// (query tile, head), dK and dV per (key tile, KV head) summed over the group's heads and the
// query rows in order. dQ is a second pass (flash_bwd_dq_*), recomputing P and dS from lse.
//
// ---- mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 fragments (PTX ISA, "Matrix
// Fragments for mma.m16n8k16" with .bf16). In a warp, lane = 4*g + tq: g = lane >> 2 (the
// "groupID", 0..7), tq = lane & 3 ("threadID_in_group", 0..3). A .b32 register holding two
// bf16 keeps the lower-indexed element in its low 16 bits.
//   A, 16x16 (M x K), row-major, a0..a3:
//     a0 = A[g    ][2tq, 2tq+1]      a1 = A[g + 8][2tq, 2tq+1]
//     a2 = A[g    ][2tq+8, 2tq+9]    a3 = A[g + 8][2tq+8, 2tq+9]
//   B, 16x8 (K x N), column-major, b0..b1:
//     b0 = B[2tq, 2tq+1][g]          b1 = B[2tq+8, 2tq+9][g]
//   C and D, 16x8 fp32, c0..c3:
//     c0 = C[g][2tq]   c1 = C[g][2tq+1]   c2 = C[g+8][2tq]   c3 = C[g+8][2tq+1]
// So a row-major [n][k] tile in shared memory (K for S = Q·Kᵀ) gives b0 as one 32-bit load of
// row g at column 2tq; a B that is row-major [k][n] (V for O = P·V) takes two 16-bit loads, or
// a transposed copy. The C fragments of two neighbouring 8-column tiles are exactly the A
// fragment of the next product over those 16 columns (FA2's register reuse):
//   A(kk) = { pack(C[2kk].c0, c1), pack(C[2kk].c2, c3), pack(C[2kk+1].c0, c1), pack(C[2kk+1].c2, c3) }.

#define FL_WARPS 4
#define FL_TILE 64
#define FL_LOG2E 1.4426950408889634f
#define FL_LN2 0.6931471805599453f

// pack_bf16 rounds lo and hi to bf16 and packs them, lo in the low half.
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
	return (u32)f32_to_bf16(lo) | ((u32)f32_to_bf16(hi) << 16);
}

// pack2 packs two bf16 values, lo in the low half.
__device__ __forceinline__ u32 pack2(bf16 lo, bf16 hi) { return (u32)lo | ((u32)hi << 16); }

// ld32 reads two neighbouring bf16 of shared memory (4-byte aligned) as one register.
__device__ __forceinline__ u32 ld32(const bf16* p) { return *(const u32*)p; }

// mma16816 is c += A·B on one warp (fragments as above).
__device__ __forceinline__ void mma16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
	             "{%0,%1,%2,%3};\n"
	             : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
	             : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// quad_max and quad_sum reduce over the 4 lanes (tq = 0..3) that hold one row of a C fragment.
__device__ __forceinline__ float quad_max(float v) {
	v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
	return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
	v += __shfl_xor_sync(0xffffffffu, v, 1);
	return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// ld_pair reads x[i], x[i+1] of a global fp32 row, rounded and packed as bf16 (0 when !ok).
__device__ __forceinline__ u32 ld_pair(const float* x, i64 i, bool ok) {
	return ok ? pack_bf16(x[i], x[i + 1]) : 0u;
}

// load_a loads the A fragments of rows ra, ra+8 (global fp32, pitch ld, columns c0..c0+D-1)
// for the D/16 k-steps of a product over the head dim; rows >= t1 are zero.
template <int D>
__device__ __forceinline__ void load_a(u32 (*a)[4], const float* x, int ra, int t1, i64 ld, i64 c0, int tq) {
	int rb = ra + 8;
	for (int kk = 0; kk < D / 16; kk++) {
		i64 c = c0 + 16 * kk + 2 * tq;
		a[kk][0] = ld_pair(x, (i64)ra * ld + c, ra < t1);
		a[kk][1] = ld_pair(x, (i64)rb * ld + c, rb < t1);
		a[kk][2] = ld_pair(x, (i64)ra * ld + c + 8, ra < t1);
		a[kk][3] = ld_pair(x, (i64)rb * ld + c + 8, rb < t1);
	}
}

// load_rows stores rows r0..r0+n-1 of x (global fp32, pitch ld, columns c0..c0+D-1) as bf16 in
// s[n][D+8] (the 8 bf16 of padding shift each row by 4 banks); rows >= t1 are zero.
template <int D>
__device__ __forceinline__ void load_rows(bf16* s, const float* x, int r0, int n, int t1, i64 ld, i64 c0) {
	for (int i = threadIdx.x; i < n * D / 2; i += FL_WARPS * 32) {
		int r = i / (D / 2), c = 2 * (i % (D / 2));
		*(u32*)&s[r * (D + 8) + c] = ld_pair(x, (i64)(r0 + r) * ld + c0 + c, r0 + r < t1);
	}
}

// ---- Forward. One block per (query tile, head): O = softmax(scale·Q·Kᵀ, causal)·V and
// lse = log Σ exp(scale·q·k) per row. Warp w keeps its 16 query rows' Q fragments, its O
// accumulator (16 x D fp32) and the running max m and sum l of rows g and g+8; per key tile
// (64 keys: K as sK[key][d], V transposed as sVt[d][key]) it computes S (16 x 64) in C
// fragments, rescales O by exp(m_old - m_new), and adds P·V with P's bf16 A fragments taken
// from S's registers. Scores are kept in log2 units (scale·log2 e folded in, exp2f).
template <int D>
__device__ __forceinline__ void flash_fwd(float* out, float* lse, const float* q, const float* k, const float* v,
                                          const int* meta, int nh, int nkv, float scale) {
	__shared__ __attribute__((aligned(16))) bf16 sK[FL_TILE * (D + 8)];
	__shared__ __attribute__((aligned(16))) bf16 sVt[D * (FL_TILE + 8)];
	int t0 = meta[3 * blockIdx.x], t1 = meta[3 * blockIdx.x + 1], r0 = meta[3 * blockIdx.x + 2];
	int h = blockIdx.y, kvh = h / (nh / nkv);
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
	i64 qw = (i64)nh * D, kw = (i64)nkv * D;
	int ra = r0 + 16 * w + g, rb = ra + 8; // this thread's two query rows
	u32 qa[D / 16][4];
	load_a<D>(qa, q, ra, t1, qw, (i64)h * D, tq);
	float o[D / 8][4];
	for (int j = 0; j < D / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
	float ma = -INFINITY, mb = -INFINITY, la = 0.0f, lb = 0.0f; // la, lb: this lane's part of the sums
	const float sl2 = scale * FL_LOG2E;
	int last = min(r0 + FL_TILE, t1) - 1; // the tile's last query row
	for (int k0 = t0; k0 <= last; k0 += FL_TILE) {
		__syncthreads(); // the previous tile's reads are done
		for (int i = threadIdx.x; i < FL_TILE * D / 2; i += FL_WARPS * 32) {
			int r = i / (D / 2), c = 2 * (i % (D / 2));
			bool ok = k0 + r < t1;
			i64 base = (i64)(k0 + r) * kw + (i64)kvh * D + c;
			*(u32*)&sK[r * (D + 8) + c] = ld_pair(k, base, ok);
			sVt[c * (FL_TILE + 8) + r] = ok ? f32_to_bf16(v[base]) : (bf16)0;
			sVt[(c + 1) * (FL_TILE + 8) + r] = ok ? f32_to_bf16(v[base + 1]) : (bf16)0;
		}
		__syncthreads();
		float s[FL_TILE / 8][4];
		for (int n = 0; n < FL_TILE / 8; n++) {
			s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
			const bf16* kr = &sK[(8 * n + g) * (D + 8) + 2 * tq];
			for (int kk = 0; kk < D / 16; kk++)
				mma16816(s[n], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], ld32(kr + 16 * kk), ld32(kr + 16 * kk + 8));
		}
		// Mask (key beyond the sequence or after the query row) and scale; the running max.
		float mxa = ma, mxb = mb;
		for (int n = 0; n < FL_TILE / 8; n++) {
			for (int j = 0; j < 4; j++) {
				int key = k0 + 8 * n + 2 * tq + (j & 1), row = j < 2 ? ra : rb;
				s[n][j] = (key < t1 && key <= row) ? s[n][j] * sl2 : -INFINITY;
			}
			mxa = fmaxf(mxa, fmaxf(s[n][0], s[n][1]));
			mxb = fmaxf(mxb, fmaxf(s[n][2], s[n][3]));
		}
		// Key t0 counts for every row, so after the first tile the maxima are finite.
		mxa = quad_max(mxa);
		mxb = quad_max(mxb);
		float ca = exp2f(ma - mxa), cb = exp2f(mb - mxb); // 0 on the first tile (ma = -inf)
		ma = mxa;
		mb = mxb;
		float sa = 0.0f, sb = 0.0f;
		for (int n = 0; n < FL_TILE / 8; n++) {
			s[n][0] = exp2f(s[n][0] - ma);
			s[n][1] = exp2f(s[n][1] - ma);
			s[n][2] = exp2f(s[n][2] - mb);
			s[n][3] = exp2f(s[n][3] - mb);
			sa += s[n][0] + s[n][1];
			sb += s[n][2] + s[n][3];
		}
		la = la * ca + sa;
		lb = lb * cb + sb;
		for (int j = 0; j < D / 8; j++) {
			o[j][0] *= ca;
			o[j][1] *= ca;
			o[j][2] *= cb;
			o[j][3] *= cb;
		}
		for (int kk = 0; kk < FL_TILE / 16; kk++) {
			u32 a0 = pack_bf16(s[2 * kk][0], s[2 * kk][1]), a1 = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
			u32 a2 = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), a3 = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
			for (int j = 0; j < D / 8; j++) {
				const bf16* vr = &sVt[(8 * j + g) * (FL_TILE + 8) + 16 * kk + 2 * tq];
				mma16816(o[j], a0, a1, a2, a3, ld32(vr), ld32(vr + 8));
			}
		}
	}
	la = quad_sum(la);
	lb = quad_sum(lb);
	float ia = 1.0f / la, ib = 1.0f / lb;
	for (int j = 0; j < D / 8; j++) {
		i64 c = (i64)h * D + 8 * j + 2 * tq;
		if (ra < t1) {
			out[(i64)ra * qw + c] = o[j][0] * ia;
			out[(i64)ra * qw + c + 1] = o[j][1] * ia;
		}
		if (rb < t1) {
			out[(i64)rb * qw + c] = o[j][2] * ib;
			out[(i64)rb * qw + c + 1] = o[j][3] * ib;
		}
	}
	if (tq == 0) {
		if (ra < t1) lse[(i64)ra * nh + h] = ma * FL_LN2 + logf(la);
		if (rb < t1) lse[(i64)rb * nh + h] = mb * FL_LN2 + logf(lb);
	}
}

// flash_fwd_64 and flash_fwd_128: the forward for D = 64 and 128. Grid (tiles, H), block 128.
extern "C" __global__ void flash_fwd_64(float* out, float* lse, const float* q, const float* k,
                                                               const float* v, const int* meta, int nh, int nkv,
                                                               float scale) {
	flash_fwd<64>(out, lse, q, k, v, meta, nh, nkv, scale);
}

extern "C" __global__ void flash_fwd_128(float* out, float* lse, const float* q, const float* k,
                                                                const float* v, const int* meta, int nh, int nkv,
                                                                float scale) {
	flash_fwd<128>(out, lse, q, k, v, meta, nh, nkv, scale);
}

// ---- Backward, dK and dV. One block per (key tile, KV head); warp w owns keys 16w..16w+15
// of the tile and accumulates their dK and dV (16 x D fp32 each) over the group's heads and
// the query rows from the tile's first row to the sequence's end, BQ rows at a time (Q and dO
// as sQ, sdO [BQ][D+8], lse·log2 e and D = rowsum(dO∘O) of those rows). Per chunk, in C
// fragments with keys as rows: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (16 x BQ), Pᵀ = exp(scale·Sᵀ - lse),
// dSᵀ = Pᵀ∘(dPᵀ - D)·scale; then dV += Pᵀ·dO and dK += dSᵀ·Q with Pᵀ and dSᵀ as bf16 A
// fragments (register reuse) and dO, Q as B [query][d] (two 16-bit loads per register).
// K and V stay in shared memory (sK, sV [64][D+8]) and give the A fragments of the first two
// products. Launched after attn_rowdot has written Dbuf.
template <int D, int BQ>
__device__ __forceinline__ void flash_bwd_dkv(float* dk, float* dv, const float* dout, const float* q, const float* k,
                                              const float* v, const float* lse, const float* Dbuf, const int* meta,
                                              int nh, int nkv, float scale) {
	__shared__ __attribute__((aligned(16))) bf16 sK[FL_TILE * (D + 8)];
	__shared__ __attribute__((aligned(16))) bf16 sV[FL_TILE * (D + 8)];
	__shared__ __attribute__((aligned(16))) bf16 sQ[BQ * (D + 8)];
	__shared__ __attribute__((aligned(16))) bf16 sdO[BQ * (D + 8)];
	__shared__ float sL[BQ], sD[BQ];
	int t1 = meta[3 * blockIdx.x + 1], k0 = meta[3 * blockIdx.x + 2]; // the key tile: rows k0..k0+63
	int kvh = blockIdx.y, group = nh / nkv;
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
	i64 qw = (i64)nh * D, kw = (i64)nkv * D;
	load_rows<D>(sK, k, k0, FL_TILE, t1, kw, (i64)kvh * D);
	load_rows<D>(sV, v, k0, FL_TILE, t1, kw, (i64)kvh * D);
	int ka = k0 + 16 * w + g, kb = ka + 8; // this thread's two key rows
	float dka[D / 8][4], dva[D / 8][4];
	for (int j = 0; j < D / 8; j++) dka[j][0] = dka[j][1] = dka[j][2] = dka[j][3] = dva[j][0] = dva[j][1] =
	    dva[j][2] = dva[j][3] = 0.0f;
	const float sl2 = scale * FL_LOG2E;
	const bf16* kr = &sK[(16 * w + g) * (D + 8) + 2 * tq]; // A fragments: rows g, g+8 of the warp's keys
	const bf16* vr = &sV[(16 * w + g) * (D + 8) + 2 * tq];
	for (int h = kvh * group; h < (kvh + 1) * group; h++) {
		for (int r0 = k0; r0 < t1; r0 += BQ) {
			__syncthreads(); // sK, sV written; the previous chunk's reads are done
			load_rows<D>(sQ, q, r0, BQ, t1, qw, (i64)h * D);
			load_rows<D>(sdO, dout, r0, BQ, t1, qw, (i64)h * D);
			for (int i = threadIdx.x; i < BQ; i += FL_WARPS * 32) {
				bool ok = r0 + i < t1;
				sL[i] = ok ? lse[(i64)(r0 + i) * nh + h] * FL_LOG2E : 0.0f;
				sD[i] = ok ? Dbuf[(i64)(r0 + i) * nh + h] : 0.0f;
			}
			__syncthreads();
			float st[BQ / 8][4], dpt[BQ / 8][4];
			for (int n = 0; n < BQ / 8; n++) {
				st[n][0] = st[n][1] = st[n][2] = st[n][3] = 0.0f;
				dpt[n][0] = dpt[n][1] = dpt[n][2] = dpt[n][3] = 0.0f;
				const bf16* qr = &sQ[(8 * n + g) * (D + 8) + 2 * tq];
				const bf16* dr = &sdO[(8 * n + g) * (D + 8) + 2 * tq];
				for (int kk = 0; kk < D / 16; kk++) {
					int c = 16 * kk;
					mma16816(st[n], ld32(kr + c), ld32(kr + 8 * (D + 8) + c), ld32(kr + c + 8),
					         ld32(kr + 8 * (D + 8) + c + 8), ld32(qr + c), ld32(qr + c + 8));
					mma16816(dpt[n], ld32(vr + c), ld32(vr + 8 * (D + 8) + c), ld32(vr + c + 8),
					         ld32(vr + 8 * (D + 8) + c + 8), ld32(dr + c), ld32(dr + c + 8));
				}
				for (int j = 0; j < 4; j++) {
					int qi = 8 * n + 2 * tq + (j & 1), key = j < 2 ? ka : kb;
					bool ok = r0 + qi < t1 && key <= r0 + qi && key < t1;
					float p = ok ? exp2f(st[n][j] * sl2 - sL[qi]) : 0.0f;
					st[n][j] = p;
					dpt[n][j] = p * (dpt[n][j] - sD[qi]) * scale;
				}
			}
			for (int kk = 0; kk < BQ / 16; kk++) {
				u32 p0 = pack_bf16(st[2 * kk][0], st[2 * kk][1]), p1 = pack_bf16(st[2 * kk][2], st[2 * kk][3]);
				u32 p2 = pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]), p3 = pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3]);
				u32 d0 = pack_bf16(dpt[2 * kk][0], dpt[2 * kk][1]), d1 = pack_bf16(dpt[2 * kk][2], dpt[2 * kk][3]);
				u32 d2 = pack_bf16(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]),
				    d3 = pack_bf16(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
				int qrow = 16 * kk + 2 * tq; // B rows (queries) 2tq, 2tq+1 and 2tq+8, 2tq+9
				for (int j = 0; j < D / 8; j++) {
					int c = 8 * j + g; // B column (head dim)
					const bf16* o0 = &sdO[qrow * (D + 8) + c];
					mma16816(dva[j], p0, p1, p2, p3, pack2(o0[0], o0[D + 8]),
					         pack2(o0[8 * (D + 8)], o0[9 * (D + 8)]));
					const bf16* q0 = &sQ[qrow * (D + 8) + c];
					mma16816(dka[j], d0, d1, d2, d3, pack2(q0[0], q0[D + 8]),
					         pack2(q0[8 * (D + 8)], q0[9 * (D + 8)]));
				}
			}
		}
	}
	for (int j = 0; j < D / 8; j++) {
		i64 c = (i64)kvh * D + 8 * j + 2 * tq;
		if (ka < t1) {
			dk[(i64)ka * kw + c] = dka[j][0];
			dk[(i64)ka * kw + c + 1] = dka[j][1];
			dv[(i64)ka * kw + c] = dva[j][0];
			dv[(i64)ka * kw + c + 1] = dva[j][1];
		}
		if (kb < t1) {
			dk[(i64)kb * kw + c] = dka[j][2];
			dk[(i64)kb * kw + c + 1] = dka[j][3];
			dv[(i64)kb * kw + c] = dva[j][2];
			dv[(i64)kb * kw + c + 1] = dva[j][3];
		}
	}
}

// flash_bwd_dkv_64 (query chunks of 64 rows) and flash_bwd_dkv_128 (16 rows: the four tiles
// fit 48 KiB of static shared memory). Grid (tiles, KV), block 128.
extern "C" __global__ void flash_bwd_dkv_64(float* dk, float* dv, const float* dout,
                                                                   const float* q, const float* k, const float* v,
                                                                   const float* lse, const float* Dbuf,
                                                                   const int* meta, int nh, int nkv, float scale) {
	flash_bwd_dkv<64, 64>(dk, dv, dout, q, k, v, lse, Dbuf, meta, nh, nkv, scale);
}

extern "C" __global__ void flash_bwd_dkv_128(float* dk, float* dv, const float* dout,
                                                                    const float* q, const float* k, const float* v,
                                                                    const float* lse, const float* Dbuf,
                                                                    const int* meta, int nh, int nkv, float scale) {
	flash_bwd_dkv<128, 16>(dk, dv, dout, q, k, v, lse, Dbuf, meta, nh, nkv, scale);
}

// ---- Backward, dQ (the second pass). One block per (query tile, head); warp w keeps its 16
// rows' Q and dO A fragments, lse and D, and accumulates dQ (16 x D fp32) over the key tiles
// up to the diagonal, BN keys at a time (sK, sV [BN][D+8]): S = Q·Kᵀ, dP = dO·Vᵀ (16 x BN),
// P = exp(scale·S - lse), dS = P∘(dP - D)·scale, dQ += dS·K with dS as bf16 A fragments and K
// as B [key][d] (two 16-bit loads per register).
template <int D, int BN>
__device__ __forceinline__ void flash_bwd_dq(float* dq, const float* dout, const float* q, const float* k,
                                             const float* v, const float* lse, const float* Dbuf, const int* meta,
                                             int nh, int nkv, float scale) {
	__shared__ __attribute__((aligned(16))) bf16 sK[BN * (D + 8)];
	__shared__ __attribute__((aligned(16))) bf16 sV[BN * (D + 8)];
	int t0 = meta[3 * blockIdx.x], t1 = meta[3 * blockIdx.x + 1], r0 = meta[3 * blockIdx.x + 2];
	int h = blockIdx.y, kvh = h / (nh / nkv);
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
	i64 qw = (i64)nh * D, kw = (i64)nkv * D;
	int ra = r0 + 16 * w + g, rb = ra + 8;
	u32 qa[D / 16][4], da[D / 16][4];
	load_a<D>(qa, q, ra, t1, qw, (i64)h * D, tq);
	load_a<D>(da, dout, ra, t1, qw, (i64)h * D, tq);
	float La = ra < t1 ? lse[(i64)ra * nh + h] * FL_LOG2E : 0.0f, Lb = rb < t1 ? lse[(i64)rb * nh + h] * FL_LOG2E : 0.0f;
	float Da = ra < t1 ? Dbuf[(i64)ra * nh + h] : 0.0f, Db = rb < t1 ? Dbuf[(i64)rb * nh + h] : 0.0f;
	float acc[D / 8][4];
	for (int j = 0; j < D / 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
	const float sl2 = scale * FL_LOG2E;
	int last = min(r0 + FL_TILE, t1) - 1;
	for (int k0 = t0; k0 <= last; k0 += BN) {
		__syncthreads();
		load_rows<D>(sK, k, k0, BN, t1, kw, (i64)kvh * D);
		load_rows<D>(sV, v, k0, BN, t1, kw, (i64)kvh * D);
		__syncthreads();
		float s[BN / 8][4], dp[BN / 8][4];
		for (int n = 0; n < BN / 8; n++) {
			s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
			dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
			const bf16* kr = &sK[(8 * n + g) * (D + 8) + 2 * tq];
			const bf16* vr = &sV[(8 * n + g) * (D + 8) + 2 * tq];
			for (int kk = 0; kk < D / 16; kk++) {
				mma16816(s[n], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], ld32(kr + 16 * kk), ld32(kr + 16 * kk + 8));
				mma16816(dp[n], da[kk][0], da[kk][1], da[kk][2], da[kk][3], ld32(vr + 16 * kk), ld32(vr + 16 * kk + 8));
			}
			for (int j = 0; j < 4; j++) {
				int key = k0 + 8 * n + 2 * tq + (j & 1), row = j < 2 ? ra : rb;
				bool ok = key < t1 && key <= row && row < t1;
				float p = ok ? exp2f(s[n][j] * sl2 - (j < 2 ? La : Lb)) : 0.0f;
				dp[n][j] = p * (dp[n][j] - (j < 2 ? Da : Db)) * scale;
			}
		}
		for (int kk = 0; kk < BN / 16; kk++) {
			u32 d0 = pack_bf16(dp[2 * kk][0], dp[2 * kk][1]), d1 = pack_bf16(dp[2 * kk][2], dp[2 * kk][3]);
			u32 d2 = pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]), d3 = pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
			int krow = 16 * kk + 2 * tq;
			for (int j = 0; j < D / 8; j++) {
				const bf16* k0p = &sK[krow * (D + 8) + 8 * j + g];
				mma16816(acc[j], d0, d1, d2, d3, pack2(k0p[0], k0p[D + 8]), pack2(k0p[8 * (D + 8)], k0p[9 * (D + 8)]));
			}
		}
	}
	for (int j = 0; j < D / 8; j++) {
		i64 c = (i64)h * D + 8 * j + 2 * tq;
		if (ra < t1) {
			dq[(i64)ra * qw + c] = acc[j][0];
			dq[(i64)ra * qw + c + 1] = acc[j][1];
		}
		if (rb < t1) {
			dq[(i64)rb * qw + c] = acc[j][2];
			dq[(i64)rb * qw + c + 1] = acc[j][3];
		}
	}
}

// flash_bwd_dq_64 (key chunks of 64) and flash_bwd_dq_128 (32: fewer live registers). Grid
// (tiles, H), block 128; after attn_rowdot.
extern "C" __global__ void flash_bwd_dq_64(float* dq, const float* dout, const float* q,
                                                                  const float* k, const float* v, const float* lse,
                                                                  const float* Dbuf, const int* meta, int nh, int nkv,
                                                                  float scale) {
	flash_bwd_dq<64, 64>(dq, dout, q, k, v, lse, Dbuf, meta, nh, nkv, scale);
}

extern "C" __global__ void flash_bwd_dq_128(float* dq, const float* dout, const float* q,
                                                                   const float* k, const float* v, const float* lse,
                                                                   const float* Dbuf, const int* meta, int nh, int nkv,
                                                                   float scale) {
	flash_bwd_dq<128, 32>(dq, dout, q, k, v, lse, Dbuf, meta, nh, nkv, scale);
}
