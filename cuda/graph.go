package cuda

import (
	"fmt"
	"unsafe"

	"github.com/ebitengine/purego"
)

// Bindings for CUDA graphs and pinned host memory: what a decode step replayed as one graph
// needs (issue 35: launches captured once per batch-size bucket, replayed with the step's
// metadata written into fixed pinned buffers). Their prototypes, enum values and versioned
// symbol names come from the CUDA headers through scripts/cuda-abi.sh (cuda/testdata/abi.txt);
// abi_test.go checks the Go side against them. The symbols are optional: a driver without
// them leaves the backend working and these calls answer an error.

// graphAPI holds the driver's graph and pinned-memory entry points (0 where the driver lacks
// one).
type graphAPI struct {
	streamBeginCapture, streamEndCapture, streamIsCapturing      uintptr
	graphInstantiateWithFlags, graphLaunch, graphExecDestroy     uintptr
	graphDestroy, memHostAlloc, memFreeHost, memHostGetDevicePtr uintptr
}

// graphSymbols are the C names of graphAPI's fields (the _v2 ABI where the header maps to one).
func (g *graphAPI) graphSymbols() map[string]*uintptr {
	return map[string]*uintptr{
		"cuStreamBeginCapture_v2": &g.streamBeginCapture, "cuStreamEndCapture": &g.streamEndCapture,
		"cuStreamIsCapturing": &g.streamIsCapturing, "cuGraphInstantiateWithFlags": &g.graphInstantiateWithFlags,
		"cuGraphLaunch": &g.graphLaunch, "cuGraphExecDestroy": &g.graphExecDestroy, "cuGraphDestroy": &g.graphDestroy,
		"cuMemHostAlloc": &g.memHostAlloc, "cuMemFreeHost": &g.memFreeHost,
		"cuMemHostGetDevicePointer_v2": &g.memHostGetDevicePtr,
	}
}

// loadGraphAPI resolves what the driver library h has of graphAPI.
func loadGraphAPI(h uintptr) graphAPI {
	var g graphAPI
	for name, dst := range g.graphSymbols() {
		*dst, _ = purego.Dlsym(h, name)
	}
	return g
}

// Values from cuda.h (checked against the header by abi_test.go).
const (
	captureModeThreadLocal = 1 // CU_STREAM_CAPTURE_MODE_THREAD_LOCAL: other threads' calls are not refused
	captureStatusNone      = 0 // CU_STREAM_CAPTURE_STATUS_NONE
	captureStatusActive    = 1 // CU_STREAM_CAPTURE_STATUS_ACTIVE

	memHostAllocPortable = 1 // CU_MEMHOSTALLOC_PORTABLE
	memHostAllocDevMap   = 2 // CU_MEMHOSTALLOC_DEVICEMAP: the device reads it over PCIe/NVLink
)

// need returns an error naming sym when the driver lacks it.
func (d *driver) need(fn uintptr, sym string) error {
	if fn == 0 {
		return fmt.Errorf("cuda: %s has no %s (a driver older than CUDA 11.4?)", d.path, sym)
	}
	return nil
}

// cudaGraph is an instantiated graph: the launches a stream captured, replayed as one.
type cudaGraph struct {
	graph, exec uintptr
}

// beginCapture starts capturing stream: launches enqueued on it are recorded, not run, until
// endCapture. Thread-local mode: the calling OS thread must stay the same (the backend's
// callers lock theirs).
func (d *driver) beginCapture(stream uintptr) error {
	if err := d.need(d.streamBeginCapture, "cuStreamBeginCapture_v2"); err != nil {
		return err
	}
	return d.check("cuStreamBeginCapture_v2", call(d.streamBeginCapture, stream, captureModeThreadLocal))
}

// capturing says whether stream is capturing now.
func (d *driver) capturing(stream uintptr) (bool, error) {
	if err := d.need(d.streamIsCapturing, "cuStreamIsCapturing"); err != nil {
		return false, err
	}
	var st int32
	if err := d.check("cuStreamIsCapturing", call(d.streamIsCapturing, stream, uintptr(unsafe.Pointer(&st)))); err != nil {
		return false, err
	}
	return st == captureStatusActive, nil
}

