package cuda

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
)

// Backend is the CUDA engine backend: one device, one stream, one cuBLAS handle, the kernels of
// kernels/ compiled by NVRTC. Ops are enqueued on the stream; Download, Sample, LogProbs and
// SumSquares wait for it. The CUDA context is made current on the calling OS thread for each
// op (the goroutine is locked to its thread for the op), so any goroutine may drive it; ops
// are serialised by a mutex.
//
// Errors. A failure inside an op that returns no error (an out-of-memory in Alloc, a failed
// launch) is kept, named with the op and its shapes, and returned by the next call that
// returns an error; the ops between do nothing (their inputs may be what the failed op did not
// write). Once returned it is cleared and the backend works again: an out-of-memory (after the
// allocator released its cache and retried), a refused launch or matmul are recoverable. A
// kernel fault (an illegal address, say) is not: CUDA answers every later call of the process
// with it, so every op returns it, and Open refuses the device from then on. A fault surfaces
// at the next synchronisation, so its error lists the ops enqueued since the last one;
// PROLONG_CUDA_SYNC=1 synchronises after every op, and the error then names the op that
// faulted (as CUDA_LAUNCH_BLOCKING=1 does for PyTorch).
type Backend struct {
	opts  Options
	drv   *driver
	comp  compiler
	blas  *cublas
	name  string
	arch  string // the target the kernels were compiled for: compute_XY (PTX) or sm_XY (cubin)
	sms   int
	ctx   uintptr
	strm  uintptr
	hblas uintptr
	fns   map[string]uintptr
	alloc *allocator
	// tiled is Options.TiledAttention, switchable by SetTiledAttention.
	tiled atomic.Bool

	mu      sync.Mutex
	pending error // the first error of ops that return none, until a call returns it
	dead    error // a fatal error: the context is lost
	cur     opDesc
	recent  [16]opDesc // ring of the ops enqueued since the last synchronisation
	nRecent int
	// syncEach synchronises after every op (PROLONG_CUDA_SYNC=1).
	syncEach bool
	// per-op scratch freed at the end of the op
	scratch []uint64
	// recent small metadata uploads, reused when the same values come again (the positions,
	// slots and block tables of one step are the same for every layer)
	meta     [8]metaEntry
	metaNext int
	prof     *profiler // nil unless profiling
	events   []uintptr // CUDA events of the profiler

	// splitBuf holds decode_attn's partials (decode.go), kept between ops and grown on demand:
	// the kernels run in stream order, so the next op's launches reuse it after this one's.
	splitBuf, splitBufBytes uint64

	// The decode steps being recorded, by the OS thread their goroutine is locked to between
	// BeginDecodeStep and EndDecodeStep (another goroutine's ops run as always meanwhile);
	// rec is the current op's (set by enter); the buckets' graphs; whether an arena upload
	// from pinned memory may still be running.
	recs      map[int]*stepRec
	rec       *stepRec
	graphs    map[int]*stepGraph
	arenaBusy bool

	// lt is the cuBLASLt GEMM path (Options.CublasLt, ltgemm.go).
	lt ltGemms

	// bf16Weights says that a linear weight was uploaded as bf16: GEMMs with it multiply bf16
	// operands, so Options.FoldBF16 writes activations' bf16 copies without BF16Matmul too.
	bf16Weights bool

	// topBuf is the host buffer TopLogProbs downloads rows of logits into when it ranks them on
	// the host (without Options.DeviceTopLogProbs), kept between calls; topMu guards it.
	topMu  sync.Mutex
	topBuf []float32
}

// metaEntry is a cached upload of int32 metadata: a device copy of host, never written while
// cached, so work already enqueued that reads it stays correct when it is evicted and reused.
type metaEntry struct {
	host []int32
	dev  uint64
}

// buf is a tensor's device storage. A matmul operand may keep a bf16 copy (bf), valid while
// bfVer == ver.
type buf struct {
	*devMem
	bytes   uint64
	param   bool
	ver     int
	bfVer   int
	cleanup runtime.Cleanup
}

