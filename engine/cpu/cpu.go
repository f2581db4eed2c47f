package cpu

import (
	"fmt"
	"log/slog"
	"math"
	"math/bits"
	"os"
	"sync"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/internal/kern"
)

// Backend is the reference backend: fp32 compute, weights in fp32 or bf16, all cores used
// (or as many as WithThreads allows). Matmuls run in the SIMD kernels of package kern (AVX-512,
// AVX2 or pure Go, chosen from the CPU's features); every other op is plain Go parallelised
// over rows. A Backend is safe for concurrent use.
type Backend struct {
	thr       kern.Threads // chunks per op; 0: GOMAXPROCS at each call
	poolLimit int64        // bytes of free buffers kept for reuse
	attnTiled int          // training attention runs tiled from this sequence length; 0: DefaultTiledAttentionFrom

	prefillTiled int // scoring passes' attention runs tiled from this sequence length; 0: DefaultTiledPrefillFrom

	fusedMLP bool // the engine runs gate/up and SwiGLU as one op (WithFusedMLP(true))
	qkvRoPE  int8 // FusesQKVRoPE: 0 DefaultFusedQKVRoPE, 1 on, -1 off

	uninit UninitFill // what AllocUninit leaves in a buffer (WithUninitFill)

	mu     sync.Mutex
	pool   map[int][][]float32 // free activation buffers by capacity, a size class (sizeClass)
	pooled int64               // bytes held in pool
	wpool  []*kern.Weight      // free scratch packed weights (training), the most recently freed last

	prec Precision // matmul arithmetic; set before the first upload or matmul
}

// Precision chooses the arithmetic of the CPU backend's matmuls.
type Precision int

const (
	// PrecisionAuto (the default): fp32 weights multiply in fp32; bf16 weights multiply as bf16
	// dot products (x rounded to bf16 too, products summed in fp32: AMX tiles, or AVX512_BF16's
	// VDPBF16PS at about twice the fp32 rate on AMD) where those beat the fp32 path on this CPU
	// (BF16DotPreferred), else widened to fp32. Training matmuls are fp32.
	PrecisionAuto Precision = iota
	// PrecisionFP32: every matmul in fp32 (bf16 weights widened), on any CPU.
	PrecisionFP32
	// PrecisionBF16: as PrecisionAuto, and the training matmuls too (forward and backward, the
	// trainable weights and the activations rounded to bf16, products summed in fp32), like
	// PyTorch's autocast to bf16: parameters, gradients and the optimizer stay fp32. Meant for CPUs
	// with AVX512_BF16 or AMX (HasBF16Dot); elsewhere it runs an exact but slow emulation.
	PrecisionBF16
)

// String names the precision as the --matmul-precision flags spell it.
func (p Precision) String() string {
	return [...]string{"auto", "fp32", "bf16"}[p]
}

