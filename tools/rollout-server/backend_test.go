package main

import (
	"testing"

	"github.com/prolong-rl/prolong/engine/cpu"
)

// TestServingCPUPool: on the CPU the server's backend keeps freed activation buffers only up to
// --activation-pool-mib (the pool itself is engine/cpu's, tested there): a buffer that fits is
// reused, a larger one is left to the GC.
func TestServingCPUPool(t *testing.T) {
	dir, _, _ := modelDir(t, 1, true)
	o := testOptions(dir)
	o.poolMiB = 1
	s, err := newServer(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.sched.Close()
	b, ok := s.sched.Model().Backend.(*cpu.Backend)
	if !ok {
		t.Fatalf("backend %T, want *cpu.Backend", s.sched.Model().Backend)
	}
	reused := func(floats int) bool {
		a := b.Alloc(floats)
		buf := a.Buf.([]float32)
		b.Free(a)
		c := b.Alloc(floats)
		defer b.Free(c)
		return &c.Buf.([]float32)[0] == &buf[0]
	}
	if !reused(100 << 10) { // 400 KiB
		t.Error("a 400 KiB buffer is not reused under a 1 MiB pool")
	}
	if reused(512 << 10) { // 2 MiB
		t.Error("a 2 MiB buffer is kept by a 1 MiB pool")
	}
}