// endCapture ends stream's capture and instantiates the graph. The graph is destroyed again
// when instantiation fails.
func (d *driver) endCapture(stream uintptr) (*cudaGraph, error) {
	for _, s := range []struct {
		fn  uintptr
		sym string
	}{{d.streamEndCapture, "cuStreamEndCapture"}, {d.graphInstantiateWithFlags, "cuGraphInstantiateWithFlags"}} {
		if err := d.need(s.fn, s.sym); err != nil {
			return nil, err
		}
	}
	g := &cudaGraph{}
	if err := d.check("cuStreamEndCapture", call(d.streamEndCapture, stream, uintptr(unsafe.Pointer(&g.graph)))); err != nil {
		return nil, err
	}
	if err := d.check("cuGraphInstantiateWithFlags", call(d.graphInstantiateWithFlags, uintptr(unsafe.Pointer(&g.exec)), g.graph, 0)); err != nil {
		if d.graphDestroy != 0 {
			call(d.graphDestroy, g.graph)
		}
		return nil, err
	}
	return g, nil
}

// launchGraph enqueues one replay of g on stream.
func (d *driver) launchGraph(g *cudaGraph, stream uintptr) error {
	if err := d.need(d.graphLaunch, "cuGraphLaunch"); err != nil {
		return err
	}
	return d.check("cuGraphLaunch", call(d.graphLaunch, g.exec, stream))
}

// destroyGraph frees g's executable and its graph.
func (d *driver) destroyGraph(g *cudaGraph) error {
	if err := d.need(d.graphExecDestroy, "cuGraphExecDestroy"); err != nil {
		return err
	}
	if err := d.check("cuGraphExecDestroy", call(d.graphExecDestroy, g.exec)); err != nil {
		return err
	}
	return d.check("cuGraphDestroy", call(d.graphDestroy, g.graph))
}

// pinnedBuf is page-locked host memory mapped into the device's address space: the host writes
// host, kernels read dev, and no copy is enqueued (a graph replays with the new contents).
type pinnedBuf struct {
	host  unsafe.Pointer
	dev   uint64
	bytes int
}

// Bytes is the buffer as a Go slice over the pinned memory.
func (p *pinnedBuf) Bytes() []byte { return unsafe.Slice((*byte)(p.host), p.bytes) }

// allocPinned allocates bytes of mapped, portable pinned memory and its device address.
func (d *driver) allocPinned(bytes int) (*pinnedBuf, error) {
	for _, s := range []struct {
		fn  uintptr
		sym string
	}{{d.memHostAlloc, "cuMemHostAlloc"}, {d.memHostGetDevicePtr, "cuMemHostGetDevicePointer_v2"}, {d.memFreeHost, "cuMemFreeHost"}} {
		if err := d.need(s.fn, s.sym); err != nil {
			return nil, err
		}
	}
	if bytes <= 0 {
		return nil, fmt.Errorf("cuda: pinned buffer of %d bytes", bytes)
	}
	var host uintptr
	if err := d.check("cuMemHostAlloc", call(d.memHostAlloc, uintptr(unsafe.Pointer(&host)), uintptr(bytes), memHostAllocPortable|memHostAllocDevMap)); err != nil {
		return nil, err
	}
	p := &pinnedBuf{host: *(*unsafe.Pointer)(unsafe.Pointer(&host)), bytes: bytes}
	if err := d.check("cuMemHostGetDevicePointer_v2", call(d.memHostGetDevicePtr, uintptr(unsafe.Pointer(&p.dev)), host, 0)); err != nil {
		call(d.memFreeHost, host)
		return nil, err
	}
	return p, nil
}

// freePinned releases p.
func (d *driver) freePinned(p *pinnedBuf) error {
	return d.check("cuMemFreeHost", call(d.memFreeHost, uintptr(p.host)))
}
