package cuda

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
)

// bf16ToF32 widens bf16 bits.
func bf16ToF32(v uint16) float32 { return math.Float32frombits(uint32(v) << 16) }

// Embedding implements engine.Backend.
func (b *Backend) Embedding(out, table *engine.Tensor, ids []int32) { b.GatherRows(out, table, ids) }

// GatherRows implements engine.Backend.
func (b *Backend) GatherRows(out, x *engine.Tensor, rows []int32) {
	b.op(desc("GatherRows out x", out, x), func() {
		touched(out)
		b.launchGatherRows([3]int{len(rows), 1, 1}, 256, ptr(out), ptr(x), b.ints(rows), int32(x.Cols()))
	})
}

// bf16Copy returns the bf16 storage of a matmul operand: its own for a BF16 weight, else a
// bf16 copy kept beside the tensor and made again only after the tensor was written (every op
// marks what it writes with touched), so that an activation feeding several matmuls (q, k, v
// and gate, up read one normed input; dX and dW read one dY) is converted once.
func (b *Backend) bf16Copy(w *engine.Tensor) dptr {
	bf := devBuf(w)
	if w.DType == engine.BF16 {
		return dptr(bf.ptr)
	}
	if bf.bf == 0 {
		bf.bf = b.devAlloc(uint64(max(2*w.Len(), 4)))
		bf.bfVer = bf.ver - 1
	}
	if bf.bfVer != bf.ver {
		b.launchF32ToBf16Kernel(b.gridFor(int64(w.Len())), 256, dptr(bf.bf), dptr(bf.ptr), int64(w.Len()))
		bf.bfVer = bf.ver
	}
	return dptr(bf.bf)
}

// useBF16 says whether a matmul with weight w runs on bf16 operands.
func (b *Backend) useBF16(w *engine.Tensor) bool { return w.DType == engine.BF16 || b.opts.BF16Matmul }

func (b *Backend) gemm(what string, g gemm) {
	if b.failed() || g.m == 0 || g.n == 0 {
		return
	}
	if b.rec != nil {
		b.recordGemm(what, g)
		return
	}
	b.gemmNow(what, g)
}

// gemmNow enqueues the GEMM g on the stream: by cublasGemmEx, or with Options.CublasLt by
// cublasLtMatmul where cuBLASLt has an algorithm for it (ltgemm.go).
func (b *Backend) gemmNow(what string, g gemm) {
	if b.failed() {
		return
	}
	alpha, beta := new(float32), new(float32)
	*alpha, *beta = 1, g.beta
	if g.alpha != 0 {
		*alpha = g.alpha
	}
	if g.k == 0 {
		// cuBLAS leaves C untouched for k = 0 with beta 1; with beta 0 C must become 0.
		if g.beta == 0 && g.batch == 0 {
			b.fail(b.drv.check("cuMemsetD32Async", call(b.drv.memsetD32Async, uintptr(g.c), 0, uintptr(g.m*g.n), b.strm)))
		}
		return
	}
	if p := b.ltPlanFor(what, g); p != nil { // Options.CublasLt
		ev, t0 := b.profStart()
		err := p.run(g.a, g.b, g.c, *alpha, *beta, b.lt.ws, ltWorkspaceBytes, b.strm)
		if ev != 0 {
			b.profEnd(fmt.Sprintf("cublasLt %s %s", what, map[int]string{dtF32: "f32", dtBF16: "bf16"}[g.aType]), ev, t0)
		}
		var e *Error
		if errors.As(err, &e) {
			e.Call = fmt.Sprintf("%s %s (m=%d n=%d k=%d)", e.Call, what, g.m, g.n, g.k) // as cublasGemmEx's below
		}
		b.fail(err)
		return
	}
	ev, t0 := b.profStart()
	fn, name := b.blas.gemmEx, "cublasGemmEx"
	if g.batch > 0 {
		fn, name = b.blas.gemmStridedBatched, "cublasGemmStridedBatchedEx"
	}
	r := call(fn, g.args(b.hblas, alpha, beta)...)
	err := b.blas.check(fmt.Sprintf("%s %s (m=%d n=%d k=%d)", name, what, g.m, g.n, g.k), r)
	if outOfMemory(err) {
		// cuBLAS could not allocate its workspace: give the allocator's cache back and retry once.
		b.alloc.Trim()
		r = call(fn, g.args(b.hblas, alpha, beta)...)
		err = b.blas.check(fmt.Sprintf("%s %s (m=%d n=%d k=%d, after releasing the allocator's cache)", name, what, g.m, g.n, g.k), r)
	}
	runtime.KeepAlive(alpha)
	runtime.KeepAlive(beta)
	if ev != 0 {
		b.profEnd(fmt.Sprintf("cublas %s %s", what, map[int]string{dtF32: "f32", dtBF16: "bf16"}[g.aType]), ev, t0)
	}
	b.fail(err)
}

