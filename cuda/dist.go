package cuda

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/dist"
)

// The GPU side of engine/dist's nccl backend: a dist.Device over a Backend (its context, its
// stream, its lock) and dist.DeviceBuffers over its tensors. NCCL's calls then run like the
// backend's ops: under its lock, with its context current on a locked OS thread, queued on its
// stream behind the kernels that wrote the buffers.

func init() {
	// The device names match engine's registrations: "cuda" is the backend with bf16 matmuls,
	// "cuda-fp32" the exact one. Either way a backend already open on the GPU is preferred.
	dist.RegisterDevice("cuda", func(localRank int) (dist.Device, error) {
		return openCommDevice(Options{Device: localRank, BF16Matmul: true})
	})
	dist.RegisterDevice("cuda-fp32", func(localRank int) (dist.Device, error) {
		return openCommDevice(Options{Device: localRank})
	})
}

// openCommDevice returns the dist.Device of the backend whose stream collectives must share:
// the one the trainer already opened on GPU def.Device (def itself if it is open, else the only
// other one there), or else a new backend of options def. A communicator on another stream
// than the kernels that computed its buffers would read them before they are written.
func openCommDevice(def Options) (dist.Device, error) {
	openMu.Lock()
	b := opened[def]
	if b == nil {
		var same []*Backend
		for o, ob := range opened {
			if o.Device == def.Device {
				same = append(same, ob)
			}
		}
		if len(same) == 1 {
			b = same[0]
		}
	}
	openMu.Unlock()
	if b == nil {
		var err error
		if b, err = Open(def); err != nil {
			return nil, err
		}
	}
	return &commDevice{b: b}, nil
}

// commDevice is a Backend as a dist.Device.
type commDevice struct {
	b       *Backend
	scratch uint64 // device memory of Scratch, guarded by b.mu
	bytes   int
}

// Ordinal implements dist.Device: the GPU's ordinal.
func (d *commDevice) Ordinal() int { return d.b.opts.Device }

// Stream implements dist.Device: the backend's stream, on which every op is queued.
func (d *commDevice) Stream() uintptr { return d.b.strm }

// Do implements dist.Device: f runs as an op of the backend ("nccl"), under its lock with its
// context current on this goroutine's OS thread (locked for the op). After an earlier op's
// error not yet returned, f does not run and Do returns that error (the buffers may hold what
// the failed op did not write). A fatal CUDA error from f (a kernel fault surfacing at a
// synchronisation) loses the backend, as it does in an op.
func (d *commDevice) Do(f func() error) error {
	return d.b.opErr(desc("nccl"), func() error {
		err := f()
		if fatal(err) {
			d.b.fail(err)
			return nil // opErr returns the backend's fatal error
		}
		return err
	})
}

// Synchronize implements dist.Device: it waits for the backend's stream. It takes no lock, so
// it may run inside Do (where the nccl backend calls it) as well as outside.
func (d *commDevice) Synchronize() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	drv := d.b.drv
	if err := drv.check("cuCtxSetCurrent", call(drv.ctxSetCurrent, d.b.ctx)); err != nil {
		return fmt.Errorf("cuda: %w", err)
	}
	if err := drv.check("cuStreamSynchronize", call(drv.streamSynchronize, d.b.strm)); err != nil {
		return fmt.Errorf("cuda: %w", err)
	}
	return nil
}

// CopyIn implements dist.HostCopier: bytes from host memory src to device address dst, queued
// on the stream (the stream orders it before the collective). It runs inside Do.
func (d *commDevice) CopyIn(dst uintptr, src unsafe.Pointer, bytes int) error {
	drv := d.b.drv
	if err := drv.check("cuMemcpyHtoDAsync", call(drv.memcpyHtoDAsync, dst, uintptr(src), uintptr(bytes), d.b.strm)); err != nil {
		return fmt.Errorf("cuda: %w", err)
	}
	return nil
}

