// Package dist is the communicator for data-parallel training: each process (a rank) learns its
// rank, the number of ranks (size) and its rank on its node (local rank, which picks its GPU),
// and joins the others in collectives: all-reduce (sum, in place), reduce-scatter, all-gather,
// broadcast and barrier, over fp32 and bf16 buffers.
//
// Backends:
//   - "local": pure Go. NewLocal is a world of one rank; NewLocalGroup makes N ranks in one
//     process that meet over channels. It defines the semantics the other backends are tested
//     against.
//   - "mpi": host buffers through an MPI library loaded at run time (Open MPI's libmpi.so.40,
//     MPICH's libmpi.so.12 / libmpich.so.12) with purego, so binaries build with CGO_ENABLED=0.
//   - "nccl": device buffers through libnccl.so.2, loaded the same way. Device memory belongs to
//     a GPU backend that registers itself (RegisterDevice), so this package never imports it.
//
// Detect (DetectEnv) finds how the job was started (mpirun, MPICH's mpiexec, srun,
// torchrun-style variables) and Open makes the communicator a Mode (--dist auto|off|mpi|nccl)
// asks for.
//
// Semantics shared by every backend:
//   - AllReduce(buf): buf on every rank becomes the element-wise sum over ranks.
//   - ReduceScatter(send, recv): send has Size()*n elements, recv n; rank r receives the sum over
//     ranks of send[r*n:(r+1)*n]. Even split only (as NCCL): pad the last shard.
//   - AllGather(send, recv): send has n elements, recv Size()*n; recv[r*n:(r+1)*n] is rank r's send.
//   - Broadcast(buf, root): buf on every rank becomes root's.
//   - bf16 sums (local and mpi) are computed in fp32 and rounded to bf16 once, to nearest even:
//     the result is the bf16 rounding of the fp32 sum. nccl uses NCCL's bf16 sum, which rounds
//     partial sums, so its bf16 results may differ in the last bits.
//   - A collective that does not complete within Options.Timeout fails: the local backend
//     returns an error wrapping ErrTimeout; the mpi backend aborts the whole job (MPI_Abort),
//     because a rank stuck inside an MPI collective cannot be got back.
package dist

import (
	"errors"
	"fmt"
	"time"
)

// DType is the element type of a Buffer.
type DType uint8

// The element types collectives move.
const (
	Float32  DType = iota + 1 // IEEE fp32
	BFloat16                  // bf16 bit patterns (the top half of an fp32), stored as uint16
)