// gemvMaxRows is the most rows of x the matrix-vector kernels take (GEMV_MAXM in gemv.cu).
const gemvMaxRows = 8

// MatMul implements engine.Backend: out[M,N] = x[M,K]·w[N,K]ᵀ. Row-major matrices are
// column-major transposes, so cuBLAS computes outᵀ[N,M] = W[N,K]·xᵀ[K,M] with A = w (op T).
func (b *Backend) MatMul(out, x, w *engine.Tensor) {
	m, k, n := x.Rows(), x.Cols(), w.Shape[0]
	if w.Shape[1] != k || out.Cols() != n || out.Rows() != m {
		panic(fmt.Sprintf("cuda: matmul shapes out %v x %v w %v", out.Shape, x.Shape, w.Shape))
	}
	b.op(desc("MatMul out x w", out, x, w), func() {
		touched(out)
		if m <= gemvMaxRows && k%8 == 0 {
			// Decoding: a matrix-vector kernel reads the weight once, x stays fp32. Rows of 4096 and
			// more are split over 2-8 warps.
			wpr := 1
			for wpr < 8 && k >= 4096*wpr {
				wpr *= 2
			}
			grid := [3]int{(n + 8/wpr - 1) / (8 / wpr), 1, 1}
			if b.useBF16(w) {
				b.launchGemvBf16(grid, 256, ptr(out), ptr(x), b.bf16Copy(w), int32(m), int32(n), int32(k), int32(wpr))
			} else {
				b.launchGemvF32(grid, 256, ptr(out), ptr(x), ptr(w), int32(m), int32(n), int32(k), int32(wpr))
			}
			return
		}
		g := gemm{transA: opT, transB: opN, m: n, n: m, k: k, lda: k, ldb: k, c: uint64(ptr(out)), cType: dtF32, ldc: n, compute: computeF32}
		b.operands(&g, b.useBF16(w), w, x)
		b.gemm("MatMul", g)
	})
}

// operands sets the GEMM's A and B to the tensors a and x: their bf16 copies with bf16, else
// the fp32 tensors themselves.
func (b *Backend) operands(g *gemm, bf16 bool, a, x *engine.Tensor) {
	if bf16 {
		g.a, g.aType = uint64(b.bf16Copy(a)), dtBF16
		g.b, g.bType = uint64(b.bf16Copy(x)), dtBF16
		return
	}
	g.a, g.aType = uint64(ptr(a)), dtF32
	g.b, g.bType = uint64(ptr(x)), dtF32
}

// AddBias implements engine.Backend.
func (b *Backend) AddBias(x, bias *engine.Tensor) {
	b.op(desc("AddBias x bias", x, bias), func() {
		n := int64(x.Len())
		b.launchAddBias(b.gridFor(n), 256, ptr(x), ptr(bias), n, int32(bias.Len()))
		touched(x)
	})
}