// ParsePrecision reads a precision named by String.
func ParsePrecision(s string) (Precision, error) {
	for p := PrecisionAuto; p <= PrecisionBF16; p++ {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("matmul precision %q: want auto, fp32 or bf16", s)
}

// HasBF16Dot reports whether this CPU multiplies bf16 dot products in hardware (AVX512_BF16 or
// AMX).
func HasBF16Dot() bool { return kern.HasBF16Dot() }

// BF16DotEngine names what multiplies bf16 dot products here: "amx" (AMX tiles), "avx512-bf16"
// (VDPBF16PS) or "emulated" (an exact Go emulation, far slower than fp32).
func BF16DotEngine() string { return kern.BF16DotEngine() }

// BF16DotPreferred reports whether bf16 dot products beat the fp32 path on this CPU, which is
// when PrecisionAuto multiplies bf16 weights that way: with AMX, and with AVX512_BF16 on AMD; not
// on Intel CPUs with AVX512_BF16 but no usable AMX, where they measured slower than fp32.
func BF16DotPreferred() bool { return kern.BF16DotPreferred() }

// AMXStatus says whether the CPU's AMX tiles are in use and, if not, why (no AMX, the OS does
// not enable it, or refused the permission).
func AMXStatus() string { return kern.AMXStatus() }

// WithMatMulPrecision sets the arithmetic of the backend's matmuls (PrecisionAuto if not given).
func WithMatMulPrecision(p Precision) Option {
	return func(c *Backend) { c.prec = p }
}

// SetMatMulPrecision is WithMatMulPrecision for a backend already made (one from
// engine.OpenDevice): call it before the first upload or matmul.
func (c *Backend) SetMatMulPrecision(p Precision) { c.prec = p }

// dotWeights reports whether bf16 inference weights are kept as bf16 dot-product weights.
func (c *Backend) dotWeights() bool {
	switch c.prec {
	case PrecisionAuto:
		return kern.BF16DotPreferred()
	case PrecisionBF16:
		return kern.HasBF16Dot()
	}
	return false
}

// trainDot reports whether trainable parameters and activations multiply as bf16 dot products.
func (c *Backend) trainDot() bool { return c.prec == PrecisionBF16 }

// DefaultPoolLimit is the default bound on the free buffers a Backend keeps for reuse (1 GiB):
// a training step frees and re-allocates every activation, and reusing them avoids page faults
// and GC work.
const DefaultPoolLimit = 1 << 30

// Option configures a Backend made by New.
type Option func(*Backend)

// WithPoolLimit bounds the free activation buffers the backend keeps for reuse, by size class
// (at most 25% above the lengths they serve), to bytes in all (DefaultPoolLimit if not given; 0
// keeps none, leaving every freed buffer to the GC). Batches whose sizes change at every step
// share a few classes, so the pool holds about one step's buffers per phase (training,
// generation, scoring) well below the limit; a server may still want a smaller one.
func WithPoolLimit(bytes int64) Option {
	return func(c *Backend) { c.poolLimit = max(bytes, 0) }
}

// WithThreads caps how many parts every op is split into, and so how many cores it keeps busy
// at once; n <= 0 (the default) means runtime.GOMAXPROCS(0), read at each op. The split decides
// the order in which some reductions (RMSNorm's weight gradient, SumSquares) add their partial
// sums, so results are bit-identical for the same thread count, on any machine.
func WithThreads(n int) Option {
	return func(c *Backend) { c.thr = kern.Threads(max(n, 0)) }
}

// WithTiledAttentionFrom makes AttentionTrain and AttentionBackward take the tiled path for calls
// whose longest sequence has at least n rows (DefaultTiledAttentionFrom if not given or n <= 0);
// tests use 1 to run the tiled path on short sequences. Both paths give the same values up to
// fp32 rounding; each is deterministic on its own.
func WithTiledAttentionFrom(n int) Option {
	return func(c *Backend) { c.attnTiled = max(n, 0) }
}

// WithFusedMLP says whether the engine runs the MLP's gate and up projections and SwiGLU as one
// op (GateUpSwiGLU) or as MatMuls then SwiGLU (the default); the results are the same bits
// either way. Off by default: BenchmarkGateUpSwiGLU found the fused op no faster on the
// machine it was written on (2 cores of an AMD EPYC with AVX512_BF16, shared with other work:
// 0.88-1.18× the unfused pair's speed at 1 to 256 rows of the Qwen2.5-0.5B MLP, bf16 and fp32
// weights).
func WithFusedMLP(on bool) Option {
	return func(c *Backend) { c.fusedMLP = on }
}

// UninitFill says what AllocUninit leaves in the buffers it hands out.
type UninitFill int8

const (
	// UninitAsIs (the default) leaves a reused buffer's old values (a new one is zero).
	UninitAsIs UninitFill = iota
	// UninitZero clears it, as Alloc does: a reference run to compare UninitNaN's against.
	UninitZero
	// UninitNaN fills it with NaN, so that a read before a write (a caller that breaks
	// AllocUninit's contract, or an op that accumulates into its output) makes NaN results.
	UninitNaN
)

// WithUninitFill sets what AllocUninit leaves in its buffers (UninitAsIs if not given, or
// UninitNaN where the environment variable PoisonEnv is 1). Tests set UninitNaN to prove that
// the engine writes every uninitialised buffer before reading it.
func WithUninitFill(f UninitFill) Option {
	return func(c *Backend) { c.uninit = f }
}

// PoisonEnv names the environment variable that, set to 1, makes New's backends fill
// AllocUninit's buffers with NaN (UninitNaN) unless an option says otherwise: any test or
// program run with PROLONG_CPU_POISON=1 then checks the contract on its own paths.
const PoisonEnv = "PROLONG_CPU_POISON"

// New returns a CPU backend configured by opts.
func New(opts ...Option) *Backend {
	c := &Backend{poolLimit: DefaultPoolLimit, pool: map[int][][]float32{}}
	if os.Getenv(PoisonEnv) == "1" {
		c.uninit = UninitNaN
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

func init() {
	engine.RegisterBackend("cpu", open)
	if v, ok := os.LookupEnv(SpinWaitEnv); ok {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			slog.Warn("cpu: ignoring a bad spin wait", "env", SpinWaitEnv, "value", v, "default", kern.DefaultSpinWait)
			return
		}
		kern.SetSpinWait(d)
	}
}

// SpinWaitEnv names the environment variable that sets the spin wait of the process (a Go
// duration: "0" sleeps at once; default 30µs): see SetSpinWait.
const SpinWaitEnv = "PROLONG_SPIN_WAIT"

// SetSpinWait sets, for the whole process, how long a thread of the CPU backend that has no
// work polls for the next op's work before it sleeps (like OMP_WAIT_POLICY or ONNX Runtime's
// allow_spinning). Spinning saves the OS wake-up between the hundred or so short ops of a
// decode step (batch-1 decode ~20% faster on a 2-core VM); 0 gives the cores back at once, for
// machines shared with other busy processes. Results do not depend on it.
func SetSpinWait(d time.Duration) { kern.SetSpinWait(d) }

// Name implements engine.Backend: "cpu", the matmul kernels in use, and "bf16 dot" where bf16
// weights multiply as bf16 dot products (and "bf16 training matmuls" with PrecisionBF16).
func (c *Backend) Name() string {
	s := "cpu (" + kern.ISA()
	switch {
	case c.trainDot():
		s += ", bf16 training matmuls"
	case c.dotWeights():
		s += ", bf16 dot"
	}
	return s + ")"
}

// f32 returns the fp32 row-major storage of an activation or a trainable parameter.
func f32(t *engine.Tensor) []float32 {
	switch b := t.Buf.(type) {
	case []float32:
		return b
	case *cpuParam:
		return b.data
	}
	panic(fmt.Sprintf("engine/cpu: tensor %v of dtype %v is not fp32 row-major (%T)", t.Shape, t.DType, t.Buf))
}

// sizeClass rounds a buffer length up to its size class: n itself up to 8, above that the
// least m·2^e >= n with m in 4..8, so a class is at most 25% above its lengths. Activations of
// batches whose token counts differ a little (every training and decode step's) fall into the same
// few classes and reuse each other's buffers; a pool keyed by exact length would fill up with
// lengths that rarely come back.
func sizeClass(n int) int {
	if n <= 8 {
		return n
	}
	s := bits.Len(uint(n)) - 3 // n>>s is in 4..7
	return ((n-1)>>s + 1) << s
}

// Alloc implements engine.Backend. Buffers are recycled through Free: a buffer's capacity is the
// size class of its length, and any freed buffer of that class serves it.
func (c *Backend) Alloc(shape ...int) *engine.Tensor { return c.alloc(UninitZero, shape) }

// AllocUninit implements engine.UninitAllocator: Alloc without the clearing of a reused buffer
// (what it holds is what WithUninitFill says).
func (c *Backend) AllocUninit(shape ...int) *engine.Tensor { return c.alloc(c.uninit, shape) }

// alloc returns a pooled or new buffer of shape, filled as fill says.
func (c *Backend) alloc(fill UninitFill, shape []int) *engine.Tensor {
	t := &engine.Tensor{Shape: append([]int(nil), shape...), DType: engine.F32}
	n := t.Len()
	class := sizeClass(n)
	var buf []float32
	c.mu.Lock()
	if free := c.pool[class]; len(free) > 0 {
		buf = free[len(free)-1][:n]
		c.pool[class] = free[:len(free)-1]
		c.pooled -= 4 * int64(class)
		c.mu.Unlock()
		if fill == UninitZero {
			clear(buf)
		}
	} else {
		c.mu.Unlock()
		buf = make([]float32, n, class)
	}
	if fill == UninitNaN {
		nan := float32(math.NaN())
		for i := range buf {
			buf[i] = nan
		}
	}
	t.Buf = buf
	return t
}

// Free implements engine.Backend. Buffers made by Alloc go back to the pool while it holds less
// than its limit; others (uploaded tensors, parameters, packed weights) are left to the GC.
func (c *Backend) Free(t *engine.Tensor) {
	if t == nil {
		return
	}
	if buf, ok := t.Buf.([]float32); ok && cap(buf) == sizeClass(len(buf)) {
		class := cap(buf)
		c.mu.Lock()
		if c.pooled+4*int64(class) <= c.poolLimit {
			c.pool[class] = append(c.pool[class], buf[:class])
			c.pooled += 4 * int64(class)
		}
		c.mu.Unlock()
	}
	t.Buf = nil
}

// Upload implements engine.Backend. Linear weights become packed kern.Weights (bf16 ones keep half
// the bytes); other tensors are fp32 whatever dt says, since only matmul reads bf16.
func (c *Backend) Upload(dt engine.DType, data []float32, linear bool, shape ...int) (*engine.Tensor, error) {
	t := &engine.Tensor{Shape: append([]int(nil), shape...), DType: dt}
	if t.Len() != len(data) {
		return nil, fmt.Errorf("upload: %d values for shape %v", len(data), shape)
	}
	if !linear {
		t.DType = engine.F32
		t.Buf = append([]float32(nil), data...)
		return t, nil
	}
	if len(shape) != 2 {
		return nil, fmt.Errorf("upload: linear weight must be 2-D, got shape %v", shape)
	}
	switch dt {
	case engine.F32:
		t.Buf = c.thr.NewWeightF32(data, shape[0], shape[1])
	case engine.BF16:
		bits := make([]uint16, len(data))
		kern.F32ToBF16(bits, data)
		if c.dotWeights() || c.prec == PrecisionBF16 {
			t.Buf = c.thr.NewWeightDotBF16(bits, shape[0], shape[1])
		} else {
			t.Buf = c.thr.NewWeightBF16(bits, shape[0], shape[1])
		}
	default:
		return nil, fmt.Errorf("upload: dtype %v not supported", dt)
	}
	return t, nil
}

// Download implements engine.Backend.
func (c *Backend) Download(t *engine.Tensor, dst []float32) error {
	if len(dst) != t.Len() {
		return fmt.Errorf("download: destination has %d values, tensor %v has %d", len(dst), t.Shape, t.Len())
	}
	switch b := t.Buf.(type) {
	case []float32:
		copy(dst, b)
	case *kern.Weight:
		b.Unpack(dst)
	case *cpuParam:
		copy(dst, b.data)
	default:
		return fmt.Errorf("download: unknown storage %T", t.Buf)
	}
	return nil
}

// Embedding implements engine.Backend.
func (c *Backend) Embedding(out, table *engine.Tensor, ids []int32) {
	o, tab, d := f32(out), f32(table), table.Cols()
	for t, id := range ids {
		copy(o[t*d:(t+1)*d], tab[int(id)*d:(int(id)+1)*d])
	}
}

// MatMul implements engine.Backend.
func (c *Backend) MatMul(out, x, w *engine.Tensor) {
	wt := c.packed(w)
	if x.Cols() != wt.K() || out.Cols() != wt.N() || out.Rows() != x.Rows() {
		panic(fmt.Sprintf("engine/cpu: matmul shapes out %v x %v w %v", out.Shape, x.Shape, w.Shape))
	}
	c.thr.MatMul(f32(out), f32(x), x.Rows(), wt)
}

// MatMuls implements engine.MatMulsBackend: the weights' panels are one list of work for the
// cores, x packed once.
func (c *Backend) MatMuls(outs []*engine.Tensor, x *engine.Tensor, ws []*engine.Tensor) {
	if len(outs) != len(ws) {
		panic(fmt.Sprintf("engine/cpu: matmuls with %d outputs for %d weights", len(outs), len(ws)))
	}
	ys, wts := make([][]float32, len(ws)), make([]*kern.Weight, len(ws))
	for i, w := range ws {
		wts[i] = c.packed(w)
		if x.Cols() != wts[i].K() || outs[i].Cols() != wts[i].N() || outs[i].Rows() != x.Rows() {
			panic(fmt.Sprintf("engine/cpu: matmuls shapes out %v x %v w %v", outs[i].Shape, x.Shape, w.Shape))
		}
		ys[i] = f32(outs[i])
	}
	c.thr.MatMuls(ys, f32(x), x.Rows(), wts)
}

// FusesGateUpSwiGLU implements engine.GateUpSwiGLUBackend: WithFusedMLP's setting (off by
// default).
func (c *Backend) FusesGateUpSwiGLU() bool { return c.fusedMLP }

// GateUpSwiGLU implements engine.GateUpSwiGLUBackend with kern's MatMulSwiGLU: each tile of the
// gate and up products gets SwiGLU while it is in cache, so the products are written only where
// gate and up ask for them and never read back. The results are MatMuls' and SwiGLU's bit for
// bit.
func (c *Backend) GateUpSwiGLU(out, gate, up, x, wg, wu *engine.Tensor) {
	g, u := c.packed(wg), c.packed(wu)
	m := x.Rows()
	if x.Cols() != g.K() || u.K() != g.K() || u.N() != g.N() || out.Cols() != g.N() || out.Rows() != m ||
		(gate != nil && (gate.Rows() != m || gate.Cols() != g.N())) || (up != nil && (up.Rows() != m || up.Cols() != g.N())) {
		panic(fmt.Sprintf("engine/cpu: gate/up SwiGLU shapes out %v x %v gate weight %v up weight %v", out.Shape, x.Shape, wg.Shape, wu.Shape))
	}
	var gy, uy []float32
	if gate != nil {
		gy = f32(gate)
	}
	if up != nil {
		uy = f32(up)
	}
	c.thr.MatMulSwiGLU(f32(out), gy, uy, f32(x), m, g, u)
}

// AddBias implements engine.Backend.
func (c *Backend) AddBias(x, b *engine.Tensor) {
	xs, bs := f32(x), f32(b)
	n := len(bs)
	for r := 0; r < len(xs); r += n {
		row := xs[r : r+n]
		for i, v := range bs {
			row[i] += v
		}
	}
}

// RMSNorm implements engine.Backend.
func (c *Backend) RMSNorm(out, x, w *engine.Tensor, eps float32) {
	o, xs, ws := f32(out), f32(x), f32(w)
	n := len(ws)
	groups := len(xs) / n
	c.thr.Parallel(groups, 64, func(lo, hi int) {
		for g := lo; g < hi; g++ {
			row, dst := xs[g*n:(g+1)*n], o[g*n:(g+1)*n]
			var ss float64
			for _, v := range row {
				ss += float64(v) * float64(v)
			}
			inv := float32(1 / math.Sqrt(ss/float64(n)+float64(eps)))
			for i, v := range row {
				dst[i] = v * inv * ws[i]
			}
		}
	})
}

// FusesAddRMSNorm implements engine.AddRMSNormBackend: on.
func (c *Backend) FusesAddRMSNorm() bool { return true }

// AddRMSNorm implements engine.AddRMSNormBackend: per row, the sum and its sum of squares in one
// pass, then the norm while the row is in cache; parallel over rows (Add alone is serial). The
// arithmetic is Add's and RMSNorm's, so the results are theirs bit for bit.
func (c *Backend) AddRMSNorm(sum, normed, x, y, w *engine.Tensor, eps float32) {
	ss, o, xs, ys, ws := f32(sum), f32(normed), f32(x), f32(y), f32(w)
	n := len(ws)
	c.thr.Parallel(len(xs)/n, 64, func(lo, hi int) {
		for g := lo; g < hi; g++ {
			xr, yr, sr, dst := xs[g*n:(g+1)*n], ys[g*n:(g+1)*n], ss[g*n:(g+1)*n], o[g*n:(g+1)*n]
			var sq float64
			for i := range sr {
				v := xr[i] + yr[i]
				sr[i] = v
				sq += float64(v) * float64(v)
			}
			inv := float32(1 / math.Sqrt(sq/float64(n)+float64(eps)))
			for i, v := range sr {
				dst[i] = v * inv * ws[i]
			}
		}
	})
}

// RoPE implements engine.Backend.
func (c *Backend) RoPE(x *engine.Tensor, headDim int, pos []int32, cos, sin *engine.Tensor) {
	xs, cs, sn := f32(x), f32(cos), f32(sin)
	half := headDim / 2
	width := x.Cols()
	c.thr.Parallel(len(pos), 16, func(lo, hi int) {
		for t := lo; t < hi; t++ {
			p := int(pos[t])
			cr, sr := cs[p*half:(p+1)*half], sn[p*half:(p+1)*half]
			row := xs[t*width : (t+1)*width]
			for h := 0; h < width; h += headDim {
				a, b := row[h:h+half], row[h+half:h+headDim]
				for i := range a {
					x1, x2 := a[i], b[i]
					a[i] = x1*cr[i] - x2*sr[i]
					b[i] = x2*cr[i] + x1*sr[i]
				}
			}
		}
	})
}

// SwiGLU implements engine.Backend.
func (c *Backend) SwiGLU(out, gate, up *engine.Tensor) {
	o, g, u := f32(out), f32(gate), f32(up)
	c.thr.Parallel(len(o), 4096, func(lo, hi int) {
		kern.SwiGLU(o[lo:hi], g[lo:hi], u[lo:hi])
	})
}

// Add implements engine.Backend.
func (c *Backend) Add(out, a, b *engine.Tensor) {
	o, as, bs := f32(out), f32(a), f32(b)
	for i := range o {
		o[i] = as[i] + bs[i]
	}
}

// GatherRows implements engine.Backend.
func (c *Backend) GatherRows(out, x *engine.Tensor, rows []int32) {
	o, xs, n := f32(out), f32(x), x.Cols()
	for r, src := range rows {
		copy(o[r*n:(r+1)*n], xs[int(src)*n:(int(src)+1)*n])
	}
}

// Sample implements engine.Backend.
func (c *Backend) Sample(logits *engine.Tensor, rows []engine.SampleRow) ([]int32, []float32, error) {
	ls, v := f32(logits), logits.Cols()
	if len(rows) != logits.Rows() {
		return nil, nil, fmt.Errorf("sample: %d rows of parameters for %d rows of logits", len(rows), logits.Rows())
	}
	ids := make([]int32, len(rows))
	lps := make([]float32, len(rows))
	c.thr.Parallel(len(rows), 1, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			ids[r], lps[r] = engine.SampleLogits(ls[r*v:(r+1)*v], rows[r])
		}
	})
	return ids, lps, nil
}

