package cuda

import (
	"bytes"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"unsafe"
)

// Decode steps as CUDA graphs (Options.DecodeGraphs, engine.StepGraphBackend; issue 35).
//
// The engine brackets the device part of every fixed-buffer decode step with BeginDecodeStep
// (its key: the batch-size bucket) and EndDecodeStep. Between the two the ops run their bodies
// as always (so every bookkeeping of theirs, bf16 copies and versions included, stays as in
// eager mode) but enqueue nothing: a kernel launch or a GEMM is recorded (kernel, grid, block,
// argument slots; the GEMM's description) with a closure that enqueues it, and every per-op
// metadata upload (token ids, positions, slots, block tables) is written into the key's
// metadata arena instead: a host staging area whose device twin has a fixed address, which
// the recorded launches take as their argument. Identical metadata of one call site (the
// positions every layer's RoPE takes) shares one arena slot. At EndDecodeStep:
//
//   - a key with a graph whose recorded launches equal this step's (kernels, grids, argument
//     slots: tensor addresses, arena addresses, scalars) gets the arena copied once to the
//     device (through a pinned buffer, cuMemcpyHtoDAsync) and the graph launched: no kernel
//     launch of its own;
//   - otherwise (the key's first steps, or a step whose ops differ: other buffers, a grid that
//     follows the context length) a graph the key had is destroyed (said at debug level), the
//     arena is copied and the step's launches are captured (cuStreamBeginCapture ...
//     cuStreamEndCapture, cuGraphInstantiate) and the graph launched; a step that allocated
//     device memory (the first step of a key: bf16 copies of the weights, an arena still too
//     small) or whose capture failed runs its recorded launches eagerly instead, in order.
//     A failed capture switches graphs off for that key, with the reason logged.
//
// Sampling stays outside: Sample downloads the step's ids and log-probs once.

// stepGraph is one key's state: its arena, its graph and what the graph holds.
type stepGraph struct {
	key   int
	size  int        // bytes of the arena (stage, host, dev)
	stage []byte     // host staging: the step's metadata is written here while it records
	host  *pinnedBuf // pinned copy of stage, the source of the one upload per step
	dev   uint64     // the device arena the launches read
	graph *cudaGraph
	sig   []stepLaunch // the launches the graph holds
	off   string       // why graphs are off for this key ("": on)

	captures, replays, eager int
}

// stepLaunch is one recorded launch: a kernel (name, grid, block, argument slots) or, with
// kernel "", a GEMM.
type stepLaunch struct {
	kernel string
	grid   [3]int
	block  int
	args   []uint64
	what   string
	gemm   gemm
}

func (l *stepLaunch) equal(o *stepLaunch) bool {
	return l.kernel == o.kernel && l.grid == o.grid && l.block == o.block && slices.Equal(l.args, o.args) &&
		l.what == o.what && l.gemm == o.gemm
}

func (l *stepLaunch) String() string {
	if l.kernel == "" {
		return fmt.Sprintf("GEMM %s m=%d n=%d k=%d", l.what, l.gemm.m, l.gemm.n, l.gemm.k)
	}
	return fmt.Sprintf("%s grid %v block %d args %#x", l.kernel, l.grid, l.block, l.args)
}

// stepUpload is metadata put into the arena by constInts: its call site and bytes, and where
// it went.
type stepUpload struct {
	pc   uintptr
	data []byte
	dev  dptr
}

// stepRec is the record of the step between BeginDecodeStep and EndDecodeStep.
type stepRec struct {
	g        *stepGraph
	launches []stepLaunch
	actions  []func() // enqueue the launches (and uploads that did not fit the arena), in order
	cursor   int      // arena bytes taken, aligned
	end      int      // arena bytes up to the end of the last metadata that fit (the upload's length)
	consts   []stepUpload
	frees    []uint64 // device memory the step allocated as scratch, freed at EndDecodeStep
	broken   string   // why this step cannot be captured ("": it can)
}

// breakf records the first reason the step cannot be captured.
func (r *stepRec) breakf(format string, args ...any) {
	if r.broken == "" {
		r.broken = fmt.Sprintf(format, args...)
	}
}

// arenaAlign is the alignment of every upload in the arena; minArena is the smallest arena.
const (
	arenaAlign = 256
	minArena   = 16 << 10
)

// DecodeGraphs implements engine.StepGraphBackend: Options.DecodeGraphs.
func (b *Backend) DecodeGraphs() bool { return b.opts.DecodeGraphs }

// PadDecode implements engine.DecodePadder: with Options.DecodeGraphs, decode batches are
// padded to the buckets, whose buffers (and so graphs) are kept.
func (b *Backend) PadDecode() bool { return b.opts.DecodeGraphs }

