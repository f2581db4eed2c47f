package dist

import (
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
)

// The MPI library is loaded at run time. Its handles differ by ABI:
//   - Open MPI (libmpi.so.40, 4.x and 5.x): MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM... are addresses
//     of exported globals (mpi.h: OMPI_PREDEFINED_GLOBAL(MPI_Comm, ompi_mpi_comm_world) is
//     (MPI_Comm)&ompi_mpi_comm_world), taken here with dlsym; MPI_IN_PLACE is (void *)1.
//   - MPICH (libmpi.so.12 / libmpich.so.12, and the MPICH-ABI family: Intel MPI, MVAPICH,
//     Cray MPICH): handles are int constants from mpi.h (MPI_COMM_WORLD 0x44000000, MPI_FLOAT
//     0x4c00040a, MPI_UNSIGNED_SHORT 0x4c000204, MPI_SUM 0x58000003); MPI_IN_PLACE is (void *)-1.
//
// Both pass handles in an integer register, so one call path serves both.
type mpiABI struct {
	name                string
	comm, f32, u16, sum uintptr
	inPlace             uintptr
	threadSerialized    uintptr // MPI_THREAD_SERIALIZED: 2 in both headers
}

// mpiLib holds the loaded library's functions.
type mpiLib struct {
	path string
	abi  mpiABI
	fn   struct {
		initThread, finalize, commRank, commSize, abort, barrier                  uintptr
		allreduce, reduceScatterBlock, allgather, bcast, getLibraryVersion, wtime uintptr
	}
}

// MPI library search: PROLONG_MPI (a path) overrides it; otherwise the sonames below by the
// loader's search and then in the usual directories, the launcher's own family first.
var (
	mpiOpenMPINames = []string{"libmpi.so.40"}
	mpiMPICHNames   = []string{"libmpi.so.12", "libmpich.so.12"}
	mpiDirs         = []string{"/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/local/lib",
		"/usr/lib/x86_64-linux-gnu/openmpi/lib", "/usr/lib/x86_64-linux-gnu/mpich/lib", "/opt/hpcx/ompi/lib"}
)

func mpiCandidates(l Launch) []string {
	if p := os.Getenv("PROLONG_MPI"); p != "" {
		return []string{p}
	}
	names := append(append([]string(nil), mpiOpenMPINames...), mpiMPICHNames...)
	if l.Launcher == LaunchHydra {
		names = append(append([]string(nil), mpiMPICHNames...), mpiOpenMPINames...)
	}
	c := append([]string(nil), names...)
	if d := os.Getenv("MPI_HOME"); d != "" {
		for _, n := range names {
			c = append(c, filepath.Join(d, "lib", n))
		}
	}
	for _, d := range mpiDirs {
		for _, n := range names {
			c = append(c, filepath.Join(d, n))
		}
	}
	return c
}

// loadMPI dlopens the MPI library and works out its ABI.
func loadMPI(l Launch) (*mpiLib, error) {
	var h uintptr
	var path string
	var last error
	for _, c := range mpiCandidates(l) {
		var err error
		if h, err = purego.Dlopen(c, purego.RTLD_NOW|purego.RTLD_GLOBAL); err == nil {
			path = c
			break
		}
		last = err
	}
	if h == 0 {
		if p := os.Getenv("PROLONG_MPI"); p != "" {
			return nil, fmt.Errorf("dist: MPI library not loaded from PROLONG_MPI=%s: %v", p, last)
		}
		return nil, fmt.Errorf("dist: no MPI library found (tried %s, also under %s; install Open MPI: apt-get install openmpi-bin libopenmpi-dev; or set PROLONG_MPI to libmpi's path): %v",
			strings.Join(append(mpiOpenMPINames, mpiMPICHNames...), ", "), strings.Join(mpiDirs, ", "), last)
	}
	m := &mpiLib{path: path}
	syms := map[string]*uintptr{
		"MPI_Init_thread": &m.fn.initThread, "MPI_Finalize": &m.fn.finalize, "MPI_Comm_rank": &m.fn.commRank,
		"MPI_Comm_size": &m.fn.commSize, "MPI_Abort": &m.fn.abort, "MPI_Barrier": &m.fn.barrier,
		"MPI_Allreduce": &m.fn.allreduce, "MPI_Reduce_scatter_block": &m.fn.reduceScatterBlock,
		"MPI_Allgather": &m.fn.allgather, "MPI_Bcast": &m.fn.bcast, "MPI_Get_library_version": &m.fn.getLibraryVersion,
		"MPI_Wtime": &m.fn.wtime,
	}
	for name, dst := range syms {
		p, err := purego.Dlsym(h, name)
		if err != nil {
			return nil, fmt.Errorf("dist: %s has no symbol %s (not MPI-3?): %w", path, name, err)
		}
		*dst = p
	}
	if world, err := purego.Dlsym(h, "ompi_mpi_comm_world"); err == nil {
		a := mpiABI{name: "Open MPI", comm: world, inPlace: 1, threadSerialized: 2}
		for name, dst := range map[string]*uintptr{"ompi_mpi_float": &a.f32, "ompi_mpi_unsigned_short": &a.u16, "ompi_mpi_op_sum": &a.sum} {
			p, err := purego.Dlsym(h, name)
			if err != nil {
				return nil, fmt.Errorf("dist: %s (Open MPI) has no symbol %s: %w", path, name, err)
			}
			*dst = p
		}
		m.abi = a
		return m, nil
	}
	v := m.libraryVersion()
	if !strings.Contains(v, "MPICH") && !strings.Contains(v, "Intel") && !strings.Contains(v, "MVAPICH") && !strings.Contains(v, "CRAY MPICH") {
		return nil, fmt.Errorf("dist: %s is neither Open MPI (no ompi_mpi_comm_world) nor of the MPICH ABI (version %q)", path, v)
	}
	m.abi = mpiABI{name: "MPICH", comm: 0x44000000, f32: 0x4c00040a, u16: 0x4c000204, sum: 0x58000003,
		inPlace: ^uintptr(0), threadSerialized: 2}
	return m, nil
}

