// Command mpitest checks the mpi backend of engine/dist under a real launcher, against the
// in-process reference backend (dist.NewLocalGroup) fed the same inputs. Run it under mpirun:
//
//	CGO_ENABLED=0 go build -o /tmp/mpitest ./engine/dist/internal/mpitest
//	mpirun --allow-run-as-root --oversubscribe -np 3 /tmp/mpitest            # every collective
//	mpirun --allow-run-as-root --oversubscribe -np 2 /tmp/mpitest -mode timeout -timeout 2s
//	mpirun --allow-run-as-root -np 2 /tmp/mpitest -mode bench                # all-reduce bus bandwidth
//
// Mode check prints "rank R: ok N checks" and exits 0, or names the first mismatch and exits 1.
// Mode timeout: rank 1 never joins rank 0's all-reduce, so rank 0's watchdog aborts the job.
// Mode detect prints what dist.DetectEnv found and exits, without MPI; mode rendezvous shares
// 128 bytes from rank 0 over TCP at MASTER_ADDR:MASTER_PORT (torchrun-style variables); mode
// ncclinit makes the nccl communicator over the stand-in library of nccl_test.go (PROLONG_NCCL)
// and prints the checksum of the unique id ncclCommInitRank received, which came from rank 0
// over MPI under an MPI launcher and over TCP otherwise.
package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"sync"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
	"github.com/prolong-rl/prolong/engine/dist"
)

func main() {
	mode := flag.String("mode", "check", "check, timeout, bench, detect, rendezvous or ncclinit")
	timeout := flag.Duration("timeout", time.Minute, "collective timeout")
	flag.Parse()
	l, err := dist.DetectEnv()
	if err != nil {
		fail(err)
	}
	switch *mode {
	case "detect": // what the launcher told this process, without MPI
		fmt.Printf("%v (mpi %v)\n", l, l.MPI)
		return
	case "rendezvous": // rank 0's 128 bytes reach every rank over TCP (torchrun-style), without MPI
		var id []byte
		if l.Rank == 0 {
			for i := range 128 {
				id = append(id, byte(i*7+3))
			}
		}
		got, err := dist.ShareFromRank0(l, "nccl-unique-id", id, *timeout)
		if err != nil {
			fail(err)
		}
		fmt.Printf("rank %d of %d: %d bytes, first %d, last %d\n", l.Rank, l.Size, len(got), got[0], got[127])
		return
	}
	if *mode == "ncclinit" {
		if err := ncclInit(l, *timeout); err != nil {
			fail(err)
		}
		return
	}
	c, err := dist.NewMPI(l, dist.Options{Timeout: *timeout})
	if err != nil {
		fail(err)
	}
	switch *mode {
	case "check":
		n, err := check(c)
		if err != nil {
			fail(fmt.Errorf("rank %d: %w", c.Rank(), err))
		}
		fmt.Printf("rank %d of %d (local rank %d, %s): ok %d checks\n", c.Rank(), c.Size(), c.LocalRank(), l.Launcher, n)
	case "timeout":
		if c.Rank() == 1 {
			time.Sleep(10 * time.Minute) // never joins; the job's abort kills it
		}
		buf := make(dist.HostF32, 16)
		err := c.AllReduce(buf)
		fail(fmt.Errorf("rank %d: all-reduce returned %v instead of aborting", c.Rank(), err))
	case "bench":
		if err := bench(c); err != nil {
			fail(err)
		}
	default:
		fail(fmt.Errorf("-mode %q: want check, timeout or bench", *mode))
	}
	if err := c.Close(); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "mpitest:", err)
	os.Exit(1)
}

// Inputs: rank r's element i. fp32 values are quarters below 256, so every sum is exact in any
// order; bf16 values are 1 + k/128 (exact in bf16) whose sums need rounding back to bf16.
func inF32(r, i int) float32 { return float32((i*7+r*13)%1000)/4 - 100 }
func inBF16(r, i int) uint16 {
	return uint16(math.Float32bits(1+float32((i+r*5)%128)/128) >> 16)
}

