package cpu

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/internal/kern"
)

// amxWarning says once per process that AMX is there but unusable.
var amxWarning sync.Once

// open makes the CPU backend engine.OpenDevice asks for. bf16 matmul precision needs the CPU's
// AVX512_BF16 or AMX: elsewhere the exact emulation would be far slower than fp32.
func open(o engine.DeviceOptions) (engine.Backend, error) {
	name := o.MatMulPrecision
	if name == "" {
		name = "auto"
	}
	p, err := ParsePrecision(name)
	if err != nil {
		return nil, fmt.Errorf("--matmul-precision: %w", err)
	}
	if p == PrecisionBF16 && !HasBF16Dot() {
		return nil, errors.New("--matmul-precision bf16: this CPU has no AVX512_BF16 or AMX (bf16 dot products would run in a slow emulation); use auto")
	}
	if kern.AMXRefused() {
		amxWarning.Do(func() {
			slog.Warn("cpu: this CPU has AMX but the process cannot use it; bf16 dot products run on VDPBF16PS", "why", kern.AMXStatus())
		})
	}
	opts := []Option{WithMatMulPrecision(p), WithThreads(o.Threads)}
	switch {
	case o.PoolLimitBytes > 0:
		opts = append(opts, WithPoolLimit(o.PoolLimitBytes))
	case o.PoolLimitBytes < 0:
		opts = append(opts, WithPoolLimit(0))
	}
	return New(opts...), nil
}

// Info implements engine.Describer: the machine's memory, and bf16 where the CPU has
// AVX512_BF16 or AMX.
func (c *Backend) Info() engine.DeviceInfo {
	precs := []string{"auto", "fp32"}
	if HasBF16Dot() {
		precs = append(precs, "bf16")
	}
	return engine.DeviceInfo{Kind: "cpu", Name: c.Name(), MemoryBytes: engine.SystemMemory(), BF16: HasBF16Dot(), MatMulPrecisions: precs}
}

// Close implements engine.Backend: it drops the pooled buffers.
func (c *Backend) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.pool)
	c.pooled = 0
	c.wpool = nil
	return nil
}