// TopLogProbs implements engine.TopLogProbsBackend: engine.TopLogProbsRow on each listed row,
// in place (nothing is copied), the rows spread over the cores.
func (c *Backend) TopLogProbs(logits *engine.Tensor, rows []int32, sr []engine.SampleRow, k int) ([]int32, []float32, error) {
	ls, v := f32(logits), logits.Cols()
	if err := engine.CheckTopLogProbs(logits.Rows(), v, rows, sr, k, 0); err != nil {
		return nil, nil, err
	}
	ids, lps := make([]int32, len(rows)*k), make([]float32, len(rows)*k)
	c.thr.Parallel(len(rows), 1, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			r := int(rows[i])
			id, lp := engine.TopLogProbsRow(ls[r*v:(r+1)*v], sr[i], k)
			copy(ids[i*k:], id)
			copy(lps[i*k:], lp)
		}
	})
	return ids, lps, nil
}

// LogProbs implements engine.Backend.
func (c *Backend) LogProbs(logits *engine.Tensor, targets []int32, temperature float32) ([]float32, []float32, error) {
	ls, v := f32(logits), logits.Cols()
	if len(targets) != logits.Rows() {
		return nil, nil, fmt.Errorf("logprobs: %d targets for %d rows of logits", len(targets), logits.Rows())
	}
	if !(temperature > 0) {
		return nil, nil, fmt.Errorf("logprobs: temperature must be positive, got %g", temperature)
	}
	lp := make([]float32, len(targets))
	ent := make([]float32, len(targets))
	c.thr.Parallel(len(targets), 1, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			lp[r], ent[r] = engine.LogProbEntropy(ls[r*v:(r+1)*v], int(targets[r]), temperature)
		}
	})
	return lp, ent, nil
}