func inputs(dt dist.DType, r, n int) dist.Buffer {
	if dt == dist.Float32 {
		b := make(dist.HostF32, n)
		for i := range b {
			b[i] = inF32(r, i)
		}
		return b
	}
	b := make(dist.HostBF16, n)
	for i := range b {
		b[i] = inBF16(r, i)
	}
	return b
}

func alloc(dt dist.DType, n int) dist.Buffer {
	if dt == dist.Float32 {
		return make(dist.HostF32, n)
	}
	return make(dist.HostBF16, n)
}

// reference runs op on every rank of an in-process group of size ranks and returns rank's result.
func reference(size, rank int, op func(c dist.Comm) (dist.Buffer, error)) (dist.Buffer, error) {
	cs := dist.NewLocalGroup(size, dist.Options{Timeout: time.Minute})
	out := make([]dist.Buffer, size)
	errs := make([]error, size)
	var wg sync.WaitGroup
	for r, c := range cs {
		wg.Go(func() { out[r], errs[r] = op(c) })
	}
	wg.Wait()
	return out[rank], errs[rank]
}

func equal(a, b dist.Buffer) (int, bool) {
	switch a := a.(type) {
	case dist.HostF32:
		b := b.(dist.HostF32)
		for i := range a {
			if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
				return i, false
			}
		}
	case dist.HostBF16:
		b := b.(dist.HostBF16)
		for i := range a {
			if a[i] != b[i] {
				return i, false
			}
		}
	}
	return 0, true
}

func check(c dist.Comm) (int, error) {
	size, rank := c.Size(), c.Rank()
	checks := 0
	type tc struct {
		name string
		run  func(c dist.Comm, dt dist.DType, n int) (dist.Buffer, error)
	}
	cases := []tc{
		{"all-reduce", func(c dist.Comm, dt dist.DType, n int) (dist.Buffer, error) {
			b := inputs(dt, c.Rank(), n)
			return b, c.AllReduce(b)
		}},
		{"reduce-scatter", func(c dist.Comm, dt dist.DType, n int) (dist.Buffer, error) {
			out := alloc(dt, n)
			return out, c.ReduceScatter(inputs(dt, c.Rank(), n*c.Size()), out)
		}},
		{"all-gather", func(c dist.Comm, dt dist.DType, n int) (dist.Buffer, error) {
			out := alloc(dt, n*c.Size())
			return out, c.AllGather(inputs(dt, c.Rank(), n), out)
		}},
		{"broadcast", func(c dist.Comm, dt dist.DType, n int) (dist.Buffer, error) {
			b := inputs(dt, c.Rank(), n)
			return b, c.Broadcast(b, c.Size()-1)
		}},
	}
	for _, dt := range []dist.DType{dist.Float32, dist.BFloat16} {
		for _, n := range []int{1, 7, 1000, 1<<20 + 3} {
			for _, k := range cases {
				got, err := k.run(c, dt, n)
				if err != nil {
					return checks, fmt.Errorf("%s %v×%d: %w", k.name, dt, n, err)
				}
				want, err := reference(size, rank, func(c dist.Comm) (dist.Buffer, error) { return k.run(c, dt, n) })
				if err != nil {
					return checks, fmt.Errorf("%s %v×%d on the reference: %w", k.name, dt, n, err)
				}
				if i, ok := equal(got, want); !ok {
					return checks, fmt.Errorf("%s %v×%d: element %d differs from the reference (got %v, want %v)",
						k.name, dt, n, i, at(got, i), at(want, i))
				}
				checks++
			}
		}
	}
	// A hand-worked value, independent of the reference: element 0 of an fp32 all-reduce is
	// the sum over r of (13r % 1000)/4 - 100.
	b := inputs(dist.Float32, rank, 1)
	if err := c.AllReduce(b); err != nil {
		return checks, err
	}
	var want float32
	for r := 0; r < size; r++ {
		want += float32(13*r)/4 - 100
	}
	if v := b.(dist.HostF32)[0]; v != want {
		return checks, fmt.Errorf("all-reduce of element 0: got %v, want %v", v, want)
	}
	checks++
	// Barrier: after it, every rank has reached it (checked by an all-reduce of ones after it).
	if err := c.Barrier(); err != nil {
		return checks, err
	}
	one := dist.HostF32{1}
	if err := c.AllReduce(one); err != nil || one[0] != float32(size) {
		return checks, fmt.Errorf("barrier then all-reduce of ones: %v, %v", one[0], err)
	}
	checks++
	return checks, nil
}

