package enginetest

import (
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestCPU runs the conformance suite on the CPU backend.
func TestCPU(t *testing.T) { RunOps(t, engine.NewCPU()) }
