//go:build unix

package main

import (
	"testing"

	"github.com/prolong-rl/prolong/tools/internal/tooltest"
)

// TestInterrupt runs the real program, built with -tags testhold so that it stops once its
// weights are written (or while reading), and interrupts or kills it there (see the
// scenarios of tooltest): SIGINT and SIGTERM leave the output's parent as it was and say that
// nothing was written, also when they come while the input is read; SIGKILL leaves a
// temporary output and a lock file that the next run removes, sparing those of a live run.
func TestInterrupt(t *testing.T) {
	hold := tooltest.Build(t, ".", true)
	args := func(out string) []string { return []string{"-i", fixture("qwen2_past"), "-o", out} }
	tooltest.Interrupted(t, hold, args)
	t.Run("while reading", func(t *testing.T) { tooltest.InterruptedReading(t, hold, args) })
	t.Run("SIGKILL", func(t *testing.T) { tooltest.Killed(t, hold, tooltest.Build(t, ".", false), args) })
}
