package remote

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/grpo"
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
	cfg := &engine.Config{ModelType: "qwen2", VocabSize: 24, HiddenSize: 32, NumHiddenLayers: 2, NumAttentionHeads: 4,
		NumKeyValueHeads: 2, HeadDim: 8, IntermediateSize: 64, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 128, AttentionBias: true}
	w := engine.RandomWeights(cfg, 1, 0.3)
	dir := t.TempDir()
	if err := checkpoints.Save(dir, cfg, w, checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
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
	var prompts []grpo.Prompt
	for i := 0; i < 6; i++ {
		prompts = append(prompts, grpo.Prompt{Tokens: []int32{1, int32(2 + i%20), int32(3 + (7*i)%20)}})
	}
	p := engine.SamplingParams{N: 4, Temperature: 1.2, TopP: 1, MaxNewTokens: 12, StopTokens: []int32{5}, Seed: 99}
	got, err := c.Rollout(context.Background(), prompts, p)
	if err != nil {
		t.Fatal(err)
	}
	if c.WeightVersion() != 5 {
		t.Errorf("weight version %d, want 5", c.WeightVersion())
	}
	engineOn := func(lora bool) [][]engine.Sample {
		m, err := engine.NewModel(cfg, cpu.New(), w, engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		if lora {
			if m, err = m.WithLoRA(lc, ad); err != nil {
				t.Fatal(err)
			}
		}
		g, err := engine.NewGenerator(m, engine.GeneratorOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		out, err := grpo.EngineRollouts{Gen: g}.Rollout(context.Background(), prompts, p)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	want, base := engineOn(true), engineOn(false)
	same := true
	for i := range want {
		for j := range want[i] {
			a, b := got[i][j], want[i][j]
			if !slices.Equal(a.Tokens, b.Tokens) || !slices.Equal(a.LogProbs, b.LogProbs) || a.Finish != b.Finish {
				t.Fatalf("prompt %d sample %d: remote %v %v %s, engine with the adapters %v %v %s", i, j, a.Tokens, a.LogProbs, a.Finish, b.Tokens, b.LogProbs, b.Finish)
			}
			same = same && slices.Equal(a.LogProbs, base[i][j].LogProbs)
		}
	}
	if same {
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