// RMSNorm implements engine.Backend: rmsnorm, one block per group; with Options.FoldBF16,
// rmsnorm_bf16 for a row norm that feeds bf16 GEMMs, which also writes out's bf16 copy.
func (b *Backend) RMSNorm(out, x, w *engine.Tensor, eps float32) {
	b.op(desc("RMSNorm out x w", out, x, w), func() {
		touched(out)
		n := w.Len()
		grid := [3]int{x.Len() / n, 1, 1}
		if ob := b.foldRowDest(out, n); ob != 0 { // Options.FoldBF16 (fold_bf16.go)
			b.launchRmsnormBf16(grid, 256, ptr(out), ob, ptr(x), ptr(w), int32(n), eps)
			b.foldWritten(out)
			return
		}
		b.launchRmsnorm(grid, 256, ptr(out), ptr(x), ptr(w), int32(n), eps)
	})
}

// FusesAddRMSNorm implements engine.AddRMSNormBackend: Options.FusedAddRMSNorm.
func (b *Backend) FusesAddRMSNorm() bool { return b.opts.FusedAddRMSNorm }

// AddRMSNorm implements engine.AddRMSNormBackend with add_rmsnorm, one block per row; with
// Options.FoldBF16, add_rmsnorm_bf16 where normed feeds bf16 GEMMs, which also writes its bf16
// copy.
func (b *Backend) AddRMSNorm(sum, normed, x, y, w *engine.Tensor, eps float32) {
	b.op(desc("AddRMSNorm sum normed x y w", sum, normed, x, y, w), func() {
		touched(sum, normed)
		n := w.Len()
		grid := [3]int{x.Len() / n, 1, 1}
		if ob := b.foldRowDest(normed, n); ob != 0 { // Options.FoldBF16 (fold_bf16.go)
			b.launchAddRmsnormBf16(grid, 256, ptr(sum), ptr(normed), ob, ptr(x), ptr(y), ptr(w), int32(n), eps)
			b.foldWritten(normed)
			return
		}
		b.launchAddRmsnorm(grid, 256, ptr(sum), ptr(normed), ptr(x), ptr(y), ptr(w), int32(n), eps)
	})
}

// RoPE implements engine.Backend.
func (b *Backend) RoPE(x *engine.Tensor, headDim int, pos []int32, cos, sin *engine.Tensor) {
	b.op(desc("RoPE x cos sin", x, cos, sin), func() {
		touched(x)
		pairs := int64(len(pos)) * int64(x.Cols()/2)
		b.launchRope(b.gridFor(pairs), 256, ptr(x), b.constInts(pos), ptr(cos), ptr(sin),
			int32(len(pos)), int32(x.Cols()), int32(headDim))
	})
}

// SwiGLU implements engine.Backend: swiglu; with Options.FoldBF16, swiglu_out_bf16 where out
// feeds a bf16 GEMM (the down projection), which also writes out's bf16 copy.
func (b *Backend) SwiGLU(out, gate, up *engine.Tensor) {
	b.op(desc("SwiGLU out gate up", out, gate, up), func() {
		touched(out)
		n := int64(out.Len())
		if ob := b.foldRowDest(out, out.Cols()); ob != 0 { // Options.FoldBF16 (fold_bf16.go)
			b.launchSwigluOutBf16(b.gridFor(n), 256, ptr(out), ob, ptr(gate), ptr(up), n)
			b.foldWritten(out)
			return
		}
		b.launchSwiglu(b.gridFor(n), 256, ptr(out), ptr(gate), ptr(up), n)
	})
}

// Add implements engine.Backend.
func (b *Backend) Add(out, x, y *engine.Tensor) {
	b.op(desc("Add out x y", out, x, y), func() {
		n := int64(out.Len())
		b.launchAdd(b.gridFor(n), 256, ptr(out), ptr(x), ptr(y), n)
		touched(out)
	})
}

// kvStore is the paged KV cache on the device: per layer one buffer of keys and one of values,
// each [blocks, KV, BS, Dh] of fp32, or of bf16 with Options.BF16KV.
type kvStore struct {
	b                                   *Backend
	layers, kvHeads, blockSize, headDim int
	dt                                  engine.DType
	blocks                              int
	k, v                                []uint64
}

