package cuda

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// allocCounter is a Backend counting the engine's Alloc and AllocUninit calls and the bytes of
// the latter; hide makes AllocUninit an Alloc, as the engine did before it had AllocUninit.
type allocCounter struct {
	*Backend
	hide                bool
	zeroed, uninit      int
	zeroBytes, uniBytes uint64
}

func (c *allocCounter) Alloc(shape ...int) *engine.Tensor {
	c.zeroed++
	c.zeroBytes += 4 * uint64(engine.NumElements(shape))
	return c.Backend.Alloc(shape...)
}

func (c *allocCounter) AllocUninit(shape ...int) *engine.Tensor {
	if c.hide {
		return c.Alloc(shape...)
	}
	c.uninit++
	c.uniBytes += 4 * uint64(engine.NumElements(shape))
	return c.Backend.AllocUninit(shape...)
}

// memsetTally is what one phase of the workload asked of the allocator and the driver.
type memsetTally struct {
	zeroed, uninit         int    // the engine's Alloc and AllocUninit calls
	zeroBytes, uninitBytes uint64 // their bytes
	memsets, poisons       int    // cuMemsetD32Async calls; those of the poison value
	memsetBytes            uint64 // bytes they set
}

func (m memsetTally) String() string {
	return fmt.Sprintf("%d Alloc (%.2f MiB) + %d AllocUninit (%.2f MiB); %d memsets of %.2f MiB (%d poison)",
		m.zeroed, mib(m.zeroBytes), m.uninit, mib(m.uninitBytes), m.memsets, mib(m.memsetBytes), m.poisons)
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// uninitWorkload runs, on the fake GPU g with options o, a model and trainer set up, one
// training step (ForwardBackward of a weighted log-prob and entropy loss, AdamW) and one
// generation (prefill, decode), and tallies each phase.
func uninitWorkload(t *testing.T, g *fakeGPU, o Options, hide bool, c *engine.Config, batch []engine.ScoreRequest) map[string]memsetTally {
	t.Helper()
	b, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	ac := &allocCounter{Backend: b, hide: hide}
	out := map[string]memsetTally{}
	phase := func(name string, f func()) {
		c0, m0 := *ac, len(g.memsets)
		f()
		if err := b.Sync(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		tl := memsetTally{zeroed: ac.zeroed - c0.zeroed, uninit: ac.uninit - c0.uninit,
			zeroBytes: ac.zeroBytes - c0.zeroBytes, uninitBytes: ac.uniBytes - c0.uniBytes}
		for _, m := range g.memsets[m0:] {
			tl.memsets++
			tl.memsetBytes += 4 * m.n
			if m.value == poisonBits {
				tl.poisons++
			} else if m.value != 0 {
				t.Errorf("%s: a memset to %#x", name, m.value)
			}
		}
		out[name] = tl
	}
	var tr *engine.Trainer
	var m *engine.Model
	phase("setup", func() {
		if m, err = engine.NewModel(c, ac, engine.RandomWeights(c, 1, 0.25), engine.F32); err != nil {
			t.Fatal(err)
		}
		if tr, err = engine.NewTrainer(m, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-3}}); err != nil {
			t.Fatal(err)
		}
	})
	phase("train step", func() {
		w := make([][]float64, len(batch))
		for i, s := range batch {
			w[i] = make([]float64, len(s.Tokens)-s.Start)
			for j := range w[i] {
				w[i][j] = float64(j%3) - 1
			}
		}
		if _, err := tr.ForwardBackward(context.Background(), batch, engine.WeightedLogProb(w, w)); err != nil {
			t.Fatal(err)
		}
		if _, err := tr.Step(); err != nil {
			t.Fatal(err)
		}
	})
	phase("generate", func() {
		gen, err := engine.NewGenerator(m, engine.GeneratorOptions{MaxSeqs: 8})
		if err != nil {
			t.Fatal(err)
		}
		defer gen.Close()
		if _, err := gen.Generate(context.Background(), graphTestRequests()); err != nil {
			t.Fatal(err)
		}
	})
	return out
}

