package enginetest

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
)

// Recorder is an engine.Backend that passes every call to another backend and records it: the
// op's name, the identity, storage address and shape of every tensor it is given (or returns),
// the address and length of every host array (token ids, positions, the attention batch's
// metadata, sampling rows) and its other arguments. A test reads the record to prove what a
// code path asks of a backend: that two decode steps issue the same ops on the same buffers, or
// that a loop allocates nothing. The record holds what the engine.Backend interface shows; a
// synchronisation is not a call of its own there but part of the calls that return data
// (Download, Sample, LogProbs).
//
// It forwards engine.MatMulsBackend (with its engine.MatMulsSwitch), engine.GateUpSwiGLUBackend,
// engine.QKVRoPEBackend and engine.KVDTyper when the wrapped backend has them, so the engine
// takes the same paths as on that backend, and engine.UninitAllocator (recorded as an Alloc
// whose Args say "uninit").
type Recorder struct {
	B engine.Backend

	mu    sync.Mutex
	calls []Call
}

// NewRecorder wraps b.
func NewRecorder(b engine.Backend) *Recorder { return &Recorder{B: b} }

// Call is one recorded backend call.
type Call struct {
	Op      string      // the method: "Alloc", "MatMul", "Attention", ...
	Tensors []TensorRef // tensor arguments in order; for Alloc and Upload, the tensor returned
	Host    []HostRef   // host arrays in order
	Args    string      // other arguments, formatted (eps, layer, head dim, the KV store ...)
}

// TensorRef identifies a tensor: the *Tensor, its storage's address (the first element of a
// slice, the pointer of a pointer; 0 for other storage) and its shape.
type TensorRef struct {
	T       *engine.Tensor
	Storage uintptr
	Shape   string
}

// HostRef is a host array passed to an op: what it is, the address of its first element and
// its length.
type HostRef struct {
	What string // "ids", "pos", "rows", "batch.Slots", "batch.Blocks[3]", ...
	Addr uintptr
	Len  int
}

func (c Call) String() string {
	var b strings.Builder
	b.WriteString(c.Op)
	for _, t := range c.Tensors {
		fmt.Fprintf(&b, " %p@%#x%s", t.T, t.Storage, t.Shape)
	}
	for _, h := range c.Host {
		fmt.Fprintf(&b, " %s@%#x[%d]", h.What, h.Addr, h.Len)
	}
	if c.Args != "" {
		b.WriteString(" " + c.Args)
	}
	return b.String()
}

// Take returns the calls recorded since the last Take and starts a new record.
func (r *Recorder) Take() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = nil
	return c
}

func (r *Recorder) add(op string, ts []*engine.Tensor, host []HostRef, args string) {
	c := Call{Op: op, Host: host, Args: args}
	for _, t := range ts {
		c.Tensors = append(c.Tensors, ref(t))
	}
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
}

func ref(t *engine.Tensor) TensorRef {
	if t == nil {
		return TensorRef{}
	}
	var addr uintptr
	if v := reflect.ValueOf(t.Buf); v.IsValid() {
		switch v.Kind() {
		case reflect.Slice, reflect.Pointer, reflect.UnsafePointer:
			addr = v.Pointer()
		}
	}
	return TensorRef{T: t, Storage: addr, Shape: fmt.Sprint(t.Shape)}
}

func hostRef[E any](what string, s []E) HostRef {
	return HostRef{What: what, Addr: uintptr(unsafe.Pointer(unsafe.SliceData(s))), Len: len(s)}
}

// batchRefs are the host arrays of an attention batch, the batch itself first.
func batchRefs(b *engine.AttnBatch) []HostRef {
	h := []HostRef{{What: "batch", Addr: uintptr(unsafe.Pointer(b))},
		hostRef("batch.SeqStart", b.SeqStart), hostRef("batch.CtxLen", b.CtxLen),
		hostRef("batch.Slots", b.Slots), hostRef("batch.Blocks", b.Blocks)}
	for s, bl := range b.Blocks {
		h = append(h, hostRef(fmt.Sprintf("batch.Blocks[%d]", s), bl))
	}
	return h
}