// NewKVStore implements engine.Backend. Its keys and values are fp32, or bf16 with
// Options.BF16KV (KVDTypes).
func (b *Backend) NewKVStore(layers, kvHeads, blockSize, headDim, blocks int, dt engine.DType) (engine.KVStore, error) {
	if !slices.Contains(b.KVDTypes(), dt) {
		if dt == engine.BF16 {
			return nil, fmt.Errorf("cuda: KV cache of %v: off (cuda.Options.BF16KV); the cache holds fp32", dt)
		}
		return nil, fmt.Errorf("cuda: KV cache of %v not implemented (fp32 or, with Options.BF16KV, bf16)", dt)
	}
	s := &kvStore{b: b, layers: layers, kvHeads: kvHeads, blockSize: blockSize, headDim: headDim, dt: dt,
		k: make([]uint64, layers), v: make([]uint64, layers)}
	return s, s.Grow(blocks)
}

func (s *kvStore) per() uint64 { return uint64(s.kvHeads*s.blockSize*s.headDim) * s.elemBytes() }

func (s *kvStore) NumBlocks() int { return s.blocks }

// Grow reallocates every layer's buffers and copies the blocks already there.
func (s *kvStore) Grow(n int) error {
	if n <= s.blocks {
		return nil
	}
	b := s.b
	return b.opErr(desc("KVStore.Grow"), func() error {
		for l := 0; l < s.layers; l++ {
			for _, bufs := range [][]uint64{s.k, s.v} {
				p := b.devAlloc(uint64(n) * s.per())
				if p == 0 {
					return nil
				}
				if bufs[l] != 0 {
					b.enq("cuMemcpyDtoDAsync", b.drv.memcpyDtoDAsync, uintptr(p), uintptr(bufs[l]), uintptr(uint64(s.blocks)*s.per()), b.strm)
					b.alloc.Free(bufs[l])
				}
				bufs[l] = p
			}
		}
		if b.failed() {
			return nil
		}
		s.blocks = n
		return nil
	})
}

func (s *kvStore) CopyBlock(dst, src int) {
	b := s.b
	b.op(desc("KVStore.CopyBlock"), func() {
		per := s.per()
		for l := 0; l < s.layers; l++ {
			for _, p := range []uint64{s.k[l], s.v[l]} {
				b.enq("cuMemcpyDtoDAsync", b.drv.memcpyDtoDAsync, uintptr(p+uint64(dst)*per), uintptr(p+uint64(src)*per), uintptr(per), b.strm)
			}
		}
	})
}

func (s *kvStore) Free() {
	b := s.b
	b.mu.Lock()
	defer b.mu.Unlock()
	for l := range s.k {
		b.alloc.Free(s.k[l])
		b.alloc.Free(s.v[l])
	}
	s.k, s.v, s.blocks = nil, nil, 0
}

// The grouped attention kernel's limits (GQ_MAXG, 32*GQ_MAXD in attention.cu); other shapes
// take the per-head kernel.
const (
	gqaMaxGroup   = 8
	gqaMaxHeadDim = 128
)

