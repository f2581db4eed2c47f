package dist

import (
	"fmt"
	"sort"
	"sync"
)

// DeviceBuffer is a buffer in GPU memory, implemented by a GPU backend's tensors (the cuda
// package registers itself; this package never imports it). Collectives on device buffers go to
// the nccl backend.
type DeviceBuffer interface {
	Buffer
	// DevicePtr is the buffer's device address (a CUdeviceptr), valid until the collective returns.
	DevicePtr() uintptr
}

// Device is what a GPU backend lends a device communicator: which GPU, the stream collectives
// are queued on, and the goroutine that owns the GPU's context (a CUDA context is current on one
// OS thread, so NCCL's calls must run there).
type Device interface {
	// Ordinal is the CUDA device ordinal of this rank's GPU (usually its local rank).
	Ordinal() int
	// Stream is the CUstream that collectives are queued on; 0 is the legacy default stream.
	Stream() uintptr
	// Do runs f on the goroutine (OS thread) where the device's context is current, and returns
	// f's error.
	Do(f func() error) error
	// Synchronize waits until the work queued on Stream is done.
	Synchronize() error
	// Scratch is device memory of at least bytes, owned by the Device and reused across calls
	// (the nccl backend's barrier all-reduces 4 bytes in it).
	Scratch(bytes int) (uintptr, error)
}

// DeviceOpener opens the Device of a local rank; a GPU backend registers one.
type DeviceOpener func(localRank int) (Device, error)

var (
	devMu   sync.Mutex
	devices = map[string]DeviceOpener{}
)

// RegisterDevice makes a GPU backend's devices available to the nccl backend under name (e.g.
// "cuda"), database/sql-style. It panics on a duplicate name or a nil opener (programmer errors).
func RegisterDevice(name string, open DeviceOpener) {
	devMu.Lock()
	defer devMu.Unlock()
	if open == nil {
		panic("dist: RegisterDevice of a nil opener for " + name)
	}
	if _, dup := devices[name]; dup {
		panic("dist: RegisterDevice called twice for " + name)
	}
	devices[name] = open
}

// Devices lists the registered device backends, sorted.
func Devices() []string {
	devMu.Lock()
	defer devMu.Unlock()
	var names []string
	for n := range devices {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// OpenCommDevice opens the registered device backend name for localRank: the GPU side of a
// communicator (its buffers and stream), not engine.OpenDevice's compute device.
func OpenCommDevice(name string, localRank int) (Device, error) {
	devMu.Lock()
	open := devices[name]
	devMu.Unlock()
	if open == nil {
		return nil, fmt.Errorf("dist: no device backend %q registered (registered: %v; import the GPU backend's package)", name, Devices())
	}
	d, err := open(localRank)
	if err != nil {
		return nil, fmt.Errorf("dist: opening %s device for local rank %d: %w", name, localRank, err)
	}
	return d, nil
}
