package dist

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
)

// UNVERIFIED: no machine this was written on has a GPU or NCCL. The loader, the calls' argument
// order and types, the data type codes and the pass-by-value unique id are checked against a
// stand-in library built from nccl.h's signatures (testdata/fakenccl.c), also end to end with
// the cuda package's Device on its fake driver; the unique-id rendezvous is checked over TCP.
// cuda's TestGPUNCCL (scripts/gpu-check.sh) runs the collectives on real GPUs; it has not run
// yet (docs/distributed.md).

// NCCL's enums (nccl.h): ncclFloat32 = 7, ncclBfloat16 = 9, ncclSum = 0; a unique id is 128 bytes.
const (
	ncclFloat32   = 7
	ncclBfloat16  = 9
	ncclSum       = 0
	ncclIDBytes   = 128
	ncclIDTag     = "nccl-unique-id"
	ncclMinVerion = 21000 // 2.10: ncclBfloat16
)

// ncclUniqueID is ncclUniqueId: struct { char internal[128]; }, passed by value to
// ncclCommInitRank (in memory on the stack, as the SysV ABI passes structs over 16 bytes).
type ncclUniqueID struct{ Internal [ncclIDBytes]byte }

// NCCL library search: PROLONG_NCCL (a path) overrides it; otherwise libnccl.so.2 by the
// loader's search (LD_LIBRARY_PATH, ldconfig), then CUDA's and pip's usual homes.
func ncclCandidates() []string {
	if p := os.Getenv("PROLONG_NCCL"); p != "" {
		return []string{p}
	}
	names := []string{"libnccl.so.2", "libnccl.so"}
	var dirs []string
	for _, v := range []string{"NCCL_HOME", "CUDA_HOME", "CUDA_PATH"} {
		if d := os.Getenv(v); d != "" {
			dirs = append(dirs, filepath.Join(d, "lib64"), filepath.Join(d, "lib"))
		}
	}
	dirs = append(dirs, "/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64")
	for _, pat := range []string{"/usr/local/lib/python3*/dist-packages/nvidia/nccl/lib", "/usr/lib/python3/dist-packages/nvidia/nccl/lib",
		"/opt/conda/lib/python3*/site-packages/nvidia/nccl/lib", "/usr/local/lib/python3*/site-packages/nvidia/nccl/lib"} {
		m, _ := filepath.Glob(pat)
		dirs = append(dirs, m...)
	}
	c := append([]string(nil), names...)
	for _, d := range dirs {
		for _, n := range names {
			c = append(c, filepath.Join(d, n))
		}
	}
	return c
}

type ncclLib struct {
	path    string
	version int
	fn      struct {
		getUniqueID, allReduce, reduceScatter, allGather, broadcast uintptr
		commAbort, commDestroy, getErrorString, getVersion          uintptr
	}
	commInitRank func(comm *uintptr, nranks int32, id ncclUniqueID, rank int32) int32
}

// loadNCCL dlopens NCCL and resolves the functions the backend calls.
func loadNCCL() (*ncclLib, error) {
	var h uintptr
	var last error
	m := &ncclLib{}
	for _, c := range ncclCandidates() {
		var err error
		if h, err = purego.Dlopen(c, purego.RTLD_NOW|purego.RTLD_GLOBAL); err == nil {
			m.path = c
			break
		}
		last = err
	}
	if h == 0 {
		if p := os.Getenv("PROLONG_NCCL"); p != "" {
			return nil, fmt.Errorf("dist: NCCL not loaded from PROLONG_NCCL=%s: %v", p, last)
		}
		return nil, fmt.Errorf("dist: NCCL (libnccl.so.2) not found by the loader nor under CUDA's and pip's lib folders (it comes with the CUDA stack, e.g. pip's nvidia-nccl-cu12; set PROLONG_NCCL to its path): %v", last)
	}
	for name, dst := range map[string]*uintptr{
		"ncclGetUniqueId": &m.fn.getUniqueID, "ncclAllReduce": &m.fn.allReduce, "ncclReduceScatter": &m.fn.reduceScatter,
		"ncclAllGather": &m.fn.allGather, "ncclBroadcast": &m.fn.broadcast, "ncclCommAbort": &m.fn.commAbort,
		"ncclCommDestroy": &m.fn.commDestroy, "ncclGetErrorString": &m.fn.getErrorString, "ncclGetVersion": &m.fn.getVersion,
	} {
		p, err := purego.Dlsym(h, name)
		if err != nil {
			return nil, fmt.Errorf("dist: %s has no symbol %s: %w", m.path, name, err)
		}
		*dst = p
	}
	initRank, err := purego.Dlsym(h, "ncclCommInitRank")
	if err != nil {
		return nil, fmt.Errorf("dist: %s has no symbol ncclCommInitRank: %w", m.path, err)
	}
	purego.RegisterFunc(&m.commInitRank, initRank)
	var v int32
	if rc := ccall(m.fn.getVersion, uintptr(unsafe.Pointer(&v))); rc != 0 {
		return nil, fmt.Errorf("dist: %s: ncclGetVersion: %s", m.path, m.errString(rc))
	}
	if m.version = int(v); m.version < ncclMinVerion {
		return nil, fmt.Errorf("dist: %s is NCCL %d; bf16 needs 2.10 (%d) or later", m.path, m.version, ncclMinVerion)
	}
	return m, nil
}