// Attention implements engine.Backend: the new keys and values go to their slots (unless
// QKVRoPE put them there: AttnBatch.KVWritten), then attn_paged runs one block per (token,
// head); with Options.TiledAttention, a scoring pass over fresh sequences (freshScratch) runs
// the tiled forward on q, k, v instead; with Options.FoldBF16, attn_paged_gqa_bf16 in place of
// attn_paged_gqa also writes out's bf16 copy for o_proj. Its metadata is one int32 array: per
// token the offset of its sequence's block table and its position, then the block tables.
func (b *Backend) Attention(out, q, k, v *engine.Tensor, store engine.KVStore, layer int, ab *engine.AttnBatch) {
	s := store.(*kvStore)
	T := q.Rows()
	dh := s.headDim
	nh := q.Cols() / dh
	if dh > maxHeadDim {
		panic(fmt.Sprintf("cuda: head_dim %d above the attention kernels' 256", dh))
	}
	meta := make([]int32, 2*T, 2*T+T)
	for sq := range ab.CtxLen {
		off := int32(len(meta))
		meta = append(meta, ab.Blocks[sq]...)
		nNew := ab.SeqStart[sq+1] - ab.SeqStart[sq]
		for t := ab.SeqStart[sq]; t < ab.SeqStart[sq+1]; t++ {
			meta[2*t] = off
			meta[2*t+1] = ab.CtxLen[sq] - nNew + (t - ab.SeqStart[sq])
		}
	}
	flash := b.useFlash(dh) && freshScratch(ab) // a scoring pass: the tiled forward over q, k, v
	if !flash && (s.dt == engine.BF16 || b.opts.SplitKVDecode) {
		b.op(desc("Attention out q k v", out, q, k, v), func() {
			touched(out)
			b.decodeAttention(out, q, k, v, s, layer, ab, meta)
		})
		return
	}
	b.op(desc("Attention out q k v", out, q, k, v), func() {
		touched(out)
		b.writeKV(s, layer, k, v, ab)
		if flash {
			lse := dptr(b.tmp(uint64(4 * max(T*nh, 1)))) // [T, H], not needed here
			b.flashForward(ptr(out), lse, ptr(q), ptr(k), ptr(v), ab.SeqStart, nh, s.kvHeads, dh)
			return
		}
		scale := float32(1 / math.Sqrt(float64(dh)))
		if group := nh / s.kvHeads; group <= gqaMaxGroup && dh <= gqaMaxHeadDim {
			if ob := b.foldRowDest(out, out.Cols()); ob != 0 { // Options.FoldBF16 (fold_bf16.go)
				b.launchAttnPagedGqaBf16([3]int{T, s.kvHeads, 1}, 256, ptr(out), ob, ptr(q), dptr(s.k[layer]), dptr(s.v[layer]),
					b.constInts(meta), int32(nh), int32(s.kvHeads), int32(dh), int32(s.blockSize), scale)
				b.foldWritten(out)
				return
			}
			b.launchAttnPagedGqa([3]int{T, s.kvHeads, 1}, 256, ptr(out), ptr(q), dptr(s.k[layer]), dptr(s.v[layer]),
				b.constInts(meta), int32(nh), int32(s.kvHeads), int32(dh), int32(s.blockSize), scale)
			return
		}
		b.launchAttnPaged([3]int{T, nh, 1}, 128, ptr(out), ptr(q), dptr(s.k[layer]), dptr(s.v[layer]),
			b.constInts(meta), int32(nh), int32(s.kvHeads), int32(dh), int32(s.blockSize), scale)
	})
}

// plainSampled reports whether a row needs no top-k / top-p (sample_rows draws it; the others
// go to sample_topkp): greedy rows, and rows with only a temperature.
func plainSampled(r engine.SampleRow, v int) bool {
	if r.Temperature <= 0 {
		return true
	}
	return (r.TopK <= 0 || r.TopK >= v) && (r.TopP <= 0 || r.TopP >= 1)
}

