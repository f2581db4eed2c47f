package enginetest

import (
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// TestCPU runs the conformance suite on the CPU backend against another CPU backend, with
// fp32 and with bf16 model weights: it must pass exactly, and it shows the plumbing works.
func TestCPU(t *testing.T) {
	for _, dt := range []engine.DType{engine.F32, engine.BF16} {
		t.Run(dt.String(), func(t *testing.T) {
			Run(t, cpu.New(), Options{Reference: cpu.New(), WeightDType: dt, Short: testing.Short()})
		})
	}
}
