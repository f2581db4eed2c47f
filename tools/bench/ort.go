//go:build cgo

package main

import (
	"os"
	"path/filepath"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx"
	"github.com/prolong-rl/prolong/onnx/ortrun"
)

// ortRates runs the engine's ONNX export of the benchmark model (the same random weights) in
// ONNX Runtime (all cores) and returns its tokens per second by row name: "prefill N" at batch
// 1, "decode 1" and "decode 16" (greedy, prompts of 32 tokens, decodeSteps steps; the prompt's
// time taken out as the engine's rows do).
func ortRates(c *engine.Config, w map[string]engine.HostTensor, reps, promptLen, decodeSteps int) (map[string]float64, error) {
	if err := ortrun.Init(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "bench-ort-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "model.onnx")
	if err := onnx.Export(path, c, w, onnx.ExportOptions{}); err != nil {
		return nil, err
	}
	s, err := ortrun.Open(path, c)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	timed := func(batch, plen, steps int) (float64, error) {
		prompts := make([][]int32, batch)
		for i := range prompts {
			prompts[i] = make([]int32, plen)
			for j := range prompts[i] {
				prompts[i][j] = int32((i*131 + j*7) % c.VocabSize)
			}
		}
		t0 := time.Now()
		_, err := s.GreedyBatch(prompts, steps)
		return time.Since(t0).Seconds(), err
	}
	rates := map[string]float64{}
	sec, err := bestOf(reps, func() (float64, error) { return timed(1, promptLen, 1) })
	if err != nil {
		return nil, err
	}
	rates[prefillRow(promptLen, 1)] = float64(promptLen) / sec
	for _, batch := range []int{1, 16} {
		sec, err := bestOf(reps, func() (float64, error) {
			t1, err := timed(batch, 32, 1)
			if err != nil {
				return 0, err
			}
			t2, err := timed(batch, 32, decodeSteps+1)
			return t2 - t1, err
		})
		if err != nil {
			return nil, err
		}
		rates[decodeRow(batch)] = float64(batch*decodeSteps) / sec
	}
	return rates, nil
}