// uninitBatch is a training micro-batch of 4 sequences (57 tokens, 49 scored).
func uninitBatch(vocab int) []engine.ScoreRequest {
	r := rand.New(rand.NewPCG(1, 2))
	var s []engine.ScoreRequest
	for _, n := range []int{9, 17, 25, 6} {
		toks := make([]int32, n)
		for i := range toks {
			toks[i] = int32(r.IntN(vocab))
		}
		s = append(s, engine.ScoreRequest{Tokens: toks, Start: max(1, n-15)})
	}
	return s
}

// TestUninitAllocMemsets: on the fake driver, a model's set-up, a training step and a
// generation enqueue one cuMemsetD32Async per tensor the engine allocates, zeros, when
// Options.UninitAlloc is off, as they did when the engine had only Alloc; with it on, one per
// Alloc only: the memsets of AllocUninit's tensors (every one the engine asks for in the step
// and the generation) are gone, and the bytes set shrink by exactly theirs; with
// Options.PoisonUninit, AllocUninit's tensors are each set to NaN (0xFFFFFFFF) instead.
func TestUninitAllocMemsets(t *testing.T) {
	c := graphTestConfig
	batch := uninitBatch(c.VocabSize)
	runs := map[string]map[string]memsetTally{}
	for _, r := range []struct {
		name string
		o    Options
		hide bool
	}{
		{"before", Options{}, true}, // the engine without AllocUninit
		{"off", Options{}, false},
		{"on", Options{UninitAlloc: true}, false},
		{"poison", Options{UninitAlloc: true, PoisonUninit: true}, false},
	} {
		g := newFakeGPU(t, 90, 1<<34)
		runs[r.name] = uninitWorkload(t, g, r.o, r.hide, c, batch)
	}
	for _, ph := range []string{"setup", "train step", "generate"} {
		before, off, on, poison := runs["before"][ph], runs["off"][ph], runs["on"][ph], runs["poison"][ph]
		t.Logf("%s:\n\tbefore %v\n\toff    %v\n\ton     %v\n\tpoison %v", ph, before, off, on, poison)
		all := off.zeroed + off.uninit
		switch {
		case before.uninit != 0 || before.zeroed != all || before.zeroBytes != off.zeroBytes+off.uninitBytes:
			t.Errorf("%s: the engine without AllocUninit allocated %d tensors (%d bytes), with it %d (%d)",
				ph, before.zeroed, before.zeroBytes, all, off.zeroBytes+off.uninitBytes)
		case off.memsets != before.memsets || off.memsetBytes != before.memsetBytes || off.memsets != all:
			t.Errorf("%s: option off: %d memsets of %d bytes, want %d of %d as before (%d tensors allocated)",
				ph, off.memsets, off.memsetBytes, before.memsets, before.memsetBytes, all)
		case on.zeroed != off.zeroed || on.uninit != off.uninit:
			t.Errorf("%s: the engine's allocations differ with the option on: %v against %v", ph, on, off)
		case on.memsets != on.zeroed || on.memsetBytes != off.memsetBytes-off.uninitBytes:
			t.Errorf("%s: option on: %d memsets of %d bytes, want %d (one per Alloc) of %d bytes",
				ph, on.memsets, on.memsetBytes, on.zeroed, off.memsetBytes-off.uninitBytes)
		case poison.memsets != all || poison.poisons != poison.uninit || poison.memsetBytes != off.memsetBytes:
			t.Errorf("%s: poison: %d memsets (%d poison) of %d bytes, want %d (%d poison) of %d",
				ph, poison.memsets, poison.poisons, poison.memsetBytes, all, poison.uninit, off.memsetBytes)
		}
		if ph != "setup" && on.uninit == 0 {
			t.Errorf("%s: the engine made no AllocUninit call", ph)
		}
	}
	st := runs["off"]["train step"]
	t.Logf("training step of %d tokens: %d of %d memsets avoided, %.2f of %.2f MiB",
		57, st.uninit, st.memsets, mib(st.uninitBytes), mib(st.memsetBytes))
}