// devMem is the device memory a buf holds, apart from the buf so that a cleanup can free it
// when a tensor is dropped without Free (the engine frees activations, but a replaced model's
// weights are simply dropped: the rollout server loads a new model at every weight update).
type devMem struct {
	ptr, bf uint64
}

// newBuf makes a buf whose memory returns to the allocator when it becomes unreachable.
func (b *Backend) newBuf(ptr, bytes uint64) *buf {
	m := &devMem{ptr: ptr}
	bf := &buf{devMem: m, bytes: bytes}
	alloc := b.alloc
	bf.cleanup = runtime.AddCleanup(bf, func(m *devMem) {
		alloc.Free(m.ptr)
		alloc.Free(m.bf)
	}, m)
	return bf
}

func devBuf(t *engine.Tensor) *buf {
	b, ok := t.Buf.(*buf)
	if !ok {
		panic(fmt.Sprintf("cuda: tensor %v is not on the CUDA backend (%T)", t.Shape, t.Buf))
	}
	return b
}

func ptr(t *engine.Tensor) dptr { return dptr(devBuf(t).ptr) }

// touched marks tensors as written: their bf16 copies, if any, are stale. Every op calls it
// on what it writes.
func touched(ts ...*engine.Tensor) {
	for _, t := range ts {
		if t == nil {
			continue
		}
		if b, ok := t.Buf.(*buf); ok {
			b.ver++
		}
	}
}

var (
	openMu sync.Mutex
	opened = map[Options]*Backend{}
	// lost holds, per GPU ordinal, the fatal error that lost its context in this process.
	lost = map[int]error{}

	// The libraries open loads (tests put fakes in their place).
	loadDriverFn                            = loadDriver
	loadCompilerFn func() (compiler, error) = func() (compiler, error) { return loadNVRTC() }
	loadCublasFn   func() (*cublas, error)  = loadCublas
)

// minComputeCapability is the oldest GPU the backend runs on: sm_80 (Ampere), the first with
// bf16 tensor cores, which the kernels (bf16 conversions) and the cuBLAS calls (CUDA_R_16BF
// operands) need.
const minComputeCapability = 80

// Open returns the backend of a device, loading the driver, NVRTC and cuBLAS and compiling the
// kernels on first use. Backends are cached per Options. A device whose context a fatal error
// lost (a kernel fault) is refused for the rest of the process: CUDA cannot recover it.
func Open(o Options) (*Backend, error) {
	openMu.Lock()
	defer openMu.Unlock()
	if err := lost[o.Device]; err != nil {
		return nil, fmt.Errorf("cuda: GPU %d is unusable in this process after a fatal error (CUDA cannot recover from it; restart the process): %w", o.Device, err)
	}
	if b := opened[o]; b != nil {
		return b, nil
	}
	b, err := open(o)
	if err != nil {
		return nil, err
	}
	opened[o] = b
	return b, nil
}

