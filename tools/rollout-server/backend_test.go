package main

import (
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestServingCPUPool: freed buffers are reused (same storage, zeroed) while the pool holds at
// most its limit in bytes; beyond it buffers are dropped.
func TestServingCPUPool(t *testing.T) {
	c := newServingCPU(1000) // 250 floats
	a := c.Alloc(10, 10)     // 400 bytes
	buf := a.Buf.([]float32)
	buf[3] = 7
	c.Free(a)
	if c.pooled != 400 || a.Buf != nil {
		t.Fatalf("after one free: pooled %d", c.pooled)
	}
	b := c.Alloc(4, 25) // same size: the same storage, cleared
	if got := b.Buf.([]float32); &got[0] != &buf[0] || got[3] != 0 || c.pooled != 0 {
		t.Fatalf("not reused or not cleared: %v, pooled %d", got[3], c.pooled)
	}
	for _, shape := range [][]int{{10, 10}, {5, 10}, {20, 10}, {3, 3}} {
		c.Free(c.Alloc(shape...))
		if c.pooled > c.limit {
			t.Fatalf("pool %d bytes over its %d limit", c.pooled, c.limit)
		}
	}
	// 400 + 200 + 36 bytes kept, the 800-byte buffer dropped.
	if c.pooled != 636 || len(c.pool[200]) != 0 {
		t.Fatalf("pooled %d bytes, %d buffers of 200 floats", c.pooled, len(c.pool[200]))
	}
	c.Free(b)
	if c.pooled != 636 { // no room for 400 more
		t.Fatalf("pooled %d", c.pooled)
	}
	var _ engine.Backend = c
}