// SameBuffers reports, as an error naming the first difference, whether two records issue the
// same ops on the same tensors (identity, storage and shape) and the same host arrays
// (address and length; for a block-table row only the address, since its length is the
// sequence's, which the context length carries) with the same other arguments.
func SameBuffers(a, b []Call) error {
	for i := range min(len(a), len(b)) {
		x, y := a[i], b[i]
		same := x.Op == y.Op && x.Args == y.Args && slices.Equal(x.Tensors, y.Tensors) && len(x.Host) == len(y.Host)
		for j := 0; same && j < len(x.Host); j++ {
			hx, hy := x.Host[j], y.Host[j]
			same = hx.What == hy.What && hx.Addr == hy.Addr &&
				(hx.Len == hy.Len || strings.HasPrefix(hx.What, "batch.Blocks["))
		}
		if !same {
			return fmt.Errorf("call %d differs:\n\t%v\n\t%v", i, x, y)
		}
	}
	if len(a) != len(b) {
		return fmt.Errorf("%d calls against %d", len(a), len(b))
	}
	return nil
}

// Count is the number of calls of each op in calls.
func Count(calls []Call) map[string]int {
	n := map[string]int{}
	for _, c := range calls {
		n[c.Op]++
	}
	return n
}

// Name implements engine.Backend.
func (r *Recorder) Name() string { return r.B.Name() }

// Close implements engine.Backend.
func (r *Recorder) Close() error { return r.B.Close() }

// Alloc implements engine.Backend.
func (r *Recorder) Alloc(shape ...int) *engine.Tensor {
	t := r.B.Alloc(shape...)
	r.add("Alloc", []*engine.Tensor{t}, nil, "")
	return t
}

// AllocUninit implements engine.UninitAllocator: the wrapped backend's AllocUninit (its Alloc
// where it has none), recorded as Op "Alloc" with Args "uninit", so that a count of Allocs
// counts both.
func (r *Recorder) AllocUninit(shape ...int) *engine.Tensor {
	t := engine.AllocUninit(r.B, shape...)
	r.add("Alloc", []*engine.Tensor{t}, nil, "uninit")
	return t
}

// Upload implements engine.Backend.
func (r *Recorder) Upload(dt engine.DType, data []float32, linear bool, shape ...int) (*engine.Tensor, error) {
	t, err := r.B.Upload(dt, data, linear, shape...)
	r.add("Upload", []*engine.Tensor{t}, []HostRef{hostRef("data", data)}, fmt.Sprintf("%v linear=%v", dt, linear))
	return t, err
}

// Download implements engine.Backend.
func (r *Recorder) Download(t *engine.Tensor, dst []float32) error {
	r.add("Download", []*engine.Tensor{t}, []HostRef{hostRef("dst", dst)}, "")
	return r.B.Download(t, dst)
}

// Free implements engine.Backend.
func (r *Recorder) Free(t *engine.Tensor) {
	r.add("Free", []*engine.Tensor{t}, nil, "")
	r.B.Free(t)
}

// Embedding implements engine.Backend.
func (r *Recorder) Embedding(out, table *engine.Tensor, ids []int32) {
	r.add("Embedding", []*engine.Tensor{out, table}, []HostRef{hostRef("ids", ids)}, "")
	r.B.Embedding(out, table, ids)
}

// MatMul implements engine.Backend.
func (r *Recorder) MatMul(out, x, w *engine.Tensor) {
	r.add("MatMul", []*engine.Tensor{out, x, w}, nil, "")
	r.B.MatMul(out, x, w)
}

// MatMuls implements engine.MatMulsBackend, as the wrapped backend's MatMuls where it has one,
// else one MatMul per weight (what the engine does then).
func (r *Recorder) MatMuls(outs []*engine.Tensor, x *engine.Tensor, ws []*engine.Tensor) {
	r.add("MatMuls", slices.Concat(outs, []*engine.Tensor{x}, ws), nil, fmt.Sprintf("n=%d", len(ws)))
	if mb, ok := r.B.(engine.MatMulsBackend); ok {
		mb.MatMuls(outs, x, ws)
		return
	}
	for i, w := range ws {
		r.B.MatMul(outs[i], x, w)
	}
}

