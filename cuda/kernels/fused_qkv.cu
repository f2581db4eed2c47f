// QKVRoPE (engine.QKVRoPEBackend): what a layer does between its q, k, v projections and
// attention, in one pass over the projections' rows.

// qkv_rope: one block per token t. q[T, qw], k and v [T, kw] are updated in place as add_bias
// (qb, kb, vb; all null: no biases), then rope on q and k (same expressions, so the same bits as
// those kernels) give them; where kc is not null, the token's keys and values then go to the
// paged cache kc, vc [blocks, KV, bs, dh] (fp32) at slots[t], as kv_write puts them. The block's
// threads take the q pairs, then the k pairs, then the v elements. Grid (T), block 256.
extern "C" __global__ void qkv_rope(float* q, float* k, float* v, const float* qb, const float* kb, const float* vb,
                                    const int* pos, const float* cosT, const float* sinT, float* kc, float* vc,
                                    const int* slots, int qw, int kw, int dh, int bs) {
	int t = blockIdx.x;
	int half = dh / 2;
	i64 p = pos[t];
	const float* cr = cosT + p * half;
	const float* sr = sinT + p * half;
	float* qr = q + (i64)t * qw;
	float* kr = k + (i64)t * kw;
	float* vr = v + (i64)t * kw;
	int nkv = kw / dh;
	i64 base = 0; // the token's offset in the cache, less the head's
	if (kc) {
		int slot = slots[t];
		base = ((i64)(slot / bs) * nkv * bs + slot % bs) * dh;
	}
	int qp = qw / 2, kp = kw / 2;
	for (int i = threadIdx.x; i < qp + kp + kw; i += blockDim.x) {
		if (i < qp + kp) {
			bool isq = i < qp;
			int r = isq ? i : i - qp;
			int h = r / half, j = r % half;
			float* row = (isq ? qr : kr) + h * dh;
			float x1 = row[j], x2 = row[j + half];
			if (qb) {
				const float* b = (isq ? qb : kb) + h * dh;
				x1 += b[j];
				x2 += b[j + half];
			}
			float c = cr[j], s = sr[j];
			float y1 = x1 * c - x2 * s;
			float y2 = x2 * c + x1 * s;
			row[j] = y1;
			row[j + half] = y2;
			if (!isq && kc) {
				float* dst = kc + base + (i64)h * bs * dh;
				dst[j] = y1;
				dst[j + half] = y2;
			}
		} else {
			int r = i - qp - kp;
			float x = vr[r];
			if (vb) x += vb[r];
			vr[r] = x;
			if (kc) vc[base + (i64)(r / dh) * bs * dh + r % dh] = x;
		}
	}
}