// BenchmarkUninitAllocMemsets measures, on the fake driver, the memsets of one training step at
// the 1.5B shape as tools/bench times it on a GPU (DeepSeek-R1-Distill-Qwen-1.5B's config, 8 ×
// 1024 tokens, cross-entropy on every next token, MaxLogitRows 1024, bf16 matmuls, AdamW) with
// Options.UninitAlloc off and on, and reports the bytes set per step. The weights are all zero
// and share one host buffer (the fake driver copies nothing), so the run needs little memory.
//
//	go test ./cuda -run XXX -bench UninitAllocMemsets -benchtime 1x
func BenchmarkUninitAllocMemsets(bm *testing.B) {
	c, w, seqs := bench15B(bm)
	for range bm.N {
		for _, on := range []bool{false, true} {
			g := newFakeGPU(bm, 90, 1<<40)
			b, err := Open(Options{BF16Matmul: true, UninitAlloc: on})
			if err != nil {
				bm.Fatal(err)
			}
			ac := &allocCounter{Backend: b}
			m, err := engine.NewModel(c, ac, w, engine.F32)
			if err != nil {
				bm.Fatal(err)
			}
			tr, err := engine.NewTrainer(m, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-5, ClipNorm: 1}, MaxLogitRows: 1024})
			if err != nil {
				bm.Fatal(err)
			}
			step := func() (n int, bytes uint64) {
				m0 := len(g.memsets)
				if _, err := tr.ForwardBackward(context.Background(), seqs, engine.CrossEntropy(0)); err != nil {
					bm.Fatal(err)
				}
				if _, err := tr.Step(); err != nil {
					bm.Fatal(err)
				}
				for _, s := range g.memsets[m0:] {
					n++
					bytes += 4 * s.n
				}
				return n, bytes
			}
			step() // the first step allocates the AdamW moments
			n, bytes := step()
			name := map[bool]string{false: "off", true: "on"}[on]
			bm.ReportMetric(float64(n), "memsets/step-"+name)
			bm.ReportMetric(float64(bytes)/1e9, "memset-GB/step-"+name)
			bm.Logf("uninit-alloc %s: %d memsets of %.2f GB a step; %d AllocUninit calls of %.2f GB, %d Alloc of %.2f GB in all",
				name, n, float64(bytes)/1e9, ac.uninit, float64(ac.uniBytes)/1e9, ac.zeroed, float64(ac.zeroBytes)/1e9)
		}
	}
}

// bench15B is the training step the fake-driver benchmarks count, as tools/bench times it on a
// GPU: DeepSeek-R1-Distill-Qwen-1.5B's config, all-zero weights sharing one host buffer (the
// fake driver copies nothing, so the run needs little memory) and 8 × 1024 random tokens.
func bench15B(tb testing.TB) (*engine.Config, map[string]engine.HostTensor, []engine.ScoreRequest) {
	c, err := engine.LoadConfig("../engine/testdata/configs/deepseek-r1-distill-qwen-1.5b.json")
	if err != nil {
		tb.Fatal(err)
	}
	specs := engine.NewWeightTable(c).Specs
	biggest := 0
	for _, s := range specs {
		biggest = max(biggest, engine.NumElements(s.Shape))
	}
	zeros := make([]float32, biggest)
	w := map[string]engine.HostTensor{}
	for _, s := range specs {
		w[s.Name] = engine.HostTensor{Shape: s.Shape, Data: zeros[:engine.NumElements(s.Shape)]}
	}
	r := rand.New(rand.NewPCG(1, 2))
	var seqs []engine.ScoreRequest
	for range 8 {
		toks := make([]int32, 1024)
		for i := range toks {
			toks[i] = int32(r.IntN(c.VocabSize))
		}
		seqs = append(seqs, engine.ScoreRequest{Tokens: toks, Start: 1})
	}
	return c, w, seqs
}