func open(o Options) (*Backend, error) {
	drv, err := loadDriverFn()
	if err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if r := call(drv.init, 0); r == cudaErrorNoDevice {
		return nil, noDevice{fmt.Errorf("cuda: %w", drv.check("cuInit", r))}
	} else if err := drv.check("cuInit", r); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	var count int32
	if err := drv.check("cuDeviceGetCount", call(drv.deviceGetCount, uintptr(unsafe.Pointer(&count)))); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	if count == 0 {
		return nil, noDevice{fmt.Errorf("cuda: no GPU present (cuDeviceGetCount: 0)")}
	}
	if o.Device < 0 || o.Device >= int(count) {
		return nil, fmt.Errorf("cuda: device %d asked for, %d present", o.Device, count)
	}
	var dev int32
	if err := drv.check("cuDeviceGet", call(drv.deviceGet, uintptr(unsafe.Pointer(&dev)), uintptr(o.Device))); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	nameBuf := make([]byte, 256)
	call(drv.deviceGetName, uintptr(unsafe.Pointer(&nameBuf[0])), 256, uintptr(dev))
	gpu := gostr(uintptr(unsafe.Pointer(&nameBuf[0])))
	major, err := drv.attribute(int(dev), attrComputeCapabilityMajor)
	if err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	minor, _ := drv.attribute(int(dev), attrComputeCapabilityMinor)
	sms, _ := drv.attribute(int(dev), attrMultiprocessorCount)
	cc := 10*major + minor
	if cc < minComputeCapability {
		return nil, fmt.Errorf("cuda: GPU %d (%s) is sm_%d; the CUDA backend needs sm_%d (Ampere) or newer: its kernels and matmuls use bf16, which older GPUs lack",
			o.Device, gpu, cc, minComputeCapability)
	}
	b := &Backend{opts: o, drv: drv, sms: sms, fns: map[string]uintptr{}, syncEach: os.Getenv("PROLONG_CUDA_SYNC") == "1"}
	b.tiled.Store(o.TiledAttention)
	if err := drv.check("cuDevicePrimaryCtxRetain", call(drv.primaryCtxRetain, uintptr(unsafe.Pointer(&b.ctx)), uintptr(dev))); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	if err := drv.check("cuCtxSetCurrent", call(drv.ctxSetCurrent, b.ctx)); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	if err := drv.check("cuStreamCreate", call(drv.streamCreate, uintptr(unsafe.Pointer(&b.strm)), 1)); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	b.alloc = newAllocator(func(n uint64) (uint64, error) {
		var p uint64
		err := drv.check("cuMemAlloc", call(drv.memAlloc, uintptr(unsafe.Pointer(&p)), uintptr(n)))
		return p, err
	}, func(p uint64) error { return drv.check("cuMemFree", call(drv.memFree, uintptr(p))) })
	b.alloc.sync = func() { call(drv.streamSynchronize, b.strm) }
	b.alloc.reclaim = func() {
		runtime.GC()
		time.Sleep(20 * time.Millisecond) // cleanups run on their own goroutine
	}

	if b.comp, err = loadCompilerFn(); err != nil {
		return nil, err
	}
	start := time.Now()
	mod, err := b.loadKernels(cc)
	if err != nil {
		return nil, err
	}
	for _, n := range KernelNames() {
		var f uintptr
		if err := drv.check("cuModuleGetFunction "+n, call(drv.moduleGetFunction, uintptr(unsafe.Pointer(&f)), mod, uintptr(unsafe.Pointer(cstr(n))))); err != nil {
			return nil, fmt.Errorf("cuda: %w", err)
		}
		b.fns[n] = f
	}
	b.name = fmt.Sprintf("cuda (%s, sm_%d)", gpu, cc)
	slog.Debug("cuda kernels ready", "target", b.arch, "took", time.Since(start))

	if b.blas, err = loadCublasFn(); err != nil {
		return nil, err
	}
	if err := b.blas.check("cublasCreate", call(b.blas.create, uintptr(unsafe.Pointer(&b.hblas)))); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	if err := b.blas.check("cublasSetStream", call(b.blas.setStream, b.hblas, b.strm)); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	if o.CublasLt {
		b.lt.on = b.setupLt() == nil // else logged: the GEMMs stay on cublasGemmEx
	}
	return b, nil
}