// BeginDecodeStep implements engine.StepGraphBackend: the calling goroutine's ops until
// EndDecodeStep are recorded (it stays locked to its OS thread until then).
func (b *Backend) BeginDecodeStep(key int) {
	if !b.opts.DecodeGraphs {
		return
	}
	runtime.LockOSThread() // until EndDecodeStep
	b.mu.Lock()
	defer b.mu.Unlock()
	tid := threadID()
	delete(b.recs, tid)
	if b.prof != nil || b.dead != nil {
		return // the profiler times each launch: eager
	}
	if b.graphs == nil {
		b.graphs = map[int]*stepGraph{}
	}
	g := b.graphs[key]
	if g == nil {
		g = &stepGraph{key: key}
		b.graphs[key] = g
	}
	if g.off != "" {
		return
	}
	if b.recs == nil {
		b.recs = map[int]*stepRec{}
	}
	b.recs[tid] = &stepRec{g: g}
}

// put writes bytes of host metadata at src into the arena of the step being recorded and
// returns their device address; with dedupe, bytes equal to an earlier put of the same call
// site pc return its address. Metadata that does not fit the arena goes to scratch memory
// through an upload among the step's actions (and the step is not captured).
func (b *Backend) put(pc uintptr, src unsafe.Pointer, n uint64, dedupe bool) dptr {
	r := b.rec
	data := unsafe.Slice((*byte)(src), n)
	if dedupe {
		for _, u := range r.consts {
			if u.pc == pc && bytes.Equal(u.data, data) {
				return u.dev
			}
		}
	}
	off := r.cursor
	r.cursor += (int(n) + arenaAlign - 1) / arenaAlign * arenaAlign
	var dev dptr
	if g := r.g; off+int(n) <= g.size {
		r.end = off + int(n)
		copy(g.stage[off:], data)
		dev = dptr(g.dev + uint64(off))
	} else {
		r.breakf("the step's metadata outgrows the arena of %d bytes", g.size)
		p := b.devAlloc(n)
		if p == 0 {
			return 0
		}
		r.frees = append(r.frees, p)
		cp, cur := slices.Clone(data), b.cur
		r.actions = append(r.actions, func() {
			b.cur = cur
			b.fail(b.drv.check("cuMemcpyHtoDAsync", call(b.drv.memcpyHtoDAsync, uintptr(p), uintptr(unsafe.Pointer(&cp[0])), uintptr(n), b.strm)))
			runtime.KeepAlive(cp)
		})
		dev = dptr(p)
	}
	if dedupe {
		r.consts = append(r.consts, stepUpload{pc: pc, data: slices.Clone(data), dev: dev})
	}
	return dev
}

// recordLaunch records kernel f's launch (see launch).
func (b *Backend) recordLaunch(name string, f uintptr, grid [3]int, threads int, args []uint64) {
	a, cur := slices.Clone(args), b.cur
	b.rec.launches = append(b.rec.launches, stepLaunch{kernel: name, grid: grid, block: threads, args: a})
	b.rec.actions = append(b.rec.actions, func() {
		b.cur = cur
		b.launchNow(name, f, grid, threads, a)
	})
}

// recordGemm records a GEMM (see gemm).
func (b *Backend) recordGemm(what string, g gemm) {
	cur := b.cur
	b.rec.launches = append(b.rec.launches, stepLaunch{what: what, gemm: g})
	b.rec.actions = append(b.rec.actions, func() {
		b.cur = cur
		b.gemmNow(what, g)
	})
}

// EndDecodeStep implements engine.StepGraphBackend: the recorded step is replayed as its
// key's graph, captured and launched, or run eagerly (see above). It returns the first error
// of the step's ops.
func (b *Backend) EndDecodeStep() error {
	if !b.opts.DecodeGraphs {
		return nil
	}
	defer runtime.UnlockOSThread() // BeginDecodeStep's
	ok := b.enter()
	defer b.leave()
	r := b.rec
	b.rec = nil
	delete(b.recs, threadID())
	if r != nil {
		defer func() {
			for _, p := range r.frees {
				b.alloc.Free(p)
			}
		}()
	}
	if !ok {
		return b.dead
	}
	if b.pending != nil {
		return b.take()
	}
	if r != nil && b.begin(desc("DecodeStep")) {
		b.runStep(r)
		b.end()
	}
	if b.dead != nil {
		return b.dead
	}
	return b.take()
}

// runStep enqueues the recorded step r.
func (b *Backend) runStep(r *stepRec) {
	g := r.g
	why := r.broken
	if why == "" && g.graph != nil {
		// The launches read the arena at the addresses in their arguments; metadata that grew
		// within its slot (the last one, the attention's block tables, as a sequence takes a
		// block) changes none of them.
		why = diffLaunches(g.sig, r.launches)
	}
	if g.graph != nil && why == "" {
		b.copyArena(g, r.end)
		if err := b.drv.launchGraph(g.graph, b.strm); err != nil {
			b.fail(err)
			return
		}
		g.replays++
		return
	}
	if g.graph != nil {
		slog.Debug("cuda: decode step graph dropped, the step runs eagerly", "bucket", g.key, "reason", why)
		b.dropGraph(g)
	}
	b.copyArena(g, r.end) // what fit, also when later metadata did not
	if why == "" && !b.failed() {
		err := b.capture(g, r)
		if err == nil {
			return
		}
		g.off = err.Error()
		slog.Info("cuda: decode step graphs off for this batch size; its steps run eagerly", "bucket", g.key, "reason", g.off)
	}
	g.eager++
	for _, a := range r.actions {
		a()
	}
	if r.cursor > g.size && g.off == "" {
		// Twice what the step took, so that block tables growing with the sequences do not
		// move the arena (and so the graph's arguments) often.
		b.growArena(g, max(2*r.cursor, minArena))
	}
}