// Sample implements engine.Backend: every row is drawn on the device, by the same rules as
// engine.SampleLogits; only the ids and log-probs come back. The rows' parameters go up in one
// copy and the results come back in one (one synchronisation a call): plain rows (sample_rows,
// or the split sampler) and top-k/top-p rows (sample_topkp) each take their part of both.
func (b *Backend) Sample(logits *engine.Tensor, rows []engine.SampleRow) ([]int32, []float32, error) {
	R, V := logits.Rows(), logits.Cols()
	if len(rows) != R {
		return nil, nil, fmt.Errorf("cuda: sample: %d rows of parameters for %d rows of logits", len(rows), R)
	}
	var plain, filtered []int32
	for r, p := range rows {
		if plainSampled(p, V) {
			plain = append(plain, int32(r))
		} else {
			filtered = append(filtered, int32(r))
		}
	}
	var ids []int32 // nil when the op does not run
	var lps []float32
	err := b.opErr(desc("Sample logits", logits), func() error {
		if R == 0 {
			ids, lps = []int32{}, []float32{}
			return nil
		}
		// Parameters, set by set (plain rows first): us [n] f64 | rows [n] | temps [n] |
		// topks [n] | topps [n], 24n bytes a set (so every set's us stays 8-byte aligned).
		params := make([]byte, 24*R)
		order := slices.Concat(plain, filtered)
		type part struct{ us, rows, temps, topks, topps uint64 }
		var parts [2]part
		for si, off := 0, 0; si < 2; si++ {
			set := [][]int32{plain, filtered}[si]
			n, at := len(set), 24*off
			parts[si] = part{uint64(at), uint64(at + 8*n), uint64(at + 12*n), uint64(at + 16*n), uint64(at + 20*n)}
			for i, r := range set {
				p := rows[r]
				binary.LittleEndian.PutUint64(params[at+8*i:], math.Float64bits(p.U))
				binary.LittleEndian.PutUint32(params[at+8*n+4*i:], uint32(r))
				binary.LittleEndian.PutUint32(params[at+12*n+4*i:], math.Float32bits(p.Temperature))
				binary.LittleEndian.PutUint32(params[at+16*n+4*i:], uint32(int32(p.TopK)))
				binary.LittleEndian.PutUint32(params[at+20*n+4*i:], math.Float32bits(p.TopP))
			}
			off += n
		}
		dp := uint64(b.upload(unsafe.Pointer(&params[0]), uint64(len(params))))
		out := b.tmp(uint64(8 * R)) // ids [R] | log-probs [R], in the order of plain then filtered
		for si, off := 0, 0; si < 2; si++ {
			set := [][]int32{plain, filtered}[si]
			n := len(set)
			if n == 0 {
				continue
			}
			pt := parts[si]
			dIDs, dLps := dptr(out+uint64(4*off)), dptr(out+uint64(4*(R+off)))
			dRows, dTemps, dUs := dptr(dp+pt.rows), dptr(dp+pt.temps), dptr(dp+pt.us)
			switch S := b.sampleSplits(n, V); {
			case si == 1:
				b.launchSampleTopkp([3]int{n, 1, 1}, 1024, dIDs, dLps, ptr(logits), dRows, dTemps,
					dptr(dp+pt.topks), dptr(dp+pt.topps), dUs, int32(V))
			case S > 1:
				b.sampleSplit(dIDs, dLps, logits, dRows, dTemps, dUs, n, V, S)
			default:
				b.launchSampleRows([3]int{n, 1, 1}, 1024, dIDs, dLps, ptr(logits), dRows, dTemps, dUs, int32(V))
			}
			off += n
		}
		host := make([]uint32, 2*R)
		b.download(unsafe.Pointer(&host[0]), out, uint64(8*R))
		if b.failed() {
			return nil
		}
		ids, lps = make([]int32, R), make([]float32, R)
		for i, r := range order {
			ids[r], lps[r] = int32(host[i]), math.Float32frombits(host[R+i])
		}
		return nil
	})
	return ids, lps, err
}

// sampleSplits is how many blocks share each of n plain rows of V logits (kernels/sample_split.cu):
// 1 (sample_rows, a block a row) unless Options.SplitSample is on and the rows leave SMs idle;
// then enough parts for about two blocks per SM, each of at least Options.SampleSplitMinPart ids
// (default 2048).
func (b *Backend) sampleSplits(n, V int) int {
	if !b.opts.SplitSample || n >= 2*b.sms {
		return 1
	}
	minPart := cmp.Or(b.opts.SampleSplitMinPart, 2048)
	return max(1, min((2*b.sms+n-1)/n, (V+minPart-1)/minPart))
}

