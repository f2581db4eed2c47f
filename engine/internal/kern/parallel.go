package kern

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The worker pool: persistent goroutines fed through a buffered channel of jobs. A caller of
// Parallel offers its job to idle workers (never blocking on the channel) and then works on the
// job itself, so nested calls cannot deadlock: when every worker is busy, the caller simply runs
// all the chunks inline.
//
// Waiting spins for a while before it sleeps (like OpenMP's OMP_WAIT_POLICY or ONNX Runtime's
// allow_spinning): an idle worker polls the job channel and a caller polls its job's finished
// count for up to SpinWait, yielding to other goroutines every few polls, and only then blocks.
// A batch-1 decode step runs ~100 jobs of 0.03-0.3 ms each with gaps of a few microseconds; a
// worker that went to sleep in a gap is woken through the OS (tens of microseconds on a VM),
// and a token took 20% longer for it.

type pjob struct {
	fn     func(lo, hi int)
	n      int
	chunks int
	next   atomic.Int64 // next chunk to claim
	done   atomic.Int64 // chunks finished
	wg     sync.WaitGroup
}

// run claims and runs chunks until none is left.
func (j *pjob) run() {
	for {
		c := int(j.next.Add(1)) - 1
		if c >= j.chunks {
			return
		}
		j.fn(c*j.n/j.chunks, (c+1)*j.n/j.chunks)
		j.done.Add(1)
		j.wg.Done()
	}
}

var pool struct {
	mu      sync.Mutex
	workers int
	ch      chan *pjob
}

// ensureWorkers makes sure at least want workers are running.
func ensureWorkers(want int) chan *pjob {
	pool.mu.Lock()
	defer pool.mu.Unlock()
	if pool.ch == nil {
		pool.ch = make(chan *pjob, 256)
	}
	for ; pool.workers < want; pool.workers++ {
		go func(ch chan *pjob) {
			for {
				var j *pjob
				if !spin(func() bool {
					select {
					case j = <-ch:
						return true
					default:
						return false
					}
				}) {
					j = <-ch
				}
				j.run()
			}
		}(pool.ch)
	}
	return pool.ch
}

// Threads caps how many contiguous chunks a kernel splits its work into, and so how many
// cores it keeps busy at once: 0 (or less) means runtime.GOMAXPROCS(0), read at each call. The
// package-level functions (Parallel, MatMul, NewWeightF32, ...) are the Threads(0) methods.
// Reductions whose partial sums follow the chunks give the same bits for the same Threads.
type Threads int

// count is the number of chunks t allows.
func (t Threads) count() int {
	if t > 0 {
		return int(t)
	}
	return runtime.GOMAXPROCS(0)
}

// Count is the number of chunks t allows: t, or GOMAXPROCS for 0.
func (t Threads) Count() int { return t.count() }

// ParallelFine is Parallel with up to chunksPerThread chunks per thread, claimed by whichever
// thread is free first: for work whose result does not depend on the split (each item written
// by one chunk), so that a thread started late or slowed by other load takes fewer chunks.
func (t Threads) ParallelFine(n, chunksPerThread int, fn func(lo, hi int)) {
	t.parallel(n, 1, max(1, chunksPerThread), fn)
}

// Parallel runs fn over [0,n) split into at most GOMAXPROCS contiguous, near-equal chunks of at
// least grain items (one chunk when n < 2·grain) on the persistent worker pool; the caller
// runs chunks too. It returns when every chunk is done. Safe for concurrent use; nested calls
// (fn calling Parallel) run inline when no worker is free and never deadlock.
func Parallel(n, grain int, fn func(lo, hi int)) { Threads(0).Parallel(n, grain, fn) }

// Parallel is the package-level Parallel with at most t chunks (GOMAXPROCS when t is 0).
func (t Threads) Parallel(n, grain int, fn func(lo, hi int)) { t.parallel(n, grain, 1, fn) }

func (t Threads) parallel(n, grain, perThread int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	if grain < 1 {
		grain = 1
	}
	p := t.count()
	chunks := min(p*perThread, n/grain)
	if chunks <= 1 {
		fn(0, n)
		return
	}
	ch := ensureWorkers(p - 1)
	j := &pjob{fn: fn, n: n, chunks: chunks}
	j.wg.Add(chunks)
offer:
	for i := 0; i < min(chunks, p)-1; i++ {
		select {
		case ch <- j:
		default:
			break offer
		}
	}
	j.run()
	spin(func() bool { return j.done.Load() == int64(chunks) })
	j.wg.Wait()
}

// DefaultSpinWait is how long a waiting thread of the pool spins before it sleeps, unless
// SetSpinWait says otherwise. On 2 cores, batch-1 decode: 45-47 tok/s without spinning,
// 53 with 30µs or 100µs; two such processes sharing the cores: 30-35 tok/s each without, 34-35
// with 30µs, 31-34 with 100µs (the longer spin takes time from the other process).
const DefaultSpinWait = 30 * time.Microsecond

var spinWait atomic.Int64 // nanoseconds

func init() { spinWait.Store(int64(DefaultSpinWait)) }

// SetSpinWait sets how long a waiting thread of the pool (an idle worker, or a caller whose
// chunks are done) polls for work before it blocks; 0 blocks at once, for machines whose
// cores are shared with other busy processes. Results do not depend on it.
func SetSpinWait(d time.Duration) { spinWait.Store(int64(max(d, 0))) }

// SpinWait returns the current spin wait.
func SpinWait() time.Duration { return time.Duration(spinWait.Load()) }

// spin polls ready until it returns true (then spin returns true) or the spin wait has passed
// (false). It yields to other goroutines every 64 polls, so that a spinning thread never keeps
// runnable goroutines of the program off its P for long.
func spin(ready func() bool) bool {
	d := SpinWait()
	if ready() {
		return true
	}
	if d <= 0 {
		return false
	}
	deadline := time.Now().Add(d)
	for i := 1; ; i++ {
		if ready() {
			return true
		}
		if i%64 == 0 {
			if time.Now().After(deadline) {
				return false
			}
			runtime.Gosched()
		}
	}
}