// FusesMatMuls implements engine.MatMulsSwitch: the wrapped backend's answer, true where it has
// MatMuls without a switch.
func (r *Recorder) FusesMatMuls() bool {
	if sw, ok := r.B.(engine.MatMulsSwitch); ok {
		return sw.FusesMatMuls()
	}
	_, ok := r.B.(engine.MatMulsBackend)
	return ok
}

// FusesGateUpSwiGLU implements engine.GateUpSwiGLUBackend: the wrapped backend's answer, false
// where it has no such op (the engine then records MatMuls and SwiGLU).
func (r *Recorder) FusesGateUpSwiGLU() bool {
	fb, ok := r.B.(engine.GateUpSwiGLUBackend)
	return ok && fb.FusesGateUpSwiGLU()
}

// GateUpSwiGLU implements engine.GateUpSwiGLUBackend, as the wrapped backend's op where it has
// one, else MatMuls (into gate and up, or scratch it allocates and frees) then SwiGLU.
func (r *Recorder) GateUpSwiGLU(out, gate, up, x, wg, wu *engine.Tensor) {
	r.add("GateUpSwiGLU", []*engine.Tensor{out, gate, up, x, wg, wu}, nil, "")
	if fb, ok := r.B.(engine.GateUpSwiGLUBackend); ok {
		fb.GateUpSwiGLU(out, gate, up, x, wg, wu)
		return
	}
	g, u := gate, up
	if g == nil {
		g = r.B.Alloc(out.Shape...)
		defer r.B.Free(g)
	}
	if u == nil {
		u = r.B.Alloc(out.Shape...)
		defer r.B.Free(u)
	}
	if mb, ok := r.B.(engine.MatMulsBackend); ok {
		mb.MatMuls([]*engine.Tensor{g, u}, x, []*engine.Tensor{wg, wu})
	} else {
		r.B.MatMul(g, x, wg)
		r.B.MatMul(u, x, wu)
	}
	r.B.SwiGLU(out, g, u)
}

// KVDTypes implements engine.KVDTyper: the wrapped backend's, F32 alone where it has none.
func (r *Recorder) KVDTypes() []engine.DType {
	if t, ok := r.B.(engine.KVDTyper); ok {
		return t.KVDTypes()
	}
	return []engine.DType{engine.F32}
}

// AddBias implements engine.Backend.
func (r *Recorder) AddBias(x, b *engine.Tensor) {
	r.add("AddBias", []*engine.Tensor{x, b}, nil, "")
	r.B.AddBias(x, b)
}

// RMSNorm implements engine.Backend.
func (r *Recorder) RMSNorm(out, x, w *engine.Tensor, eps float32) {
	r.add("RMSNorm", []*engine.Tensor{out, x, w}, nil, fmt.Sprint("eps=", eps))
	r.B.RMSNorm(out, x, w, eps)
}

// RoPE implements engine.Backend.
func (r *Recorder) RoPE(x *engine.Tensor, headDim int, pos []int32, cos, sin *engine.Tensor) {
	r.add("RoPE", []*engine.Tensor{x, cos, sin}, []HostRef{hostRef("pos", pos)}, fmt.Sprint("headDim=", headDim))
	r.B.RoPE(x, headDim, pos, cos, sin)
}

// FusesQKVRoPE implements engine.QKVRoPEBackend: the wrapped backend's answer, false where it
// has no QKVRoPE.
func (r *Recorder) FusesQKVRoPE() bool {
	fb, ok := r.B.(engine.QKVRoPEBackend)
	return ok && fb.FusesQKVRoPE()
}