// loadKernels compiles the kernels for the GPU of compute capability cc and loads them. The
// target is the highest architecture NVRTC supports at or below the GPU's (a GPU newer than
// the NVRTC runs that PTX, which the driver compiles for it). When the driver refuses the PTX
// as too new (CUDA_ERROR_UNSUPPORTED_PTX_VERSION: an NVRTC newer than the driver), the kernels
// are compiled to a cubin for the GPU's own architecture instead, which needs no PTX
// compilation by the driver. b.arch says which target was loaded.
func (b *Backend) loadKernels(cc int) (uintptr, error) {
	ver, err := b.comp.Version()
	if err != nil {
		return 0, err
	}
	target := cc
	if archs, err := b.comp.SupportedArchs(); err == nil && len(archs) > 0 {
		target = 0
		for _, a := range archs {
			if a <= cc {
				target = max(target, a)
			}
		}
		if target == 0 {
			return 0, fmt.Errorf("cuda: NVRTC %s compiles for compute_%d to compute_%d, none at or below the GPU's sm_%d", ver, archs[0], archs[len(archs)-1], cc)
		}
		if target != cc {
			slog.Info("cuda: NVRTC has no target for this GPU; compiling for the highest below it, which the driver compiles on for the GPU",
				"gpu", fmt.Sprintf("sm_%d", cc), "nvrtc", ver, "target", fmt.Sprintf("compute_%d", target))
		}
	}
	load := func(arch string) (uintptr, error) {
		code, _, err := compileKernels(b.comp, arch)
		if err != nil {
			return 0, err
		}
		var mod uintptr
		err = b.drv.check("cuModuleLoadData ("+arch+")", call(b.drv.moduleLoadData, uintptr(unsafe.Pointer(&mod)), uintptr(unsafe.Pointer(&code[0]))))
		runtime.KeepAlive(code)
		return mod, err
	}
	b.arch = fmt.Sprintf("compute_%d", target)
	mod, err := load(b.arch)
	var e *Error
	if err == nil || !errors.As(err, &e) || e.Code != cudaErrorUnsupportedPTXVersion {
		if err != nil {
			return 0, fmt.Errorf("cuda: %w", err)
		}
		return mod, nil
	}
	dv := "?"
	var v int32
	if call(b.drv.driverGetVersion, uintptr(unsafe.Pointer(&v))) == 0 {
		dv = fmt.Sprintf("%d.%d", v/1000, v%1000/10)
	}
	slog.Info("cuda: the driver refuses NVRTC's PTX as too new; loading a cubin instead", "driver", dv, "nvrtc", ver, "target", fmt.Sprintf("sm_%d", target))
	b.arch = fmt.Sprintf("sm_%d", target)
	mod, cerr := load(b.arch)
	if cerr != nil {
		return 0, fmt.Errorf("cuda: the driver (CUDA %s) refuses the PTX of NVRTC %s (%v), and the cubin for sm_%d failed too: %w; install an NVRTC no newer than the driver (PROLONG_NVRTC) or a newer driver",
			dv, ver, err, target, cerr)
	}
	return mod, nil
}

// enter locks the backend and makes its context current on this OS thread; false after a
// fatal error.
func (b *Backend) enter() bool {
	b.mu.Lock()
	runtime.LockOSThread()
	b.rec = nil
	if len(b.recs) > 0 {
		b.rec = b.recs[threadID()]
	}
	if b.dead != nil {
		return false
	}
	if r := call(b.drv.ctxSetCurrent, b.ctx); r != 0 {
		b.fail(b.drv.check("cuCtxSetCurrent", r))
		return false
	}
	return true
}

// leave frees the op's scratch and unlocks.
func (b *Backend) leave() {
	if b.rec != nil { // the recorded launches run at EndDecodeStep, which frees it
		b.rec.frees = append(b.rec.frees, b.scratch...)
		b.scratch = b.scratch[:0]
		b.rec = nil
	}
	for _, p := range b.scratch {
		b.alloc.Free(p)
	}
	b.scratch = b.scratch[:0]
	b.cur = opDesc{}
	runtime.UnlockOSThread()
	b.mu.Unlock()
}

// begin records op d as the one running (errors name it) and, unless an error is pending,
// among the ops enqueued since the last synchronisation. It reports whether the op may run: not
// after an error not yet returned, and not on a tensor without device memory.
func (b *Backend) begin(d opDesc) bool {
	b.cur = d
	if b.pending != nil || b.dead != nil {
		return false
	}
	if d.missing >= 0 {
		b.fail(fmt.Errorf("operand %d (shape %v) has no device memory: its allocation failed earlier", d.missing, d.shapes[d.missing]))
		return false
	}
	b.recent[b.nRecent%len(b.recent)] = d
	b.nRecent++
	return true
}

// end synchronises after the op with PROLONG_CUDA_SYNC=1, so that a fault names it.
func (b *Backend) end() {
	if b.syncEach && b.pending == nil && b.dead == nil {
		b.fail(b.synchronize("cuStreamSynchronize"))
	}
}