// sampleSplit draws the n plain rows rows of logits [R, V] (temps, us: theirs) with each row
// split in S parts (kernels/sample_split.cu) into ids and lps [n].
func (b *Backend) sampleSplit(ids, lps dptr, logits *engine.Tensor, rows, temps, us dptr, n, V, S int) {
	pmax, pmass, parg := dptr(b.tmp(uint64(4*n*S))), dptr(b.tmp(uint64(8*n*S))), dptr(b.tmp(uint64(4*n*S)))
	grid := [3]int{n, S, 1}
	b.launchSampleSplitMax(grid, 256, pmax, ptr(logits), rows, int32(V), int32(S))
	b.launchSampleSplitMass(grid, 256, pmass, parg, pmax, ptr(logits), rows, temps, int32(V), int32(S))
	b.launchSampleSplitPick([3]int{n, 1, 1}, 256, ids, lps, pmass, parg, pmax, ptr(logits), rows, temps, us, int32(V), int32(S))
}

// checkLogProbs checks the arguments of LogProbs and LogProbsInto for logits [R, V].
func checkLogProbs(R, V int, targets []int32, temperature float32) error {
	if len(targets) != R {
		return fmt.Errorf("logprobs: %d targets for %d rows of logits", len(targets), R)
	}
	if !(temperature > 0) {
		return fmt.Errorf("logprobs: temperature must be positive, got %g", temperature)
	}
	for i, t := range targets {
		if t < 0 || int(t) >= V {
			return fmt.Errorf("logprobs: target %d of row %d outside the vocabulary of %d", t, i, V)
		}
	}
	return nil
}

// LogProbs implements engine.Backend: the logprobs kernel writes the log-probs and entropies
// side by side into one scratch buffer [2, R], which comes back in one copy (one
// synchronisation).
func (b *Backend) LogProbs(logits *engine.Tensor, targets []int32, temperature float32) ([]float32, []float32, error) {
	R, V := logits.Rows(), logits.Cols()
	if err := checkLogProbs(R, V, targets, temperature); err != nil {
		return nil, nil, fmt.Errorf("cuda: %w", err)
	}
	if R == 0 {
		return make([]float32, 0), make([]float32, 0), nil
	}
	var lp, ent []float32 // nil when the op does not run
	err := b.opErr(desc("LogProbs logits", logits), func() error {
		host := make([]float32, 2*R)
		d := b.tmp(uint64(8 * R)) // [2, R]: log-probs, entropies
		if d == 0 {
			return nil
		}
		b.launchLogprobs([3]int{R, 1, 1}, 1024, dptr(d), dptr(d+uint64(4*R)), ptr(logits), b.ints(targets), int32(V), temperature)
		b.download(unsafe.Pointer(&host[0]), d, uint64(8*R))
		if !b.failed() {
			lp, ent = host[:R:R], host[R:]
		}
		return nil
	})
	return lp, ent, err
}

// LogProbsInto implements engine.LogProbsIntoBackend: the logprobs kernel of LogProbs (same
// launch, same arithmetic) with its outputs at columns row0.. of out [2, N], and no download. A
// wrong argument is the error of the next op that returns one.
func (b *Backend) LogProbsInto(out *engine.Tensor, row0 int, logits *engine.Tensor, targets []int32, temperature float32) {
	R, V := logits.Rows(), logits.Cols()
	b.op(desc("LogProbsInto out logits", out, logits), func() {
		err := checkLogProbs(R, V, targets, temperature)
		if err == nil && (len(out.Shape) != 2 || out.Shape[0] != 2 || row0 < 0 || row0+R > out.Cols()) {
			err = fmt.Errorf("logprobs: rows %d..%d do not fit out %v (want [2, N])", row0, row0+R, out.Shape)
		}
		if err != nil {
			b.fail(err)
			return
		}
		if R == 0 {
			return
		}
		touched(out)
		o, n := ptr(out), dptr(out.Cols())
		b.launchLogprobs([3]int{R, 1, 1}, 1024, o+4*dptr(row0), o+4*(n+dptr(row0)), ptr(logits), b.ints(targets), int32(V), temperature)
	})
}

var _ engine.LogProbsIntoBackend = (*Backend)(nil)