// CopyOut implements dist.HostCopier: bytes from device address src to host memory dst, and
// waits for the stream. It runs inside Do.
func (d *commDevice) CopyOut(dst unsafe.Pointer, src uintptr, bytes int) error {
	drv := d.b.drv
	if err := drv.check("cuMemcpyDtoHAsync", call(drv.memcpyDtoHAsync, uintptr(dst), src, uintptr(bytes), d.b.strm)); err != nil {
		return fmt.Errorf("cuda: %w", err)
	}
	return d.Synchronize()
}

// Scratch implements dist.Device: device memory of at least bytes, kept for the next call and
// replaced by a larger block when one is asked for (the old one goes back to the allocator;
// work queued on the stream that still reads it runs before any later use). It runs as an op,
// so it must not be called inside Do.
func (d *commDevice) Scratch(bytes int) (uintptr, error) {
	var p uint64
	err := d.b.opErr(desc("nccl scratch"), func() error {
		if d.scratch == 0 || d.bytes < bytes {
			q, err := d.b.alloc.Alloc(uint64(max(bytes, 4)))
			if err != nil {
				return fmt.Errorf("cuda: scratch memory for nccl: %w", err)
			}
			d.b.alloc.Free(d.scratch)
			d.scratch, d.bytes = q, max(bytes, 4)
		}
		p = d.scratch
		return nil
	})
	return uintptr(p), err
}

// DistBuffer makes a tensor of this backend (F32 or BF16) a dist.DeviceBuffer, for the nccl
// backend's collectives. The communicator must be the one on this backend's GPU that
// dist.Open(..., "cuda" or "cuda-fp32") made after this backend was opened: it queues the
// collectives on this backend's stream. A tensor of another backend (a CPU tensor, or a
// tensor of a CUDA backend of other Options, which has its own stream) is refused.
func (b *Backend) DistBuffer(t *engine.Tensor) (dist.DeviceBuffer, error) {
	if t == nil {
		return nil, fmt.Errorf("cuda: DistBuffer of a nil tensor")
	}
	bf, ok := t.Buf.(*buf)
	if !ok {
		return nil, fmt.Errorf("cuda: DistBuffer: tensor %v is not on the CUDA backend (%T)", t.Shape, t.Buf)
	}
	var dt dist.DType
	switch t.DType {
	case engine.F32:
		dt = dist.Float32
	case engine.BF16:
		dt = dist.BFloat16
	default:
		return nil, fmt.Errorf("cuda: DistBuffer: tensor %v is %v; collectives move F32 and BF16", t.Shape, t.DType)
	}
	if bf.ptr == 0 {
		return nil, fmt.Errorf("cuda: DistBuffer: tensor %v has no device memory (freed, or its allocation failed)", t.Shape)
	}
	b.alloc.mu.Lock()
	_, mine := b.alloc.size[bf.ptr]
	b.alloc.mu.Unlock()
	if !mine {
		return nil, fmt.Errorf("cuda: DistBuffer: tensor %v belongs to another CUDA backend than %s (other Options: another stream)", t.Shape, b.name)
	}
	return distBuf{t: t, dt: dt}, nil
}

// distBuf is a tensor of the CUDA backend as a dist.DeviceBuffer.
type distBuf struct {
	t  *engine.Tensor // (Len) elements of dt, in t's device memory
	dt dist.DType
}

// DType implements dist.Buffer.
func (d distBuf) DType() dist.DType { return d.dt }

// Len implements dist.Buffer: the tensor's elements.
func (d distBuf) Len() int { return d.t.Len() }

// DevicePtr implements dist.DeviceBuffer: the tensor's device address (0 once it is freed,
// which NCCL refuses). A collective may write the tensor, so its bf16 matmul copy, if any, is
// marked stale.
func (d distBuf) DevicePtr() uintptr {
	bf, ok := d.t.Buf.(*buf)
	if !ok {
		return 0
	}
	bf.ver++
	return uintptr(bf.ptr)
}
