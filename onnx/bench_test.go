package onnx

import (
	"context"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// BenchmarkPrefillVsORT times a 64-token prefill of a small random Qwen3-style model in the
// engine (CPU backend, fp32) and in ONNX Runtime running the exported graph, in the same run,
// both using GOMAXPROCS threads, and reports the engine's speed relative to ONNX Runtime (engine_speedup > 1: engine faster).
func BenchmarkPrefillVsORT(b *testing.B) {
	needORT(b)
	cfg, err := engine.ParseConfig([]byte(`{"model_type":"qwen3","vocab_size":4096,"hidden_size":256,
		"num_hidden_layers":4,"num_attention_heads":8,"num_key_value_heads":2,"head_dim":32,
		"intermediate_size":768,"rms_norm_eps":1e-6,"rope_theta":1000000,"max_position_embeddings":1024,
		"tie_word_embeddings":true}`))
	if err != nil {
		b.Fatal(err)
	}
	w := engine.RandomWeights(cfg, 7, 0.05)
	path := filepath.Join(b.TempDir(), "model.onnx")
	if err := Export(path, cfg, w, ExportOptions{}); err != nil {
		b.Fatal(err)
	}
	m, err := engine.NewModel(cfg, cpu.New(), w, engine.F32)
	if err != nil {
		b.Fatal(err)
	}
	s := newORTSessionThreads(b, path, cfg, runtime.GOMAXPROCS(0)) // as many threads as the engine
	seq := testTokens(1, 64, cfg.VocabSize, 3)
	ids := [][]int64{make([]int64, 64)}
	for i, id := range seq[0] {
		ids[0][i] = int64(id)
	}
	var tEngine, tORT time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := m.Logits(context.Background(), seq); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		s.step(b, ids, kvState{})
		tEngine += t1.Sub(t0)
		tORT += time.Since(t1)
	}
	b.ReportMetric(float64(tEngine.Nanoseconds())/float64(b.N), "engine_ns/op")
	b.ReportMetric(float64(tORT.Nanoseconds())/float64(b.N), "ort_ns/op")
	b.ReportMetric(float64(tORT)/float64(tEngine), "engine_speedup")
}
