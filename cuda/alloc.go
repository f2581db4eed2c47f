package cuda

import (
	"fmt"
	"math/bits"
	"sync"
)

// allocator is a caching allocator over cuMemAlloc, as PyTorch's: freed blocks go to a free list
// of their size class and are handed out again without a driver call; all work runs on one
// stream, so a block freed after an enqueued kernel that reads it is only reused by work
// enqueued later. When the driver is out of memory, the cached blocks are released and the
// allocation is tried once more. It never uses managed memory.
type allocator struct {
	mu      sync.Mutex
	malloc  func(bytes uint64) (uint64, error)
	release func(ptr uint64) error
	reclaim func()              // optional: frees what unreachable tensors hold (runs with mu unlocked)
	sync    func()              // optional: waits for enqueued work before cached blocks go back to the driver
	free    map[uint64][]uint64 // size class -> cached blocks
	size    map[uint64]uint64   // live block -> its size class
	inUse   uint64              // bytes handed out
	cached  uint64              // bytes in free lists
	peak    uint64              // max inUse
}

func newAllocator(malloc func(uint64) (uint64, error), release func(uint64) error) *allocator {
	return &allocator{malloc: malloc, release: release, free: map[uint64][]uint64{}, size: map[uint64]uint64{}}
}

// sizeClass rounds n bytes up to 512 bytes, then to four classes per power of two (at most 25%
// waste), so that buffers of slowly varying size (the ragged batches of decoding) share classes.
func sizeClass(n uint64) uint64 {
	if n <= 512 {
		return 512
	}
	n = (n + 511) &^ 511
	e := 63 - bits.LeadingZeros64(n) // 2^e <= n < 2^(e+1)
	if e < 11 {
		return n
	}
	step := uint64(1) << (e - 2)
	return (n + step - 1) / step * step
}

// Alloc returns a device block of at least n bytes.
func (a *allocator) Alloc(n uint64) (uint64, error) {
	c := sizeClass(n)
	a.mu.Lock()
	defer a.mu.Unlock()
	if l := a.free[c]; len(l) > 0 {
		p := l[len(l)-1]
		a.free[c] = l[:len(l)-1]
		a.cached -= c
		a.use(p, c)
		return p, nil
	}
	p, err := a.malloc(c)
	if err != nil && a.cached > 0 {
		a.releaseCached()
		p, err = a.malloc(c)
	}
	if err != nil && a.reclaim != nil {
		// Tensors dropped without Free give their memory back through cleanups, which run
		// only after a garbage collection: collect, let the cleanups run, try once more.
		a.mu.Unlock()
		a.reclaim()
		a.mu.Lock()
		a.releaseCached()
		p, err = a.malloc(c)
	}
	if err != nil {
		return 0, fmt.Errorf("allocate %d bytes (%.1f MiB in use, peak %.1f MiB): %w", c,
			float64(a.inUse)/(1<<20), float64(a.peak)/(1<<20), err)
	}
	a.use(p, c)
	return p, nil
}

func (a *allocator) use(p, c uint64) {
	a.size[p] = c
	a.inUse += c
	a.peak = max(a.peak, a.inUse)
}

// Free caches block p for reuse. Freeing an unknown block is a programmer error.
func (a *allocator) Free(p uint64) {
	if p == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.size[p]
	if !ok {
		panic(fmt.Sprintf("cuda: free of unknown device pointer %#x", p))
	}
	delete(a.size, p)
	a.inUse -= c
	a.free[c] = append(a.free[c], p)
	a.cached += c
}

// releaseCached returns every cached block to the driver, after the enqueued work that may
// still read them. a.mu is held.
func (a *allocator) releaseCached() {
	if a.cached > 0 && a.sync != nil {
		a.sync()
	}
	for c, l := range a.free {
		for _, p := range l {
			_ = a.release(p)
		}
		a.cached -= c * uint64(len(l))
		delete(a.free, c)
	}
}

// Trim returns every cached block to the driver (for a library that failed to allocate memory
// of its own, such as cuBLAS's workspace).
func (a *allocator) Trim() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.releaseCached()
}

// Stats reports bytes in use, cached, and the peak in use.
func (a *allocator) Stats() (inUse, cached, peak uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inUse, a.cached, a.peak
}