// op runs body as one op of the backend, described by d: entered (locked, its context current
// on this OS thread) before, left (the op's scratch freed, unlocked) after, also when body
// panics. After an error not yet returned, body does not run.
func (b *Backend) op(d opDesc, body func()) {
	ok := b.enter()
	defer b.leave()
	if ok && b.begin(d) {
		body()
		b.end()
	}
}

// opErr is op for an op that returns an error: an earlier op's error not yet returned (body
// does not run), else body's or the first error recorded while it ran, else nil. Returning an
// error clears it, unless it was fatal.
func (b *Backend) opErr(d opDesc, body func() error) error {
	ok := b.enter()
	defer b.leave()
	if !ok {
		return b.dead
	}
	if b.pending != nil {
		return b.take()
	}
	var err error
	if b.begin(d) {
		err = body()
		b.end()
	}
	if b.dead != nil {
		return b.dead
	}
	if err == nil {
		err = b.pending
	}
	b.pending = nil
	return err
}

// take returns the pending error and clears it.
func (b *Backend) take() error {
	err := b.pending
	b.pending = nil
	return err
}

// fail records the first error of an op, named with the op. A fatal one loses the backend:
// every later op returns it, and Open refuses the device.
func (b *Backend) fail(err error) {
	if err == nil || b.dead != nil {
		return
	}
	err = fmt.Errorf("cuda: %s: %w", b.cur, err)
	if fatal(err) {
		b.dead = err
		openMu.Lock()
		if opened[b.opts] == b {
			delete(opened, b.opts)
		}
		lost[b.opts.Device] = err
		openMu.Unlock()
		return
	}
	if b.pending == nil {
		b.pending = err
	}
}

// failed says whether an error is pending or fatal: the rest of the op is skipped.
func (b *Backend) failed() bool { return b.pending != nil || b.dead != nil }

// synchronize waits for the stream. A kernel fault surfaces here, not at its launch: the
// error lists the ops enqueued since the last synchronisation, the faulting one among them.
func (b *Backend) synchronize(what string) error {
	r := call(b.drv.streamSynchronize, b.strm)
	n := b.nRecent
	b.nRecent = 0
	if r == 0 {
		b.arenaBusy = false
		return nil
	}
	err := b.drv.check(what, r)
	if !fatal(err) || n == 0 {
		return err
	}
	var ops []string
	for i := max(0, n-len(b.recent)); i < n; i++ {
		ops = append(ops, b.recent[i%len(b.recent)].String())
	}
	more := ""
	if n > len(b.recent) {
		more = fmt.Sprintf(" (the last %d of %d)", len(b.recent), n)
	}
	return fmt.Errorf("%w; the fault is in one of the ops enqueued since the last synchronisation%s: %s (PROLONG_CUDA_SYNC=1 synchronises after every op and names the one)",
		err, more, strings.Join(ops, "; "))
}

// Err returns the error an op recorded and no call has returned yet, or the fatal one.
func (b *Backend) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead != nil {
		return b.dead
	}
	return b.pending
}

// Name implements engine.Backend.
func (b *Backend) Name() string { return b.name }

// MemoryStats reports device bytes in use by tensors, cached by the allocator, and the peak in use.
func (b *Backend) MemoryStats() (inUse, cached, peak uint64) { return b.alloc.Stats() }

// devAlloc allocates bytes of device memory (no zeroing).
func (b *Backend) devAlloc(bytes uint64) uint64 {
	if b.rec != nil {
		b.rec.breakf("%s allocates %d bytes of device memory", b.cur, bytes)
	}
	p, err := b.alloc.Alloc(bytes)
	if err != nil {
		b.fail(err)
		return 0
	}
	return p
}

// tmp allocates scratch device memory freed when the op ends.
func (b *Backend) tmp(bytes uint64) uint64 {
	p := b.devAlloc(bytes)
	if p != 0 {
		b.scratch = append(b.scratch, p)
	}
	return p
}

// upload copies host memory into a new scratch buffer.
func (b *Backend) upload(src unsafe.Pointer, bytes uint64) dptr {
	if bytes == 0 {
		return 0
	}
	if b.rec != nil {
		return b.put(0, src, bytes, false)
	}
	p := b.tmp(bytes)
	if p == 0 {
		return 0
	}
	b.fail(b.drv.check("cuMemcpyHtoDAsync", call(b.drv.memcpyHtoDAsync, uintptr(p), uintptr(src), uintptr(bytes), b.strm)))
	return dptr(p)
}

