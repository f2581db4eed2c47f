package kern

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// The worker pool: persistent goroutines fed through a buffered channel of jobs. A caller of
// Parallel offers its job to idle workers (never blocking on the channel) and then works on the
// job itself, so nested calls cannot deadlock: when every worker is busy, the caller simply runs
// all the chunks inline.

type pjob struct {
	fn     func(lo, hi int)
	n      int
	chunks int
	next   atomic.Int64 // next chunk to claim
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
			for j := range ch {
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
	j.wg.Wait()
}
