package remote

import (
	"context"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo/remote/remotetest"
)

// qwen15B is the DeepSeek-R1-Distill-Qwen-1.5B shape (tools/bench's Qwen15B).
func qwen15B() *engine.Config {
	return &engine.Config{ModelType: "qwen2", VocabSize: 151936, HiddenSize: 1536, NumHiddenLayers: 28,
		NumAttentionHeads: 12, NumKeyValueHeads: 2, HeadDim: 128, IntermediateSize: 8960,
		RMSNormEps: 1e-6, RopeTheta: 10000, MaxPositionEmbeddings: 131072, AttentionBias: true}
}

// pushBytes is the data bytes of a push of cfg's weights: every weight in fp32, or the linear
// weights in bf16 and the rest in fp32.
func pushBytes(cfg *engine.Config, bf16 bool) int64 {
	var n int64
	for _, s := range engine.NewWeightTable(cfg).Specs {
		e := int64(1)
		for _, d := range s.Shape {
			e *= int64(d)
		}
		if bf16 && s.Role == engine.RoleLinear {
			n += 2 * e
		} else {
			n += 4 * e
		}
	}
	return n
}

// BenchmarkPush times PushWeights of the ~122M model (engine.Bench122M) to one rollout server
// on this machine, fp32 (--dtype f32) and bf16 (--dtype bf16): bytes and seconds per push,
// and the 1.5B shape's bytes per push with the seconds scaled from this machine's rate per
// byte (go test -run '^$' -bench Push ./grpo/remote).
func BenchmarkPush(b *testing.B) {
	cfg := engine.Bench122M()
	w1 := engine.RandomWeights(cfg, 1, 0.02)
	dir := b.TempDir()
	if err := checkpoints.Save(dir, cfg, w1, checkpoints.SaveOptions{}); err != nil {
		b.Fatal(err)
	}
	w2 := engine.RandomWeights(cfg, 2, 0.02)
	for _, dt := range []string{"f32", "bf16"} {
		b.Run(dt, func(b *testing.B) {
			c := &Client{URLs: remotetest.Start(b, dir, 1, "--dtype", dt), APIKey: remotetest.Key}
			b.ResetTimer()
			t0 := time.Now()
			for range b.N {
				if err := c.PushWeights(context.Background(), w2, 0); err != nil {
					b.Fatal(err)
				}
			}
			sec := time.Since(t0).Seconds() / float64(b.N)
			bytes := float64(c.PushedBytes()) / float64(b.N)
			big := float64(pushBytes(qwen15B(), dt == "bf16"))
			b.ReportMetric(bytes, "bytes/push")
			b.ReportMetric(sec, "s/push")
			b.ReportMetric(big, "1.5B-bytes/push")
			b.ReportMetric(sec*big/bytes, "1.5B-s/push")
		})
	}
}