func (b *Backend) ints(v []int32) dptr {
	if len(v) == 0 {
		return 0
	}
	return b.upload(unsafe.Pointer(&v[0]), uint64(4*len(v)))
}

// constInts is ints for metadata that repeats across ops: the same values return the same
// device buffer without a copy.
func (b *Backend) constInts(v []int32) dptr {
	if len(v) == 0 {
		return 0
	}
	if b.rec != nil {
		var pc [1]uintptr
		runtime.Callers(2, pc[:])
		return b.put(pc[0], unsafe.Pointer(&v[0]), uint64(4*len(v)), true)
	}
	for i := range b.meta {
		if e := &b.meta[i]; e.dev != 0 && slices.Equal(e.host, v) {
			return dptr(e.dev)
		}
	}
	e := &b.meta[b.metaNext]
	b.metaNext = (b.metaNext + 1) % len(b.meta)
	if e.dev != 0 {
		b.alloc.Free(e.dev)
		e.dev = 0
	}
	p := b.devAlloc(uint64(4 * len(v)))
	if p == 0 {
		return 0
	}
	b.fail(b.drv.check("cuMemcpyHtoDAsync", call(b.drv.memcpyHtoDAsync, uintptr(p), uintptr(unsafe.Pointer(&v[0])), uintptr(4*len(v)), b.strm)))
	e.host = append(e.host[:0], v...)
	e.dev = p
	return dptr(p)
}

func (b *Backend) floats(v []float32) dptr {
	if len(v) == 0 {
		return 0
	}
	return b.upload(unsafe.Pointer(&v[0]), uint64(4*len(v)))
}

// download copies device memory to host memory and waits.
func (b *Backend) download(dst unsafe.Pointer, src uint64, bytes uint64) {
	if bytes == 0 || b.failed() {
		return
	}
	if b.rec != nil {
		b.fail(fmt.Errorf("a download inside a recorded decode step (between BeginDecodeStep and EndDecodeStep)"))
		return
	}
	b.fail(b.drv.check("cuMemcpyDtoHAsync", call(b.drv.memcpyDtoHAsync, uintptr(dst), uintptr(src), uintptr(bytes), b.strm)))
	b.fail(b.synchronize("cuStreamSynchronize"))
}

// enq enqueues a driver call on the stream (a copy, a memset); inside a recorded decode step it
// is recorded among the step's actions instead, and the step runs eagerly.
func (b *Backend) enq(what string, fn uintptr, args ...uintptr) {
	if b.rec != nil {
		b.rec.breakf("%s enqueues %s", b.cur, what)
		cur := b.cur
		b.rec.actions = append(b.rec.actions, func() {
			b.cur = cur
			b.fail(b.drv.check(what, call(fn, args...)))
		})
		return
	}
	b.fail(b.drv.check(what, call(fn, args...)))
}

// launch enqueues kernel name on a grid of blocks of threads, its arguments in their 8-byte
// slots (args.go). Only the typed launchers of launchers_gen.go call it.
func (b *Backend) launch(name string, grid [3]int, threads int, args ...uint64) {
	if b.failed() {
		return
	}
	if grid[0] == 0 || grid[1] == 0 || grid[2] == 0 {
		return
	}
	f, ok := b.fns[name]
	if !ok {
		panic("cuda: no kernel " + name)
	}
	if b.rec != nil {
		b.recordLaunch(name, f, grid, threads, args)
		return
	}
	b.launchNow(name, f, grid, threads, args)
}