func (m *ncclLib) errString(rc int) string {
	p, _, _ := purego.SyscallN(m.fn.getErrorString, uintptr(rc))
	if p == 0 {
		return fmt.Sprintf("ncclResult %d", rc)
	}
	return fmt.Sprintf("%s (ncclResult %d)", cString(p), rc)
}

// cString reads a NUL-terminated C string at p (C memory, which Go's collector ignores).
func cString(p uintptr) string {
	bp := *(*unsafe.Pointer)(unsafe.Pointer(&p))
	n := 0
	for *(*byte)(unsafe.Add(bp, n)) != 0 {
		n++
	}
	return string(unsafe.Slice((*byte)(bp), n))
}

type ncclComm struct {
	lib                   *ncclLib
	dev                   Device
	host                  Comm // the MPI communicator the unique id came over, closed with this one; or nil
	comm                  uintptr
	rank, size, localRank int
	timeout               time.Duration
	opts                  Options
	closed                bool
}

// NewNCCL makes the device communicator of this rank on dev. The unique id comes from rank 0:
// over host (an mpi Comm, when MPI launched the job; nil otherwise) or, without it, over TCP at
// MASTER_ADDR:MASTER_PORT (ShareFromRank0). UNVERIFIED on GPUs: see the note at the top.
func NewNCCL(l Launch, dev Device, host Comm, opts Options) (Comm, error) {
	lib, err := loadNCCL()
	if err != nil {
		return nil, err
	}
	c := &ncclComm{lib: lib, dev: dev, host: host, rank: l.Rank, size: l.Size, localRank: l.LocalRank, timeout: opts.timeout(), opts: opts}
	if host != nil {
		c.rank, c.size = host.Rank(), host.Size()
	}
	if c.size < 1 {
		return nil, fmt.Errorf("dist: nccl: the world size is unknown (%s): launch with mpirun or set WORLD_SIZE", l)
	}
	var id ncclUniqueID
	if c.rank == 0 {
		if rc := ccall(lib.fn.getUniqueID, uintptr(unsafe.Pointer(&id))); rc != 0 {
			return nil, fmt.Errorf("dist: ncclGetUniqueId: %s", lib.errString(rc))
		}
	}
	switch {
	case c.size == 1:
	case host != nil:
		// 128 bytes travel as 64 bf16 elements: a broadcast copies bits unchanged.
		b := HostBF16(unsafe.Slice((*uint16)(unsafe.Pointer(&id.Internal[0])), ncclIDBytes/2))
		if err := host.Broadcast(b, 0); err != nil {
			return nil, fmt.Errorf("dist: nccl unique id over %s: %w", host.Backend(), err)
		}
	default:
		got, err := ShareFromRank0(Launch{Rank: c.rank, Size: c.size, MasterAddr: l.MasterAddr, MasterPort: l.MasterPort}, ncclIDTag, id.Internal[:], c.timeout)
		if err != nil {
			return nil, err
		}
		if len(got) != ncclIDBytes {
			return nil, fmt.Errorf("dist: rank 0 sent a %d-byte NCCL unique id, want %d", len(got), ncclIDBytes)
		}
		copy(id.Internal[:], got)
	}
	err = c.wait("ncclCommInitRank", func() error {
		if rc := lib.commInitRank(&c.comm, int32(c.size), id, int32(c.rank)); rc != 0 {
			return fmt.Errorf("dist: ncclCommInitRank (rank %d of %d, device %d): %s", c.rank, c.size, dev.Ordinal(), lib.errString(int(rc)))
		}
		return nil
	}, false)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (c *ncclComm) Rank() int       { return c.rank }
func (c *ncclComm) Size() int       { return c.size }
func (c *ncclComm) LocalRank() int  { return c.localRank }
func (c *ncclComm) Backend() string { return "nccl" }

// wait runs f on the device's goroutine (then synchronizes the stream when sync) and, past the
// timeout, aborts the NCCL communicator (ncclCommAbort is safe from another thread and makes
// the stuck call return) and returns an error wrapping ErrTimeout.
func (c *ncclComm) wait(op string, f func() error, sync bool) error {
	if c.closed {
		return fmt.Errorf("dist: %s on rank %d: %w", op, c.rank, ErrClosed)
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		done <- c.dev.Do(func() error {
			if err := f(); err != nil {
				return err
			}
			if sync {
				return c.dev.Synchronize()
			}
			return nil
		})
	}()
	timer, stop := deadline(c.timeout)
	defer stop()
	select {
	case err := <-done:
		return err
	case <-timer:
		if c.comm != 0 {
			ccall(c.lib.fn.commAbort, c.comm)
			c.comm, c.closed = 0, true
		}
		return fmt.Errorf("dist: %s on rank %d of %d: %w after %v: the NCCL communicator is aborted%s",
			op, c.rank, c.size, ErrTimeout, time.Since(start).Round(time.Millisecond), c.opts.describe())
	}
}

func devPtr(op, name string, b Buffer) (uintptr, error) {
	if err := checkBuf(op, name, b); err != nil {
		return 0, err
	}
	d, ok := b.(DeviceBuffer)
	if !ok {
		return 0, fmt.Errorf("dist: %s: the nccl backend takes device buffers; %s is in host memory (use --dist mpi)", op, name)
	}
	return d.DevicePtr(), nil
}

func ncclType(d DType) uintptr {
	if d == BFloat16 {
		return ncclBfloat16
	}
	return ncclFloat32
}

// enqueue calls an NCCL collective on the device goroutine and waits for the stream.
func (c *ncclComm) enqueue(op string, fn uintptr, args ...uintptr) error {
	return c.wait(op, func() error {
		if rc := ccall(fn, args...); rc != 0 {
			return fmt.Errorf("dist: %s on rank %d: %s", op, c.rank, c.lib.errString(rc))
		}
		return nil
	}, true)
}

func (c *ncclComm) AllReduce(buf Buffer) error {
	p, err := devPtr("all-reduce", "buf", buf)
	if err != nil {
		return err
	}
	return c.enqueue(fmt.Sprintf("all-reduce of %v×%d", buf.DType(), buf.Len()), c.lib.fn.allReduce,
		p, p, uintptr(buf.Len()), ncclType(buf.DType()), ncclSum, c.comm, c.dev.Stream())
}

func (c *ncclComm) ReduceScatter(send, recv Buffer) error {
	const op = "reduce-scatter"
	ps, pr, err := c.pair(op, send, recv, false)
	if err != nil {
		return err
	}
	return c.enqueue(fmt.Sprintf("%s of %v×%d", op, send.DType(), send.Len()), c.lib.fn.reduceScatter,
		ps, pr, uintptr(recv.Len()), ncclType(recv.DType()), ncclSum, c.comm, c.dev.Stream())
}

func (c *ncclComm) AllGather(send, recv Buffer) error {
	const op = "all-gather"
	ps, pr, err := c.pair(op, send, recv, true)
	if err != nil {
		return err
	}
	return c.enqueue(fmt.Sprintf("%s of %v×%d", op, send.DType(), send.Len()), c.lib.fn.allGather,
		ps, pr, uintptr(send.Len()), ncclType(send.DType()), c.comm, c.dev.Stream())
}

// pair checks the buffers of a reduce-scatter or (gather) an all-gather and returns their device
// pointers.
func (c *ncclComm) pair(op string, send, recv Buffer, gather bool) (ps, pr uintptr, err error) {
	if err := checkPair(op, send, recv, c.size, gather); err != nil {
		return 0, 0, err
	}
	if ps, err = devPtr(op, "send", send); err != nil {
		return 0, 0, err
	}
	if pr, err = devPtr(op, "recv", recv); err != nil {
		return 0, 0, err
	}
	return ps, pr, nil
}

func (c *ncclComm) Broadcast(buf Buffer, root int) error {
	if err := checkRoot("broadcast", root, c.size); err != nil {
		return err
	}
	p, err := devPtr("broadcast", "buf", buf)
	if err != nil {
		return err
	}
	return c.enqueue(fmt.Sprintf("broadcast of %v×%d from rank %d", buf.DType(), buf.Len(), root), c.lib.fn.broadcast,
		p, p, uintptr(buf.Len()), ncclType(buf.DType()), uintptr(root), c.comm, c.dev.Stream())
}

// Barrier all-reduces one fp32 in the device's scratch memory: NCCL has no barrier.
func (c *ncclComm) Barrier() error {
	p, err := c.dev.Scratch(4)
	if err != nil {
		return fmt.Errorf("dist: barrier: %w", err)
	}
	return c.enqueue("barrier", c.lib.fn.allReduce, p, p, 1, ncclFloat32, ncclSum, c.comm, c.dev.Stream())
}

// Abort aborts the NCCL communicator, says why, and exits with status 134: the launcher
// (torchrun, mpirun, srun) then ends the other ranks.
func (c *ncclComm) Abort(reason string) {
	fmt.Fprintf(os.Stderr, "dist: aborting the job (rank %d of %d, nccl): %s\n", c.rank, c.size, reason)
	if c.comm != 0 {
		ccall(c.lib.fn.commAbort, c.comm)
	}
	os.Exit(134)
}

// Close destroys the NCCL communicator, then closes the MPI communicator it was made over.
func (c *ncclComm) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	err := c.dev.Do(func() error {
		if rc := ccall(c.lib.fn.commDestroy, c.comm); rc != 0 {
			return fmt.Errorf("dist: ncclCommDestroy: %s", c.lib.errString(rc))
		}
		return nil
	})
	if c.host != nil {
		err = errors.Join(err, c.host.Close())
	}
	return err
}

// NCCLVersion is the loaded NCCL's version code and path ("" for another backend).
func NCCLVersion(c Comm) string {
	if n, ok := c.(*ncclComm); ok {
		return fmt.Sprintf("NCCL %d (%s)", n.lib.version, strings.TrimSpace(n.lib.path))
	}
	return ""
}