// libraryVersion is MPI_Get_library_version's string (callable before MPI_Init).
func (m *mpiLib) libraryVersion() string {
	buf := make([]byte, 8192+1) // MPICH's MPI_MAX_LIBRARY_VERSION_STRING; Open MPI's is 256
	var n int32
	if ccall(m.fn.getLibraryVersion, uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n))) != 0 || n <= 0 {
		return ""
	}
	return strings.TrimRight(string(buf[:n]), "\x00\n ")
}

// ccall calls a C function (MPI, NCCL) that returns an int status code.
//
//go:uintptrescapes
func ccall(fn uintptr, args ...uintptr) int {
	r, _, _ := purego.SyscallN(fn, args...)
	return int(int32(r))
}

// mpiOnce guards MPI_Init: a process initialises MPI at most once.
var mpiOnce struct {
	sync.Mutex
	used bool
}

// mpiComm serves MPI calls on one goroutine locked to its OS thread (MPI_THREAD_SERIALIZED
// asks no more of the library); callers hand it closures and wait with a watchdog.
type mpiComm struct {
	lib                   *mpiLib
	rank, size, localRank int
	timeout               time.Duration
	opts                  Options
	reqs                  chan mpiReq
	closed                bool
	version               string
}

type mpiReq struct {
	fn   func() int
	done chan int
}

