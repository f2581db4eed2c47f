package dist

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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

// HostCopier is implemented by a Device that copies between host and device memory. Its
// methods run inside Do, on the device's thread; CopyOut returns once the bytes are in dst.
// With it, the nccl backend takes host buffers too: each collective stages them through the
// device's scratch memory (copy in, collective, copy out), so that a program whose other
// collectives move host memory (the trainer's metadata, its gradient buckets) runs over NCCL
// alone, e.g. under a torchrun-style launcher without MPI.
type HostCopier interface {
	CopyIn(dst uintptr, src unsafe.Pointer, bytes int) error
	CopyOut(dst unsafe.Pointer, src uintptr, bytes int) error
}

// staging is where a collective's buffers are on the device: device buffers in place, host
// buffers at an offset of the device's scratch memory.
type staging struct {
	ptrs  []uintptr
	host  []int // indices of the host buffers
	bytes []int // of each buffer
}

// stage finds the device address of each buffer (name[i] names bufs[i] in errors), staging the
// host ones through the device's scratch memory when the device can copy (HostCopier).
func (c *ncclComm) stage(op string, names []string, bufs ...Buffer) (*staging, error) {
	st := &staging{ptrs: make([]uintptr, len(bufs)), bytes: make([]int, len(bufs))}
	var offs []int
	total := 0
	for i, b := range bufs {
		if err := checkBuf(op, names[i], b); err != nil {
			return nil, err
		}
		st.bytes[i] = b.Len() * b.DType().Size()
		if d, ok := b.(DeviceBuffer); ok {
			st.ptrs[i] = d.DevicePtr()
			continue
		}
		if _, ok := c.dev.(HostCopier); !ok {
			return nil, fmt.Errorf("dist: %s: the nccl backend takes device buffers; %s is in host memory and the device cannot stage it (use --dist mpi)", op, names[i])
		}
		st.host = append(st.host, i)
		offs = append(offs, total)
		total += (st.bytes[i] + 255) &^ 255
	}
	if len(st.host) > 0 {
		base, err := c.dev.Scratch(total)
		if err != nil {
			return nil, fmt.Errorf("dist: %s: staging %d bytes of host buffers: %w", op, total, err)
		}
		for k, i := range st.host {
			st.ptrs[i] = base + uintptr(offs[k])
		}
	}
	return st, nil
}

// run calls an NCCL collective on the device goroutine with the staged buffers: copies in the
// host buffers listed in in, calls fn with args (in which the placeholders stagedPtr(i) stand
// for buffer i's device address), waits for the stream and copies out the host buffers listed
// in out.
func (c *ncclComm) run(op string, st *staging, bufs []Buffer, in, out []int, fn uintptr, args ...uintptr) error {
	cp, _ := c.dev.(HostCopier)
	isHost := func(i int) bool { return slices.Contains(st.host, i) }
	return c.wait(op, func() error {
		for _, i := range in {
			if isHost(i) && st.bytes[i] > 0 {
				if err := cp.CopyIn(st.ptrs[i], ptr(bufs[i]), st.bytes[i]); err != nil {
					return fmt.Errorf("dist: %s: staging in: %w", op, err)
				}
			}
		}
		if rc := ccall(fn, args...); rc != 0 {
			return fmt.Errorf("dist: %s on rank %d: %s", op, c.rank, c.lib.errString(rc))
		}
		if err := c.dev.Synchronize(); err != nil {
			return err
		}
		for _, i := range out {
			if isHost(i) && st.bytes[i] > 0 {
				if err := cp.CopyOut(ptr(bufs[i]), st.ptrs[i], st.bytes[i]); err != nil {
					return fmt.Errorf("dist: %s: staging out: %w", op, err)
				}
			}
		}
		return nil
	}, false)
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
	const op = "all-reduce"
	st, err := c.stage(op, []string{"buf"}, buf)
	if err != nil {
		return err
	}
	p := st.ptrs[0]
	return c.run(fmt.Sprintf("%s of %v×%d", op, buf.DType(), buf.Len()), st, []Buffer{buf}, []int{0}, []int{0}, c.lib.fn.allReduce,
		p, p, uintptr(buf.Len()), ncclType(buf.DType()), ncclSum, c.comm, c.dev.Stream())
}

func (c *ncclComm) ReduceScatter(send, recv Buffer) error {
	const op = "reduce-scatter"
	st, err := c.pair(op, send, recv, false)
	if err != nil {
		return err
	}
	return c.run(fmt.Sprintf("%s of %v×%d", op, send.DType(), send.Len()), st, []Buffer{send, recv}, []int{0}, []int{1}, c.lib.fn.reduceScatter,
		st.ptrs[0], st.ptrs[1], uintptr(recv.Len()), ncclType(recv.DType()), ncclSum, c.comm, c.dev.Stream())
}

func (c *ncclComm) AllGather(send, recv Buffer) error {
	const op = "all-gather"
	st, err := c.pair(op, send, recv, true)
	if err != nil {
		return err
	}
	return c.run(fmt.Sprintf("%s of %v×%d", op, send.DType(), send.Len()), st, []Buffer{send, recv}, []int{0}, []int{1}, c.lib.fn.allGather,
		st.ptrs[0], st.ptrs[1], uintptr(send.Len()), ncclType(send.DType()), c.comm, c.dev.Stream())
}

// pair checks the buffers of a reduce-scatter or (gather) an all-gather and stages them.
func (c *ncclComm) pair(op string, send, recv Buffer, gather bool) (*staging, error) {
	if err := checkPair(op, send, recv, c.size, gather); err != nil {
		return nil, err
	}
	return c.stage(op, []string{"send", "recv"}, send, recv)
}

func (c *ncclComm) Broadcast(buf Buffer, root int) error {
	if err := checkRoot("broadcast", root, c.size); err != nil {
		return err
	}
	st, err := c.stage("broadcast", []string{"buf"}, buf)
	if err != nil {
		return err
	}
	p := st.ptrs[0]
	return c.run(fmt.Sprintf("broadcast of %v×%d from rank %d", buf.DType(), buf.Len(), root), st, []Buffer{buf}, []int{0}, []int{0}, c.lib.fn.broadcast,
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
