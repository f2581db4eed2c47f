package engine

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// DType is the element type of a tensor.
type DType uint8

// Element types. Activations are F32 on every backend; weights may be F32 or BF16.
const (
	F32 DType = iota
	BF16
)

func (d DType) String() string {
	switch d {
	case F32:
		return "F32"
	case BF16:
		return "BF16"
	}
	return fmt.Sprintf("DType(%d)", d)
}

// Tensor is a dense row-major array that lives on a Backend. Its storage is opaque to the
// engine: each backend keeps what it needs in Buf (the CPU backend a []float32 or a packed
// weight; a GPU backend a device pointer).
type Tensor struct {
	Shape []int
	DType DType
	// Buf is the backend's storage handle.
	Buf any
}

// Len is the number of elements.
func (t *Tensor) Len() int { return NumElements(t.Shape) }

// NumElements is the number of elements of a tensor of this shape: the product of its
// dimensions (1 for a scalar's empty shape). It does not check for overflow or negative
// dimensions: callers that read shapes from files check those first.
func NumElements(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// Rows is the product of all dimensions but the last.
func (t *Tensor) Rows() int { return t.Len() / t.Shape[len(t.Shape)-1] }

// Cols is the last dimension.
func (t *Tensor) Cols() int { return t.Shape[len(t.Shape)-1] }

// SampleRow says how to draw one token from one row of logits.
type SampleRow struct {
	// Temperature divides the logits; 0 means greedy (argmax).
	Temperature float32
	// TopK keeps the K most likely tokens; 0 keeps all.
	TopK int
	// TopP keeps the smallest set of most likely tokens whose mass reaches TopP; 0 or 1 keeps all.
	TopP float32
	// U is a uniform random number in [0,1) drawn by the host: the backend samples by inverse
	// CDF, so a given U picks the same token on every backend.
	U float64
}

// AttnBatch describes a ragged batch for attention over the paged KV cache. Sequence s owns
// query rows SeqStart[s]..SeqStart[s+1]-1 of the batch; those tokens sit at the last
// (SeqStart[s+1]-SeqStart[s]) positions of its context of CtxLen[s] tokens, whose keys and values
// are in the cache blocks Blocks[s] (block b holds positions b*BlockSize .. b*BlockSize+BlockSize-1).
type AttnBatch struct {
	SeqStart []int32   // [S+1] query row offsets
	CtxLen   []int32   // [S] context length including the new tokens
	Blocks   [][]int32 // [S][ceil(CtxLen/BlockSize)] block table
	Slots    []int32   // [T] cache slot (block*BlockSize + offset) of each new token
	// Scratch marks a pass that no decode step will extend (Score, Logits: the cache is thrown
	// away after it). A backend may then compute the rows in another summation order than its
	// decode rows (the CPU backend's tiled prefill of long sequences); in a generation batch it
	// must not, since a preempted sample is recomputed by prefill and must give its decode rows'
	// bits again.
	Scratch bool
	// KVWritten says that the new tokens' keys and values are in the cache already (QKVRoPE
	// wrote them): Attention reads k and v as given but does not write them again. The engine
	// sets it only on a backend that fuses QKVRoPE (QKVRoPEBackend).
	KVWritten bool
}

// KVStore is a backend's storage for the paged KV cache: for every layer, keys and values of
// numBlocks blocks, each [num_key_value_heads, BlockSize, head_dim].
type KVStore interface {
	// NumBlocks is the number of blocks allocated so far.
	NumBlocks() int
	// Grow adds blocks so that NumBlocks() == n.
	Grow(n int) error
	// CopyBlock copies block src to block dst in every layer (copy on write of shared blocks).
	CopyBlock(dst, src int)
	// Free releases the storage.
	Free()
}

// Backend runs the fused ops of the decoder on one device. Tensors are created by and live on
// their backend. Ops are enqueued in order; only Download, Sample and LogProbs return data to
// the host (a CPU backend simply runs each op at once). Host slices passed to ops ([]int32
// metadata) are small and may be copied asynchronously.
//
// Shapes use T for the tokens of a ragged batch, D hidden size, H/KV query/key-value heads, Dh
// head dim. Linear weights are [N, K] (nn.Linear layout) and MatMul computes x·Wᵀ.
type Backend interface {
	// Name identifies the backend ("cpu", "cuda").
	Name() string
	// Close releases what the backend holds for itself (pooled buffers); tensors it made must
	// not be used afterwards. A second Close does nothing.
	Close() error
	// Alloc returns a zeroed F32 tensor. Where the next op overwrites every element anyway,
	// AllocUninit (the package function) saves the clearing.
	Alloc(shape ...int) *Tensor
	// Upload copies host data into a new tensor of the given dtype. For a 2-D weight that
	// MatMul will use, set linear so the backend may store it in its matmul layout.
	Upload(dt DType, data []float32, linear bool, shape ...int) (*Tensor, error)
	// Download copies a tensor to the host (waiting for queued work).
	Download(t *Tensor, dst []float32) error
	// Free returns a tensor's storage; t must not be used afterwards.
	Free(t *Tensor)

	// Embedding: out[T,D] = table[ids[t], :].
	Embedding(out, table *Tensor, ids []int32)
	// MatMul: out[M,N] = x[M,K]·w[N,K]ᵀ.
	MatMul(out, x, w *Tensor)
	// AddBias: x[M,N] += b[N].
	AddBias(x, b *Tensor)
	// RMSNorm normalises each group of len(w) consecutive elements of x (a row, or one head of
	// a row): out = x / sqrt(mean(x²)+eps) * w. out may be x.
	RMSNorm(out, x, w *Tensor, eps float32)
	// RoPE rotates x[T, heads*Dh] in place, HF rotate-half convention, pairs (i, i+Dh/2), with
	// angle pos[t]*invFreq[i] given by the tables cos, sin [P, Dh/2].
	RoPE(x *Tensor, headDim int, pos []int32, cos, sin *Tensor)
	// Attention writes k, v [T, KV*Dh] of the new tokens into the cache at layer and then
	// computes causal GQA attention of q [T, H*Dh] over each sequence's context into out.
	Attention(out, q, k, v *Tensor, kv KVStore, layer int, b *AttnBatch)
	// SwiGLU: out = silu(gate) * up, elementwise. out may alias gate.
	SwiGLU(out, gate, up *Tensor)
	// Add: out = a + b, elementwise. out may alias a or b.
	Add(out, a, b *Tensor)
	// GatherRows: out[R,C] = x[rows[r], :].
	GatherRows(out, x *Tensor, rows []int32)

	// NewKVStore allocates KV storage for layers x blocks of [kvHeads, blockSize, headDim] of
	// element type dt: F32, or BF16 on a backend that lists it (KVDTyper), which rounds the
	// keys and values Attention writes to bf16 (to nearest even) and computes as if they were
	// fp32 of those values. Another dt is an error.
	NewKVStore(layers, kvHeads, blockSize, headDim, blocks int, dt DType) (KVStore, error)

	// Sample draws one token from each row of logits [R, V] and returns the ids and the
	// log-prob of each under the distribution sampled from (after temperature, top-k and
	// top-p; for greedy rows, under the untempered softmax).
	Sample(logits *Tensor, rows []SampleRow) (ids []int32, logprobs []float32, err error)
	// LogProbs returns, for each row r of logits [R, V], log softmax(logits[r]/temperature)
	// at targets[r] and the entropy of that distribution.
	LogProbs(logits *Tensor, targets []int32, temperature float32) (logp, entropy []float32, err error)
}

// UninitAllocator is implemented by a backend that can hand out an F32 tensor without clearing
// it: its contents are undefined (a reused buffer's old values, or NaN in a backend's test
// mode), so the caller must write every element before anything reads it. The engine uses it,
// through AllocUninit, for buffers whose first op overwrites them whole (a MatMul, RMSNorm,
// Embedding or GatherRows output, an op's "writes" gradient), and Alloc for those an op
// accumulates into (weight gradients, ScatterAddRows targets, optimizer moments). It saves a
// memset per buffer on a GPU, a clear on the CPU.
type UninitAllocator interface {
	AllocUninit(shape ...int) *Tensor
}

// AllocUninit returns an F32 tensor of shape on b whose contents are undefined: b's
// AllocUninit where it has one (UninitAllocator), else b.Alloc (zeroed). The caller must
// overwrite every element before reading any, and must not pass it to an op that accumulates
// (+=) into its output.
func AllocUninit(b Backend, shape ...int) *Tensor {
	if ub, ok := b.(UninitAllocator); ok {
		return ub.AllocUninit(shape...)
	}
	return b.Alloc(shape...)
}

// MatMulsBackend is implemented by a backend that runs several projections of one input in one
// pass: outs[i][M,N_i] = x[M,K]·ws[i][N_i,K]ᵀ, each as MatMul would give it. The CPU backend
// does (one dispatch over the cores for Q, K and V, one for gate and up); the engine falls back
// to one MatMul per weight on other backends.
type MatMulsBackend interface {
	MatMuls(outs []*Tensor, x *Tensor, ws []*Tensor)
}

// AddRMSNormBackend is implemented by a backend with the residual add and the next RMSNorm
// fused: sum = x + y, normed = RMSNorm(sum)·w in one pass over each row (sum may be x; normed
// is neither), as Add then RMSNorm give them. FusesAddRMSNorm says whether the engine should use
// it: a backend may have the op but keep it off until a run on its hardware verified it (the
// conformance suite checks AddRMSNorm either way).
type AddRMSNormBackend interface {
	FusesAddRMSNorm() bool
	AddRMSNorm(sum, normed, x, y, w *Tensor, eps float32)
}

// addRMSNorm runs sum = x + y, normed = RMSNorm(sum)·w, fused where b says to.
func addRMSNorm(b Backend, sum, normed, x, y, w *Tensor, eps float32) {
	if fb, ok := b.(AddRMSNormBackend); ok && fb.FusesAddRMSNorm() {
		fb.AddRMSNorm(sum, normed, x, y, w, eps)
		return
	}
	b.Add(sum, x, y)
	b.RMSNorm(normed, sum, w, eps)
}

// GateUpSwiGLUBackend is implemented by a backend with the MLP's gate and up projections and
// SwiGLU fused: out[M,I] = silu(x[M,D]·wg[I,D]ᵀ) ⊙ (x·wu[I,D]ᵀ) in one op, as MatMuls then
// SwiGLU give it, without the products making a round trip through memory. gate and up [M,I],
// where not nil, receive x·wgᵀ and x·wuᵀ as well (the training forward keeps them for the
// backward); out is none of x, gate, up. FusesGateUpSwiGLU says whether the engine should use
// it: a backend may have the op but keep it off until a run on its hardware verified it (the
// conformance suite checks GateUpSwiGLU either way).
type GateUpSwiGLUBackend interface {
	FusesGateUpSwiGLU() bool
	GateUpSwiGLU(out, gate, up, x, wg, wu *Tensor)
}

// MatMulsSwitch is implemented by a MatMulsBackend that may keep MatMuls off until a run on its
// hardware verified it: where FusesMatMuls is false the engine runs one MatMul per weight (the
// conformance suite checks MatMuls either way).
type MatMulsSwitch interface {
	FusesMatMuls() bool
}

// QKVRoPEBackend is implemented by a backend that runs what a layer does between its q, k, v
// projections and attention in one pass over the projections' rows: the biases added, RoPE on
// q and k, and the new keys and values written into the paged KV cache. FusesQKVRoPE says
// whether the engine should use it (as FusesAddRMSNorm does; the conformance suite checks
// QKVRoPE either way).
type QKVRoPEBackend interface {
	FusesQKVRoPE() bool
	// QKVRoPE updates q [T, H*Dh], k and v [T, KV*Dh] in place as AddBias(q, qb), AddBias(k,
	// kb), AddBias(v, vb) (each bias nil: none), RoPE(q, ...) and RoPE(k, ...) give them, with
	// headDim, pos, cos and sin as RoPE takes them; then, where kv is not nil, writes k and v
	// into layer of kv at slots [T] as Attention writes them (the caller then sets
	// AttnBatch.KVWritten). Rows that share a slot (a fixed decode batch's padding rows) must
	// bring equal keys and values.
	QKVRoPE(q, k, v, qb, kb, vb *Tensor, headDim int, pos []int32, cos, sin *Tensor, kv KVStore, layer int, slots []int32)
}

// fusesQKVRoPE returns b's QKVRoPEBackend where b has one and says to use it, else nil.
func fusesQKVRoPE(b Backend) QKVRoPEBackend {
	if fb, ok := b.(QKVRoPEBackend); ok && fb.FusesQKVRoPE() {
		return fb
	}
	return nil
}

// SumSquaresManyBackend is implemented by a backend that sums the squares of several tensors in
// one pass with one synchronisation: each result is what SumSquares would give for that tensor.
// The CUDA backend does (the optimizer's gradient norm then costs one host round trip a step,
// not one per tensor); the engine falls back to SumSquares per tensor on other backends.
type SumSquaresManyBackend interface {
	SumSquaresMany(xs []*Tensor) ([]float64, error)
}

// sumSquaresMany returns SumSquares of each of xs, through b's SumSquaresMany where it has one.
// An error names the tensor where the backend says which.
func sumSquaresMany(b TrainBackend, xs []*Tensor, names []string) ([]float64, error) {
	if mb, ok := b.(SumSquaresManyBackend); ok {
		s, err := mb.SumSquaresMany(xs)
		if err != nil {
			return nil, fmt.Errorf("gradient norm of %d tensors (%s...): %w", len(xs), names[0], err)
		}
		return s, nil
	}
	out := make([]float64, len(xs))
	for i, x := range xs {
		s, err := b.SumSquares(x)
		if err != nil {
			return nil, fmt.Errorf("gradient norm of %s: %w", names[i], err)
		}
		out[i] = s
	}
	return out, nil
}

// matMuls runs outs[i] = x·ws[i]ᵀ through b's MatMuls where it has one, else one MatMul each.
func matMuls(b Backend, outs []*Tensor, x *Tensor, ws ...*Tensor) {
	if sw, ok := b.(MatMulsSwitch); ok && !sw.FusesMatMuls() {
		b = plainMatMul{b}
	}
	if mb, ok := b.(MatMulsBackend); ok {
		mb.MatMuls(outs, x, ws)
		return
	}
	for i, w := range ws {
		b.MatMul(outs[i], x, w)
	}
}

// plainMatMul hides a backend's MatMuls (its MatMulsSwitch says off).
type plainMatMul struct{ Backend }

// gateUpSwiGLU runs out = silu(x·wgᵀ)·(x·wuᵀ), fused where b says to; gate and up [M,I] receive
// the products (they are the scratch of the unfused route, so they are written either way
// unless the fused op runs with keep false).
func gateUpSwiGLU(b Backend, out, gate, up, x, wg, wu *Tensor, keep bool) {
	if fb, ok := b.(GateUpSwiGLUBackend); ok && fb.FusesGateUpSwiGLU() {
		if keep {
			fb.GateUpSwiGLU(out, gate, up, x, wg, wu)
		} else {
			fb.GateUpSwiGLU(out, nil, nil, x, wg, wu)
		}
		return
	}
	matMuls(b, []*Tensor{gate, up}, x, wg, wu)
	b.SwiGLU(out, gate, up)
}

var (
	backendsMu sync.Mutex
	backends   = map[string]func(DeviceOptions) (Backend, error){}
)

// RegisterBackend makes a backend available by name (database/sql style), so that the engine
// never imports a backend package: package engine/cpu registers "cpu" and package cuda "cuda"
// in their init functions, and a program makes them available by importing those packages.
// open makes the backend with the options of OpenDevice.
func RegisterBackend(name string, open func(DeviceOptions) (Backend, error)) {
	backendsMu.Lock()
	defer backendsMu.Unlock()
	backends[name] = open
}

// ErrNoDevice is what a backend's open function wraps when the machine has no such device at
// all (for CUDA: no driver library on the loader's search path, or a driver that sees no GPU),
// as opposed to a device that is there but fails to open. OpenDevice("auto") falls back to the
// CPU quietly for the first and says why for the second.
var ErrNoDevice = errors.New("no device")

// cpuPackage is the import path that registers the "cpu" backend, for error messages.
const cpuPackage = "github.com/prolong-rl/prolong/engine/cpu"

// OpenBackend opens a registered backend by name with its default options (OpenDevice is
// what programs call).
func OpenBackend(name string) (Backend, error) { return openBackend(name, DeviceOptions{}) }

// openBackend opens a registered backend by name with opts.
func openBackend(name string, opts DeviceOptions) (Backend, error) {
	backendsMu.Lock()
	open, ok := backends[name]
	var names []string
	for n := range backends {
		names = append(names, n)
	}
	backendsMu.Unlock()
	if !ok {
		sort.Strings(names)
		if name == "cpu" {
			return nil, fmt.Errorf("backend %q is not available (have %v): the program must import %s", name, names, cpuPackage)
		}
		return nil, fmt.Errorf("backend %q is not available (have %v)", name, names)
	}
	return open(opts)
}

// openDevice opens the backend a program's --device flag names: "cpu", a registered backend
// such as "cuda" (a program registers it by importing its package), or "auto": the first
// registered accelerator that opens, else the CPU. The returned line says which backend was
// chosen and, for auto, why, for the program to log: "cpu (avx2), no GPU found" when no
// accelerator is present (every one failed with ErrNoDevice; --device cuda says where it
// looked), the reasons when one is present but did not open. The CPU backend comes from the
// registry too: a program that opens a device imports package engine/cpu (if only for its
// init).
func openDevice(name string, opts DeviceOptions) (Backend, string, error) {
	switch name {
	case "", "cpu":
		b, err := openBackend("cpu", opts)
		if err != nil {
			return nil, "", fmt.Errorf("--device cpu: %w", err)
		}
		return b, b.Name(), nil
	case "auto":
		backendsMu.Lock()
		var accel []string
		for n := range backends {
			if n != "cpu" {
				accel = append(accel, n)
			}
		}
		backendsMu.Unlock()
		sort.Strings(accel)
		// One line per distinct reason (backends of one package fail alike); a device that is
		// not there is no reason to report.
		var why []string
		seen := map[string]bool{}
		for _, n := range accel {
			b, err := openBackend(n, opts)
			if err == nil {
				return b, b.Name() + " (auto: " + n + " opened)", nil
			}
			if !seen[err.Error()] && !errors.Is(err, ErrNoDevice) {
				seen[err.Error()] = true
				why = append(why, err.Error())
			}
		}
		reason := "this program has no accelerator backend built in"
		switch {
		case len(why) > 0:
			reason = strings.Join(why, "; ")
		case len(accel) > 0:
			reason = "no GPU found"
		}
		b, err := openBackend("cpu", opts)
		if err != nil {
			return nil, "", fmt.Errorf("--device auto: no accelerator opened (%s) and %w", reason, err)
		}
		if len(accel) > 0 && len(why) == 0 {
			return b, b.Name() + ", no GPU found", nil
		}
		return b, b.Name() + " (auto: " + reason + ")", nil
	}
	b, err := openBackend(name, opts)
	if err != nil {
		return nil, "", fmt.Errorf("--device %s: %w", name, err)
	}
	return b, b.Name(), nil
}