// launchNow enqueues kernel f (named name) on the stream.
func (b *Backend) launchNow(name string, f uintptr, grid [3]int, threads int, args []uint64) {
	if b.failed() {
		return
	}
	k := packArgs(args)
	ev, t0 := b.profStart()
	r := call(b.drv.launchKernel, f, uintptr(grid[0]), uintptr(grid[1]), uintptr(grid[2]),
		uintptr(threads), 1, 1, 0, b.strm, uintptr(k.params()), 0)
	runtime.KeepAlive(k)
	b.profEnd(name, ev, t0)
	if r != 0 {
		b.fail(b.drv.check(fmt.Sprintf("launch %s grid %v block %d", name, grid, threads), r))
	}
}

// gridFor is the 1-D grid of a grid-stride loop over n elements with 256 threads.
func (b *Backend) gridFor(n int64) [3]int {
	g := (n + 255) / 256
	g = min(g, int64(b.sms)*32)
	return [3]int{int(max(g, 1)), 1, 1}
}

// Upload implements engine.Backend. Linear BF16 weights are stored as bf16 (converted on the
// device, round to nearest even); everything else as fp32.
func (b *Backend) Upload(dt engine.DType, data []float32, linear bool, shape ...int) (*engine.Tensor, error) {
	t := &engine.Tensor{Shape: append([]int(nil), shape...), DType: engine.F32}
	if t.Len() != len(data) {
		return nil, fmt.Errorf("cuda: upload: %d values for shape %v", len(data), shape)
	}
	if linear && len(shape) != 2 {
		return nil, fmt.Errorf("cuda: upload: linear weight must be 2-D, got shape %v", shape)
	}
	if dt != engine.F32 && dt != engine.BF16 {
		return nil, fmt.Errorf("cuda: upload: dtype %v not supported", dt)
	}
	var res *engine.Tensor // nil when the op does not run
	err := b.opErr(desc("Upload out", t), func() error {
		n := uint64(len(data)) * 4
		if linear && dt == engine.BF16 {
			t.DType = engine.BF16
			b.bf16Weights = true
			p := b.devAlloc(max(n/2, 4))
			if p != 0 && len(data) > 0 {
				src := b.floats(data)
				b.launchF32ToBf16Kernel(b.gridFor(int64(len(data))), 256, dptr(p), src, int64(len(data)))
			}
			t.Buf = b.newBuf(p, n/2)
		} else {
			p := b.devAlloc(max(n, 4))
			if p != 0 && n > 0 && b.rec != nil { // recorded: the copy is enqueued after Upload returns
				src := b.put(0, unsafe.Pointer(&data[0]), n, false)
				b.enq("cuMemcpyDtoDAsync", b.drv.memcpyDtoDAsync, uintptr(p), uintptr(src), uintptr(n), b.strm)
			} else if p != 0 && n > 0 {
				b.fail(b.drv.check("cuMemcpyHtoDAsync", call(b.drv.memcpyHtoDAsync, uintptr(p), uintptr(unsafe.Pointer(&data[0])), uintptr(n), b.strm)))
			}
			t.Buf = b.newBuf(p, n)
		}
		// The host slice may be reused by the caller as soon as we return: pageable copies are
		// staged before cuMemcpyHtoDAsync returns.
		if b.failed() {
			return nil
		}
		res = t
		return nil
	})
	return res, err
}

// Download implements engine.Backend.
func (b *Backend) Download(t *engine.Tensor, dst []float32) error {
	if len(dst) != t.Len() {
		return fmt.Errorf("cuda: download: destination has %d values, tensor %v has %d", len(dst), t.Shape, t.Len())
	}
	return b.opErr(desc("Download x", t), func() error {
		bf := devBuf(t)
		if len(dst) == 0 {
			return nil
		}
		if t.DType == engine.BF16 {
			bits := make([]uint16, len(dst))
			b.download(unsafe.Pointer(&bits[0]), bf.ptr, uint64(2*len(dst)))
			for i, v := range bits {
				dst[i] = bf16ToF32(v)
			}
			return nil
		}
		b.download(unsafe.Pointer(&dst[0]), bf.ptr, uint64(4*len(dst)))
		return nil
	})
}

// Sync waits for all enqueued work and returns the first error of the ops before it (see
// Backend).
func (b *Backend) Sync() error {
	return b.opErr(desc("Sync"), func() error {
		b.fail(b.synchronize("cuStreamSynchronize"))
		return nil
	})
}