// QKVRoPE implements engine.QKVRoPEBackend through the wrapped backend's (the engine calls it
// only where FusesQKVRoPE says so).
func (r *Recorder) QKVRoPE(q, k, v, qb, kb, vb *engine.Tensor, headDim int, pos []int32, cos, sin *engine.Tensor, kv engine.KVStore, layer int, slots []int32) {
	r.add("QKVRoPE", []*engine.Tensor{q, k, v, qb, kb, vb, cos, sin}, []HostRef{hostRef("pos", pos), hostRef("slots", slots)},
		fmt.Sprintf("headDim=%d kv=%p layer=%d", headDim, kv, layer))
	fb, ok := r.B.(engine.QKVRoPEBackend)
	if !ok {
		panic(fmt.Sprintf("enginetest: QKVRoPE on a recorder of the %s backend, which has none", r.B.Name()))
	}
	fb.QKVRoPE(q, k, v, qb, kb, vb, headDim, pos, cos, sin, kv, layer, slots)
}

// Attention implements engine.Backend.
func (r *Recorder) Attention(out, q, k, v *engine.Tensor, kv engine.KVStore, layer int, b *engine.AttnBatch) {
	r.add("Attention", []*engine.Tensor{out, q, k, v}, batchRefs(b), fmt.Sprintf("kv=%p layer=%d scratch=%v written=%v", kv, layer, b.Scratch, b.KVWritten))
	r.B.Attention(out, q, k, v, kv, layer, b)
}

// SwiGLU implements engine.Backend.
func (r *Recorder) SwiGLU(out, gate, up *engine.Tensor) {
	r.add("SwiGLU", []*engine.Tensor{out, gate, up}, nil, "")
	r.B.SwiGLU(out, gate, up)
}

// Add implements engine.Backend.
func (r *Recorder) Add(out, a, b *engine.Tensor) {
	r.add("Add", []*engine.Tensor{out, a, b}, nil, "")
	r.B.Add(out, a, b)
}

// GatherRows implements engine.Backend.
func (r *Recorder) GatherRows(out, x *engine.Tensor, rows []int32) {
	r.add("GatherRows", []*engine.Tensor{out, x}, []HostRef{hostRef("rows", rows)}, "")
	r.B.GatherRows(out, x, rows)
}

// NewKVStore implements engine.Backend. The store is the wrapped backend's own (its ops
// recognise it); its Grow and CopyBlock calls are not recorded.
func (r *Recorder) NewKVStore(layers, kvHeads, blockSize, headDim, blocks int, dt engine.DType) (engine.KVStore, error) {
	s, err := r.B.NewKVStore(layers, kvHeads, blockSize, headDim, blocks, dt)
	r.add("NewKVStore", nil, nil, fmt.Sprintf("kv=%p blocks=%d %v", s, blocks, dt))
	return s, err
}

// Sample implements engine.Backend.
func (r *Recorder) Sample(logits *engine.Tensor, rows []engine.SampleRow) ([]int32, []float32, error) {
	r.add("Sample", []*engine.Tensor{logits}, []HostRef{hostRef("rows", rows)}, "")
	return r.B.Sample(logits, rows)
}

// LogProbs implements engine.Backend.
func (r *Recorder) LogProbs(logits *engine.Tensor, targets []int32, temperature float32) ([]float32, []float32, error) {
	r.add("LogProbs", []*engine.Tensor{logits}, []HostRef{hostRef("targets", targets)}, fmt.Sprint("temperature=", temperature))
	return r.B.LogProbs(logits, targets, temperature)
}

// DecodeGraphs implements engine.StepGraphBackend: the wrapped backend's answer (false when it
// has none), so the engine brackets decode steps as it would on that backend.
func (r *Recorder) DecodeGraphs() bool {
	g, ok := r.B.(engine.StepGraphBackend)
	return ok && g.DecodeGraphs()
}

// BeginDecodeStep implements engine.StepGraphBackend: recorded, with the key in Args.
func (r *Recorder) BeginDecodeStep(key int) {
	r.add("BeginDecodeStep", nil, nil, fmt.Sprint(key))
	if g, ok := r.B.(engine.StepGraphBackend); ok {
		g.BeginDecodeStep(key)
	}
}

// EndDecodeStep implements engine.StepGraphBackend: recorded.
func (r *Recorder) EndDecodeStep() error {
	r.add("EndDecodeStep", nil, nil, "")
	if g, ok := r.B.(engine.StepGraphBackend); ok {
		return g.EndDecodeStep()
	}
	return nil
}
