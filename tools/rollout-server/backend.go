package main

import (
	"sync"

	"github.com/prolong-rl/prolong/engine"
)

// servingCPU is the CPU backend with a smaller pool of free activation buffers. The engine's
// CPU backend keeps up to 1 GiB of freed buffers, keyed by their exact size, for training steps
// that re-allocate the same shapes; a server's batches change size at every step, so that pool
// fills with buffers of sizes that rarely come back and the process grows towards the full GiB
// under load. Here buffers are kept up to limit bytes in all, the rest left to the GC.
type servingCPU struct {
	*engine.CPU
	mu     sync.Mutex
	pool   map[int][][]float32
	pooled int64 // bytes in pool
	limit  int64
}

func newServingCPU(limitBytes int64) *servingCPU {
	return &servingCPU{CPU: engine.NewCPU(), pool: map[int][][]float32{}, limit: limitBytes}
}

// Alloc implements engine.Backend: a zeroed F32 tensor, from the pool when one of its size is
// there.
func (c *servingCPU) Alloc(shape ...int) *engine.Tensor {
	t := &engine.Tensor{Shape: append([]int(nil), shape...), DType: engine.F32}
	n := t.Len()
	c.mu.Lock()
	if free := c.pool[n]; len(free) > 0 {
		buf := free[len(free)-1]
		c.pool[n] = free[:len(free)-1]
		c.pooled -= int64(n) * 4
		c.mu.Unlock()
		clear(buf)
		t.Buf = buf
		return t
	}
	c.mu.Unlock()
	t.Buf = make([]float32, n)
	return t
}

// Free implements engine.Backend: an activation buffer goes back to the pool while it has
// room; anything else is the CPU backend's to free.
func (c *servingCPU) Free(t *engine.Tensor) {
	if t == nil {
		return
	}
	buf, ok := t.Buf.([]float32)
	if !ok {
		c.CPU.Free(t)
		return
	}
	c.mu.Lock()
	if c.pooled+int64(len(buf))*4 <= c.limit {
		c.pool[len(buf)] = append(c.pool[len(buf)], buf)
		c.pooled += int64(len(buf)) * 4
	}
	c.mu.Unlock()
	t.Buf = nil
}