func at(b dist.Buffer, i int) any {
	switch b := b.(type) {
	case dist.HostF32:
		return b[i]
	case dist.HostBF16:
		return fmt.Sprintf("bf16 %#04x = %v", b[i], math.Float32frombits(uint32(b[i])<<16))
	}
	return nil
}

// bench measures fp32 all-reduce bandwidth as NCCL-tests report it: algbw = bytes / time,
// busbw = algbw × 2(n-1)/n, beside this machine's memory copy bandwidth measured in the same run.
func bench(c dist.Comm) error {
	n := c.Size()
	if c.Rank() == 0 {
		mb := memBandwidth()
		fmt.Printf("memory copy bandwidth (rank 0 alone, read+write): %.2f GB/s\n", mb/1e9)
		fmt.Printf("%12s %8s %10s %10s %10s\n", "bytes", "iters", "best(us)", "algbw GB/s", "busbw GB/s")
	}
	for _, elems := range []int{1 << 10, 1 << 14, 1 << 18, 1 << 20, 1 << 22} {
		buf := make(dist.HostF32, elems)
		iters := max(3, min(100, (1<<24)/elems))
		if err := c.AllReduce(buf); err != nil { // warm-up
			return err
		}
		best := math.Inf(1) // the best of three timed blocks: other processes share the cores
		for range 3 {
			if err := c.Barrier(); err != nil {
				return err
			}
			t0 := time.Now()
			for range iters {
				if err := c.AllReduce(buf); err != nil {
					return err
				}
			}
			best = min(best, time.Since(t0).Seconds()/float64(iters))
		}
		bytes := float64(4 * elems)
		alg := bytes / best
		bus := alg * 2 * float64(n-1) / float64(n)
		if c.Rank() == 0 {
			fmt.Printf("%12d %8d %10.1f %10.2f %10.2f\n", 4*elems, iters, best*1e6, alg/1e9, bus/1e9)
		}
	}
	return nil
}

// memBandwidth is copy bandwidth over 256 MiB buffers (bytes read + written per second).
func memBandwidth() float64 {
	src := make([]byte, 256<<20)
	dst := make([]byte, len(src))
	for i := range src {
		src[i] = byte(i)
	}
	copy(dst, src)
	best := math.Inf(1)
	for range 5 {
		t0 := time.Now()
		copy(dst, src)
		best = min(best, time.Since(t0).Seconds())
	}
	return 2 * float64(len(src)) / best
}

// hostDevice is a Device over host memory, for the stand-in NCCL library.
type hostDevice struct{ scratch [1]float32 }

func (*hostDevice) Ordinal() int            { return 0 }
func (*hostDevice) Stream() uintptr         { return 0 }
func (*hostDevice) Do(f func() error) error { return f() }
func (*hostDevice) Synchronize() error      { return nil }
func (d *hostDevice) Scratch(int) (uintptr, error) {
	return uintptr(unsafe.Pointer(&d.scratch[0])), nil
}

func ncclInit(l dist.Launch, timeout time.Duration) error {
	var host dist.Comm
	if l.MPI {
		var err error
		if host, err = dist.NewMPI(l, dist.Options{Timeout: timeout}); err != nil {
			return err
		}
	}
	c, err := dist.NewNCCL(l, &hostDevice{}, host, dist.Options{Timeout: timeout})
	if err != nil {
		return err
	}
	lib, err := purego.Dlopen(os.Getenv("PROLONG_NCCL"), purego.RTLD_NOW)
	if err != nil {
		return err
	}
	last, err := purego.Dlsym(lib, "fake_last")
	if err != nil {
		return fmt.Errorf("PROLONG_NCCL is not the stand-in library: %w", err)
	}
	var rec [8]int64
	purego.SyscallN(last, uintptr(unsafe.Pointer(&rec[0])))
	fmt.Printf("rank %d of %d: ncclCommInitRank(nranks %d, rank %d), id checksum %d\n", c.Rank(), c.Size(), rec[1], rec[2], uint64(rec[3]))
	return c.Close()
}