// String is "fp32" or "bf16".
func (d DType) String() string {
	switch d {
	case Float32:
		return "fp32"
	case BFloat16:
		return "bf16"
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Size is the bytes of one element.
func (d DType) Size() int {
	switch d {
	case Float32:
		return 4
	case BFloat16:
		return 2
	}
	return 0
}

// Buffer is the memory a collective reads or writes: HostF32 and HostBF16 in host memory, or a
// DeviceBuffer of a registered GPU backend.
type Buffer interface {
	DType() DType
	Len() int // elements
}

// HostF32 is an fp32 buffer in host memory.
type HostF32 []float32

// DType is Float32.
func (HostF32) DType() DType { return Float32 }

// Len is len(b).
func (b HostF32) Len() int { return len(b) }

// HostBF16 is a bf16 buffer in host memory (bit patterns).
type HostBF16 []uint16

// DType is BFloat16.
func (HostBF16) DType() DType { return BFloat16 }

// Len is len(b).
func (b HostBF16) Len() int { return len(b) }

// Comm is one rank's view of a communicator. Its methods are collectives: every rank calls the
// same ones in the same order with buffers of matching type and length. A Comm is not safe for
// concurrent use by several goroutines.
type Comm interface {
	Rank() int      // this process's rank, 0 <= Rank() < Size()
	Size() int      // the number of ranks
	LocalRank() int // this process's rank among those on its node: the GPU it takes
	Backend() string

	// AllReduce sums buf over all ranks, in place.
	AllReduce(buf Buffer) error
	// ReduceScatter sums send (Size()*n elements) over ranks; rank r gets shard r (n elements) in recv.
	ReduceScatter(send, recv Buffer) error
	// AllGather concatenates every rank's send (n elements) in rank order into recv (Size()*n).
	AllGather(send, recv Buffer) error
	// Broadcast copies root's buf into buf on every rank.
	Broadcast(buf Buffer, root int) error
	// Barrier returns once every rank has entered it.
	Barrier() error
	// Abort ends the job on every rank it can reach, saying why; it does not return on the
	// mpi backend. On the local backend the other ranks' pending and later calls fail.
	Abort(reason string)
	// Close releases the communicator (MPI_Finalize for mpi).
	Close() error
}

// Options configure a communicator.
type Options struct {
	// Timeout bounds each collective (0: DefaultTimeout; negative: none).
	Timeout time.Duration
	// Describe, when set, is called when a collective times out, before the error or the
	// abort; its text (say, which rank is behind and the last step saved) is added to the
	// message. It runs on the waiting rank's goroutine and must not call the communicator.
	Describe func() string
}

// DefaultTimeout bounds a collective when Options.Timeout is zero. A step's gradient all-reduce
// takes well under a second; a rank that has not joined after ten minutes is gone.
const DefaultTimeout = 10 * time.Minute

// describe is Describe's text as a suffix of a timeout's message ("" without one).
func (o Options) describe() string {
	if o.Describe == nil {
		return ""
	}
	if s := o.Describe(); s != "" {
		return "; " + s
	}
	return ""
}

func (o Options) timeout() time.Duration {
	if o.Timeout == 0 {
		return DefaultTimeout
	}
	return o.Timeout
}

// Errors a collective may wrap.
var (
	ErrTimeout = errors.New("dist: collective timed out")
	ErrAborted = errors.New("dist: communicator aborted")
	ErrClosed  = errors.New("dist: communicator closed")
)

// checkSame checks that a and b have one dtype and lengths with b.Len() == mult*a.Len()
// (or a.Len() == mult*b.Len() when swap), naming the operation.
func checkPair(op string, send, recv Buffer, size int, gather bool) error {
	if err := checkBuf(op, "send", send); err != nil {
		return err
	}
	if err := checkBuf(op, "recv", recv); err != nil {
		return err
	}
	if send.DType() != recv.DType() {
		return fmt.Errorf("dist: %s: send is %v, recv is %v", op, send.DType(), recv.DType())
	}
	if gather && recv.Len() != size*send.Len() {
		return fmt.Errorf("dist: %s: recv has %d elements, want size %d × send's %d", op, recv.Len(), size, send.Len())
	}
	if !gather && send.Len() != size*recv.Len() {
		return fmt.Errorf("dist: %s: send has %d elements, want size %d × recv's %d (even split only: pad the last shard)",
			op, send.Len(), size, recv.Len())
	}
	return nil
}

func checkBuf(op, name string, b Buffer) error {
	if b == nil {
		return fmt.Errorf("dist: %s: %s buffer is nil", op, name)
	}
	if d := b.DType(); d != Float32 && d != BFloat16 {
		return fmt.Errorf("dist: %s: %s buffer has unsupported type %v", op, name, d)
	}
	return nil
}

func checkRoot(op string, root, size int) error {
	if root < 0 || root >= size {
		return fmt.Errorf("dist: %s: root %d outside ranks 0..%d", op, root, size-1)
	}
	return nil
}

// deadline is a channel that fires once d has passed (never, for d <= 0: a collective's
// timeout off) and the function that stops its timer.
func deadline(d time.Duration) (<-chan time.Time, func()) {
	if d <= 0 {
		return nil, func() {}
	}
	t := time.NewTimer(d)
	return t.C, func() { t.Stop() }
}