// NewMPI initialises MPI (MPI_Init_thread, MPI_THREAD_SERIALIZED) and returns the world
// communicator over host buffers. l is the launch Detect found: its local rank is kept, and its
// size is checked against MPI's (a mismatch means the library is not the launcher's).
func NewMPI(l Launch, opts Options) (Comm, error) {
	mpiOnce.Lock()
	defer mpiOnce.Unlock()
	if mpiOnce.used {
		return nil, fmt.Errorf("dist: MPI was already initialised in this process (MPI_Init runs once)")
	}
	lib, err := loadMPI(l)
	if err != nil {
		return nil, err
	}
	c := &mpiComm{lib: lib, localRank: l.LocalRank, timeout: opts.timeout(), opts: opts, reqs: make(chan mpiReq), version: lib.libraryVersion()}
	ready := make(chan error)
	go c.serve(ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	mpiOnce.used = true
	if l.Size > 0 && l.Size != c.size {
		c.Abort(fmt.Sprintf("MPI_Comm_size is %d but %s says %d: %s is not the MPI library of the launcher (set PROLONG_MPI)", c.size, l.Source, l.Size, lib.path))
	}
	if l.Launcher != LaunchNone && l.Launcher != LaunchTorchrun && l.Rank != c.rank {
		c.Abort(fmt.Sprintf("MPI_Comm_rank is %d but %s says %d", c.rank, l.Source, l.Rank))
	}
	slog.Debug("dist: mpi", "library", lib.path, "abi", lib.abi.name, "rank", c.rank, "size", c.size, "local_rank", c.localRank)
	return c, nil
}

func (c *mpiComm) serve(ready chan<- error) {
	runtime.LockOSThread() // MPI's calls stay on the thread that initialised it; never unlocked
	provided := new(int32)
	rank, size := new(int32), new(int32)
	if rc := ccall(c.lib.fn.initThread, 0, 0, c.lib.abi.threadSerialized, uintptr(unsafe.Pointer(provided))); rc != 0 {
		ready <- fmt.Errorf("dist: MPI_Init_thread (%s) failed with code %d", c.lib.path, rc)
		return
	}
	if uintptr(*provided) < c.lib.abi.threadSerialized {
		slog.Debug("dist: MPI granted a thread level below MPI_THREAD_SERIALIZED; calls stay on one thread", "provided", *provided)
	}
	ccall(c.lib.fn.commRank, c.lib.abi.comm, uintptr(unsafe.Pointer(rank)))
	ccall(c.lib.fn.commSize, c.lib.abi.comm, uintptr(unsafe.Pointer(size)))
	c.rank, c.size = int(*rank), int(*size)
	ready <- nil
	for r := range c.reqs {
		r.done <- r.fn()
	}
}

func (c *mpiComm) Rank() int       { return c.rank }
func (c *mpiComm) Size() int       { return c.size }
func (c *mpiComm) LocalRank() int  { return c.localRank }
func (c *mpiComm) Backend() string { return "mpi" }

// run hands fn to the MPI goroutine and waits; past the timeout it aborts the job.
func (c *mpiComm) run(op string, fn func() int) error {
	if c.closed {
		return fmt.Errorf("dist: %s on rank %d: %w", op, c.rank, ErrClosed)
	}
	req := mpiReq{fn: fn, done: make(chan int, 1)}
	start := time.Now()
	c.reqs <- req
	timer, stop := deadline(c.timeout)
	defer stop()
	select {
	case rc := <-req.done:
		if rc != 0 {
			return fmt.Errorf("dist: %s on rank %d: MPI error code %d", op, c.rank, rc)
		}
		return nil
	case <-timer:
		c.Abort(fmt.Sprintf("%s did not complete on rank %d of %d after waiting %v (timeout %v): a rank is gone or stuck%s",
			op, c.rank, c.size, time.Since(start).Round(time.Millisecond), c.timeout, c.opts.describe()))
		return nil // not reached
	}
}

// Abort prints reason and calls MPI_Abort, which ends every rank of the job. It is called from
// the caller's goroutine while the MPI goroutine may be blocked in a collective: MPI_Abort from
// a second thread is outside MPI_THREAD_SERIALIZED's contract, but it is the process's last act
// (Open MPI and MPICH both abort through their runtime). Should it return or hang, the process
// exits with status 134 after 10 s, which makes the launcher end the job.
func (c *mpiComm) Abort(reason string) {
	msg := fmt.Sprintf("dist: aborting the job (rank %d of %d): %s", c.rank, c.size, reason)
	fmt.Fprintln(os.Stderr, msg)
	go func() {
		time.Sleep(10 * time.Second)
		os.Exit(134)
	}()
	ccall(c.lib.fn.abort, c.lib.abi.comm, 134)
	time.Sleep(11 * time.Second)
	os.Exit(134)
}

// Close calls MPI_Finalize on the MPI goroutine, which then ends.
func (c *mpiComm) Close() error {
	if c.closed {
		return nil
	}
	err := c.run("finalize", func() int { return ccall(c.lib.fn.finalize) })
	c.closed = true
	close(c.reqs)
	return err
}

func hostCheck(op string, bufs ...Buffer) error {
	for _, b := range bufs {
		if _, ok := b.(DeviceBuffer); ok {
			return fmt.Errorf("dist: %s: the mpi backend takes host buffers; device buffers go through --dist nccl", op)
		}
	}
	return nil
}

func countOK(op string, n int) error {
	if n > math.MaxInt32 {
		return fmt.Errorf("dist: %s: %d elements exceed MPI's int count (%d)", op, n, math.MaxInt32)
	}
	return nil
}

// ptr is the address of a host buffer's first element (nil for an empty one).
func ptr(b Buffer) unsafe.Pointer {
	switch b := b.(type) {
	case HostF32:
		if len(b) > 0 {
			return unsafe.Pointer(&b[0])
		}
	case HostBF16:
		if len(b) > 0 {
			return unsafe.Pointer(&b[0])
		}
	}
	return nil
}

// bits is the MPI datatype that moves b's elements unchanged.
func (c *mpiComm) bits(b Buffer) uintptr {
	if b.DType() == BFloat16 {
		return c.lib.abi.u16
	}
	return c.lib.abi.f32
}

// widen returns b as fp32 (b itself for fp32, a converted copy for bf16).
func widen(b Buffer) HostF32 {
	if f, ok := b.(HostF32); ok {
		return f
	}
	f := make(HostF32, b.Len())
	load(f, b)
	return f
}

func (c *mpiComm) AllReduce(buf Buffer) error {
	const op = "all-reduce"
	if err := checkBuf(op, "buf", buf); err != nil {
		return err
	}
	if err := hostCheck(op, buf); err != nil {
		return err
	}
	f := widen(buf)
	p, a := unsafe.Pointer(nil), c.lib.abi
	if len(f) > 0 {
		p = unsafe.Pointer(&f[0])
	}
	err := c.run(fmt.Sprintf("%s of %v×%d", op, buf.DType(), buf.Len()), func() int {
		for off := 0; off < len(f); off += math.MaxInt32 {
			n := min(len(f)-off, math.MaxInt32)
			if rc := ccall(c.lib.fn.allreduce, a.inPlace, uintptr(unsafe.Add(p, 4*off)), uintptr(n), a.f32, a.sum, a.comm); rc != 0 {
				return rc
			}
		}
		return 0
	})
	if err == nil && buf.DType() == BFloat16 {
		store(buf, 0, f)
	}
	return err
}

func (c *mpiComm) ReduceScatter(send, recv Buffer) error {
	const op = "reduce-scatter"
	if err := checkPair(op, send, recv, c.size, false); err != nil {
		return err
	}
	if err := hostCheck(op, send, recv); err != nil {
		return err
	}
	if err := countOK(op, recv.Len()); err != nil {
		return err
	}
	fs := widen(send)
	fr, ok := recv.(HostF32)
	if !ok {
		fr = make(HostF32, recv.Len())
	}
	ps, pr, a := ptr(fs), ptr(fr), c.lib.abi
	err := c.run(fmt.Sprintf("%s of %v×%d", op, send.DType(), send.Len()), func() int {
		return ccall(c.lib.fn.reduceScatterBlock, uintptr(ps), uintptr(pr), uintptr(len(fr)), a.f32, a.sum, a.comm)
	})
	if err == nil && recv.DType() == BFloat16 {
		store(recv, 0, fr)
	}
	return err
}

func (c *mpiComm) AllGather(send, recv Buffer) error {
	const op = "all-gather"
	if err := checkPair(op, send, recv, c.size, true); err != nil {
		return err
	}
	if err := hostCheck(op, send, recv); err != nil {
		return err
	}
	if err := countOK(op, recv.Len()); err != nil {
		return err
	}
	ps, pr, t, n := ptr(send), ptr(recv), c.bits(send), send.Len()
	return c.run(fmt.Sprintf("%s of %v×%d", op, send.DType(), n), func() int {
		return ccall(c.lib.fn.allgather, uintptr(ps), uintptr(n), t, uintptr(pr), uintptr(n), t, c.lib.abi.comm)
	})
}

func (c *mpiComm) Broadcast(buf Buffer, root int) error {
	const op = "broadcast"
	if err := checkBuf(op, "buf", buf); err != nil {
		return err
	}
	if err := checkRoot(op, root, c.size); err != nil {
		return err
	}
	if err := hostCheck(op, buf); err != nil {
		return err
	}
	p, t, n, es := ptr(buf), c.bits(buf), buf.Len(), buf.DType().Size()
	return c.run(fmt.Sprintf("%s of %v×%d from rank %d", op, buf.DType(), n, root), func() int {
		for off := 0; off < n; off += math.MaxInt32 {
			k := min(n-off, math.MaxInt32)
			if rc := ccall(c.lib.fn.bcast, uintptr(unsafe.Add(p, es*off)), uintptr(k), t, uintptr(root), c.lib.abi.comm); rc != 0 {
				return rc
			}
		}
		return 0
	})
}

func (c *mpiComm) Barrier() error {
	return c.run("barrier", func() int { return ccall(c.lib.fn.barrier, c.lib.abi.comm) })
}

// MPIVersion is the loaded MPI library's version string and path, for logs ("" before NewMPI
// or for another backend).
func MPIVersion(c Comm) string {
	if m, ok := c.(*mpiComm); ok {
		return m.version + " (" + m.lib.path + ")"
	}
	return ""
}
