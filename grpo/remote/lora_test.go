package remote

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo/modeldir"
	"github.com/prolong-rl/prolong/grpo/remote/remotetest"
)

// adapterBytes is the data bytes of cfg's adapters of rank r on every linear layer, in fp32.
func adapterBytes(t testing.TB, cfg *engine.Config, r int) int {
	specs, err := engine.LoRASpecs(cfg, engine.LoRAConfig{Rank: r, Alpha: float64(2 * r)})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range specs {
		n += 4 * s.Shape[0] * s.Shape[1]
	}
	return n
}

// TestPushAdapters: PushAdapters sends a LoRA policy's adapters only (their fp32 bytes and a
// header), and a server started with the base then serves base + adapters: rollouts equal the
// in-process engine's on the base with the same adapters, token for token and log-prob for
// log-prob, and differ from the base's. It logs the bytes per push of the 1.5B shape.
func TestPushAdapters(t *testing.T) {
	cfg, w, dir := tinyModel(t)
	lc := engine.LoRAConfig{Rank: 4, Alpha: 8, Seed: 3}
	ad, err := engine.InitLoRA(cfg, lc)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 6))
	for n, h := range ad {
		if strings.HasSuffix(n, ".lora_B.weight") {
			for i := range h.Data {
				h.Data[i] = float32(r.NormFloat64() * 0.3)
			}
		}
	}
	ac, _ := json.Marshal(modeldir.NewAdapterConfig(lc, dir))
	c := &Client{URLs: remotetest.Start(t, dir, 1), APIKey: remotetest.Key}
	if err := c.PushAdapters(context.Background(), ac, ad, 5); err != nil {
		t.Fatal(err)
	}
	if header := int(c.PushedBytes()) - adapterBytes(t, cfg, 4); header <= 0 || header > 16<<10 {
		t.Errorf("%d bytes pushed, want the %d bytes of the adapters and a header", c.PushedBytes(), adapterBytes(t, cfg, 4))
	}
	prompts, p := testPrompts(6), testSampling()
	got, err := c.Rollout(context.Background(), prompts, p)
	if err != nil {
		t.Fatal(err)
	}
	if c.WeightVersion() != 5 {
		t.Errorf("weight version %d, want 5", c.WeightVersion())
	}
	adapted, err := newModel(t, cfg, w, engine.F32).WithLoRA(lc, ad)
	if err != nil {
		t.Fatal(err)
	}
	want, base := engineOn(t, adapted, prompts, p), engineOn(t, newModel(t, cfg, w, engine.F32), prompts, p)
	checkRollouts(t, "with the adapters", got, want)
	if sameLogProbs(got, base) {
		t.Error("the rollouts are the base model's: the adapters changed nothing")
	}
	// A push that does not fit the served model names the tensor.
	bad := map[string]engine.HostTensor{}
	for n, h := range ad {
		bad[n] = h
	}
	q := "model.layers.0.self_attn.q_proj.lora_A.weight"
	bad[q] = engine.HostTensor{Shape: []int{4, 31}, Data: make([]float32, 4*31)}
	if err := c.PushAdapters(context.Background(), ac, bad, 0); err == nil || !strings.Contains(err.Error(), q) || !strings.Contains(err.Error(), "HTTP 400") {
		t.Errorf("a push of the wrong shape: %v", err)
	}
	big := qwen15B()
	for _, r := range []int{8, 16} {
		t.Logf("1.5B shape, rank %d on every linear layer: %d bytes per adapter push; full push %d (fp32), %d (bf16 linear weights)",
			r, adapterBytes(t, big, r), pushBytes(big, false), pushBytes(big, true))
	}
}
