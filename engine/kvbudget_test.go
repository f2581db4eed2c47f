package engine_test

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// defaultModelConfig is the default job's model (grpo/quickstart.ModelConfig, 2.4M parameters):
// 6 layers, 2 KV heads of 32, 64 positions.
func defaultModelConfig() *engine.Config {
	return &engine.Config{ModelType: "qwen2", VocabSize: 32, HiddenSize: 192, NumHiddenLayers: 6, NumAttentionHeads: 6,
		NumKeyValueHeads: 2, HeadDim: 32, IntermediateSize: 512, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 64, AttentionBias: true, TieWordEmbeddings: true}
}

// memBackend is a backend with device memory of its own (engine.DeviceMemory): free bytes free.
type memBackend struct {
	engine.Backend
	free int64
}

func (b memBackend) MemInfo() (free, total int64, err error) { return b.free, 2 * b.free, nil }

// TestKVBudgetFollowsModel: the KV budget is sized from the model's config and the KV dtype
// (worked by hand): a block is layers × 2 (K, V) × KV heads × head_dim × 16 positions × 4
// bytes (2 in bf16), and a sequence of L positions gets ceil(L/16) + 1 blocks. The default is
// bounded by a share of the device's free memory where the backend has some, else of RAM.
func TestKVBudgetFollowsModel(t *testing.T) {
	golden := loadGolden(t, "qwen2").cfg // 2 layers, 2 KV heads of 16, 512 positions
	tests := []struct {
		name         string
		c            *engine.Config
		dt           engine.DType
		seqs, seqLen int
		want         int64
	}{
		// block 6·2·64·16·4 = 49152 bytes; 64 positions: 4 + 1 blocks.
		{"default model, 256 seqs of max_position_embeddings", defaultModelConfig(), engine.F32, 256, 64, 256 * 5 * 49152}, // 60 MiB
		{"the same in bf16", defaultModelConfig(), engine.BF16, 256, 64, 256 * 5 * 24576},                                  // 30 MiB
		// the default job's rollouts: 16 prompts × 8 samples of up to 10 + 24 tokens: 3 + 1 blocks.
		{"default job's rollouts", defaultModelConfig(), engine.F32, 128, 34, 128 * 4 * 49152},
		// block 2·2·32·16·4 = 8192 bytes; 512 positions: 32 + 1 blocks.
		{"golden qwen2, 256 seqs", golden, engine.F32, 256, 512, 256 * 33 * 8192},
		{"one position", golden, engine.F32, 1, 1, 2 * 8192},
	}
	for _, tc := range tests {
		if got := engine.KVBudget(tc.c, tc.dt, tc.seqs, tc.seqLen); got != tc.want {
			t.Errorf("%s: KVBudget = %d, want %d", tc.name, got, tc.want)
		}
	}
	// A generator with the default options gets DefaultKVBudget: 256 sequences of the model's
	// max_position_embeddings (this machine has far more than 4 × 60 MiB), in the dtype of the
	// weights (auto), or the one asked for.
	c := defaultModelConfig()
	w := engine.RandomWeights(c, 1, 0.02)
	for _, tc := range []struct {
		weights engine.DType
		kv      engine.KVDType
		want    engine.DType
	}{
		{engine.F32, engine.KVAuto, engine.F32},
		{engine.BF16, engine.KVAuto, engine.BF16},
		{engine.BF16, engine.KVF32, engine.F32},
		{engine.F32, engine.KVBF16, engine.BF16},
	} {
		m, err := engine.NewModel(c, cpu.New(), w, tc.weights)
		if err != nil {
			t.Fatal(err)
		}
		ch := newGen(t, m, engine.GeneratorOptions{KVDType: tc.kv}).KVChoice()
		block := int64(49152)
		if tc.want == engine.BF16 {
			block = 24576
		}
		if ch.DType != tc.want || ch.Blocks != 256*5 || ch.Bytes != 256*5*block || !strings.Contains(ch.Why, "256 sequences") {
			t.Errorf("%v weights, --kv-dtype %v: %v; want %v, %d blocks of %d bytes, 256 sequences", tc.weights, tc.kv, ch, tc.want, 256*5, block)
		}
	}
	m, err := engine.NewModel(c, cpu.New(), w, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	// The user's budget still wins.
	if got := newGen(t, m, engine.GeneratorOptions{KVBudgetBytes: 10 * 49152}).Cache().Capacity(); got != 10 {
		t.Errorf("KVBudgetBytes of 10 blocks: capacity %d", got)
	}
	// A device with 100 blocks free: half of them.
	dev, err := engine.NewModel(c, memBackend{cpu.New(), 100 * 49152}, w, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	if got, why := engine.DefaultKVBudget(dev, engine.F32, 256); got != 50*49152 || !strings.Contains(why, "50% of the device's") {
		t.Errorf("device with 100 blocks free: budget %d (%s), want %d", got, why, 50*49152)
	}
	// A model whose sequences need more than a quarter of RAM: a quarter of RAM.
	long := *c
	long.MaxPositionEmbeddings = 1 << 30
	lm, err := engine.NewModel(&long, cpu.New(), w, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	if got, why := engine.DefaultKVBudget(lm, engine.F32, 256); got != int64(float64(engine.SystemMemory())*engine.KVMemoryFraction) || !strings.Contains(why, "25% of") {
		t.Errorf("sequences beyond RAM: budget %d (%s), want a quarter of %d", got, why, engine.SystemMemory())
	}
}

// TestPreemptionExact: in a KV pool far too small for the batch, the youngest samples are
// preempted (their blocks freed) and recomputed later, and every sample gives the bits it gives
// in a pool that holds everything (no preemption): same tokens, same log-probs, same finish, for
// a mix of prompt lengths, samples per prompt and early stops, in fp32 and bf16 KV. (Before
// preemption, the generator reserved each request's worst case and never ran out.)
func TestPreemptionExact(t *testing.T) {
	c := defaultModelConfig()
	m, err := engine.NewModel(c, cpu.New(), engine.RandomWeights(c, 1, 0.02), engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	stops := []int32{0, 1} // samples end at random lengths
	var reqs []engine.Request
	for i := 0; i < 40; i++ {
		prompt := make([]int32, 1+rng.IntN(24))
		for j := range prompt {
			prompt[j] = int32(rng.IntN(c.VocabSize))
		}
		reqs = append(reqs, engine.Request{Prompt: prompt, Params: engine.SamplingParams{N: 1 + rng.IntN(8),
			Temperature: 1, MaxNewTokens: 1 + rng.IntN(c.MaxPositionEmbeddings-len(prompt)), StopTokens: stops, Seed: uint64(i)}})
	}
	for _, kv := range []engine.KVDType{engine.KVF32, engine.KVBF16} {
		big := newGen(t, m, engine.GeneratorOptions{KVDType: kv})
		want, err := engine.GenerateChecked(big, reqs, func(int, uint64) {})
		if err != nil {
			t.Fatal(err)
		}
		if big.Preemptions() != 0 {
			t.Fatalf("%v: %d preemptions in the default pool", kv, big.Preemptions())
		}
		const blocks = 8 // a sequence of 64 positions takes 4
		small := newGen(t, m, engine.GeneratorOptions{KVDType: kv, KVBudgetBytes: blocks * big.Cache().BlockBytes()})
		steps := 0
		got, err := engine.GenerateChecked(small, reqs, func(used int, _ uint64) {
			steps++
			if used > blocks {
				t.Fatalf("%v, step %d: %d blocks in use, over the %d of the pool", kv, steps, used, blocks)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if small.Preemptions() < 10 {
			t.Errorf("%v: %d preemptions in a pool of %d blocks, want many", kv, small.Preemptions(), blocks)
		}
		t.Logf("%v: %d steps, %d preemptions", kv, steps, small.Preemptions())
		for i := range want {
			for j, w := range want[i].Samples {
				g := got[i].Samples[j]
				if !slices.Equal(g.Tokens, w.Tokens) || g.Finish != w.Finish || !sameBits(g.LogProbs, w.LogProbs) {
					t.Fatalf("%v: request %d sample %d: preempted %v %v (%s), unpreempted %v %v (%s)", kv, i, j,
						g.Tokens, g.LogProbs, g.Finish, w.Tokens, w.LogProbs, w.Finish)
				}
			}
		}
	}
}

func sameBits(a, b []float32) bool {
	return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
}
