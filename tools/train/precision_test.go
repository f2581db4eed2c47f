package main

import (
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/grpo"
)

// TestMatMulPrecision: --matmul-precision names a precision or fails naming the flag; bf16
// needs AVX512_BF16 (refused elsewhere, naming it). Where the CPU has it, the flag reaches the
// backend and a short default job runs in bf16 matmuls to a finite loss. (The arithmetic itself
// is checked against the fp32 path by engine/enginetest's TestCPUBF16Training.)
func TestMatMulPrecision(t *testing.T) {
	if err := runArgs(t, append(shortRun, "--out", t.TempDir(), "--matmul-precision", "fp16")...); err == nil || !strings.Contains(err.Error(), "--matmul-precision") {
		t.Fatalf("--matmul-precision fp16: %v", err)
	}
	bf16 := append(shortRun, "--device", "cpu", "--steps", "2", "--no-dynamic-sampling", "--matmul-precision", "bf16", "--out", t.TempDir())
	if !cpu.HasBF16Dot() {
		if err := runArgs(t, bf16...); err == nil || !strings.Contains(err.Error(), "AVX512_BF16") {
			t.Fatalf("bf16 on a CPU without AVX512_BF16: %v", err)
		}
		return
	}
	o, fs, err := parseOptions(bf16)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := runConfig(*o, fs)
	if err != nil {
		t.Fatal(err)
	}
	if name := cfg.Backend.Name(); !strings.Contains(name, "bf16 training matmuls") {
		t.Fatalf("backend %q: the precision did not reach it", name)
	}
	if err := runArgs(t, bf16...); err != nil {
		t.Fatal(err)
	}
	recs, err := grpo.ReadMetrics(filepath.Join(o.Out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs[1:] {
		if math.IsNaN(r.Loss) || math.IsInf(r.Loss, 0) || r.Entropy <= 0 {
			t.Fatalf("step %d: loss %v entropy %v", r.Step, r.Loss, r.Entropy)
		}
	}
}