// LogProbsInto implements engine.LogProbsIntoBackend: LogProbs's arithmetic on each row, written
// into out [2, N] at columns row0.. . Wrong arguments panic (the engine checks tokens first).
func (c *Backend) LogProbsInto(out *engine.Tensor, row0 int, logits *engine.Tensor, targets []int32, temperature float32) {
	R, v := logits.Rows(), logits.Cols()
	switch {
	case len(targets) != R:
		panic(fmt.Sprintf("engine/cpu: logprobs: %d targets for %d rows of logits", len(targets), R))
	case len(out.Shape) != 2 || out.Shape[0] != 2 || row0 < 0 || row0+R > out.Cols():
		panic(fmt.Sprintf("engine/cpu: logprobs: rows %d..%d do not fit out %v (want [2, N])", row0, row0+R, out.Shape))
	case !(temperature > 0):
		panic(fmt.Sprintf("engine/cpu: logprobs: temperature must be positive, got %g", temperature))
	}
	for i, t := range targets {
		if t < 0 || int(t) >= v {
			panic(fmt.Sprintf("engine/cpu: logprobs: target %d of row %d outside the vocabulary of %d", t, i, v))
		}
	}
	ls, o, n := f32(logits), f32(out), out.Cols()
	c.thr.Parallel(R, 1, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			o[row0+r], o[n+row0+r] = engine.LogProbEntropy(ls[r*v:(r+1)*v], int(targets[r]), temperature)
		}
	})
}

var _ engine.LogProbsIntoBackend = (*Backend)(nil)