// diffLaunches describes the first difference between the graph's launches and the step's ("":
// none).
func diffLaunches(graph, step []stepLaunch) string {
	for i := range min(len(graph), len(step)) {
		if !graph[i].equal(&step[i]) {
			return fmt.Sprintf("launch %d is %v, the graph's %v", i, &step[i], &graph[i])
		}
	}
	if len(graph) != len(step) {
		return fmt.Sprintf("the step has %d launches, the graph %d", len(step), len(graph))
	}
	return ""
}

// capture captures r's launches into a graph for g and launches it. On an error nothing of r
// has run.
func (b *Backend) capture(g *stepGraph, r *stepRec) error {
	if err := b.drv.beginCapture(b.strm); err != nil {
		return err
	}
	for _, a := range r.actions {
		a()
	}
	cg, err := b.drv.endCapture(b.strm)
	if b.pending != nil { // a launch refused during the capture
		perr := b.take()
		if cg != nil {
			b.drv.destroyGraph(cg)
		}
		return fmt.Errorf("capturing the step: %w", perr)
	}
	if err != nil {
		return fmt.Errorf("capturing the step: %w", err)
	}
	if err := b.drv.launchGraph(cg, b.strm); err != nil {
		b.drv.destroyGraph(cg)
		return err
	}
	g.graph, g.sig = cg, r.launches
	g.captures++
	return nil
}

// dropGraph destroys g's graph.
func (b *Backend) dropGraph(g *stepGraph) {
	if err := b.drv.destroyGraph(g.graph); err != nil {
		slog.Warn("cuda: destroying a decode step graph", "bucket", g.key, "err", err)
	}
	g.graph, g.sig = nil, nil
}

// copyArena enqueues the upload of the step's n bytes of metadata: staged into the pinned
// buffer (after the previous upload from it finished), then one cuMemcpyHtoDAsync.
func (b *Backend) copyArena(g *stepGraph, n int) {
	if n == 0 || b.failed() {
		return
	}
	if b.arenaBusy {
		b.fail(b.synchronize("cuStreamSynchronize"))
	}
	copy(g.host.Bytes()[:n], g.stage[:n])
	b.fail(b.drv.check("cuMemcpyHtoDAsync", call(b.drv.memcpyHtoDAsync, uintptr(g.dev), uintptr(g.host.host), uintptr(n), b.strm)))
	b.arenaBusy = true
}

// growArena gives g an arena of at least n bytes (its graph, whose launches read the old one,
// is gone by now).
func (b *Backend) growArena(g *stepGraph, n int) {
	if b.failed() {
		return
	}
	if g.host != nil {
		b.fail(b.synchronize("cuStreamSynchronize")) // the old buffers may still be read
		b.drv.freePinned(g.host)
		b.alloc.Free(g.dev)
		g.host, g.dev, g.size, g.stage = nil, 0, 0, nil
	}
	host, err := b.drv.allocPinned(n)
	if err != nil {
		g.off = fmt.Sprintf("the pinned metadata buffer: %v", err)
		slog.Info("cuda: decode step graphs off for this batch size; its steps run eagerly", "bucket", g.key, "reason", g.off)
		return
	}
	dev, err := b.alloc.Alloc(uint64(n))
	if err != nil {
		b.drv.freePinned(host)
		g.off = fmt.Sprintf("the device metadata arena: %v", err)
		slog.Info("cuda: decode step graphs off for this batch size; its steps run eagerly", "bucket", g.key, "reason", g.off)
		return
	}
	g.host, g.dev, g.size, g.stage = host, dev, n, make([]byte, n)
}

// DecodeGraphStats reports, per bucket, how many decode steps were captured as graphs, replayed
// from one and run eagerly, and why graphs are off for a bucket ("" while on).
func (b *Backend) DecodeGraphStats() map[int]DecodeGraphStat {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := map[int]DecodeGraphStat{}
	for k, g := range b.graphs {
		s[k] = DecodeGraphStat{Captures: g.captures, Replays: g.replays, Eager: g.eager, Off: g.off}
	}
	return s
}

// DecodeGraphStat is one bucket's DecodeGraphStats.
type DecodeGraphStat struct {
	Captures, Replays, Eager int
	Off                      string
}
