package cuda

import (
	"bytes"
	"context"
	"encoding/binary"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// graphCalls are the driver calls of the graph path, in the order the fake saw them since
// index from of g.calls.
func (g *fakeGPU) graphCalls(from int) []string {
	var s []string
	for _, c := range g.calls[from:] {
		switch c {
		case "memcpyHtoDAsync", "streamBeginCapture", "streamEndCapture", "graphInstantiateWithFlags",
			"graphLaunch", "graphExecDestroy", "graphDestroy", "memHostAlloc", "launchKernel", "blas.gemmEx":
			s = append(s, c)
		}
	}
	return s
}

func (g *fakeGPU) countSince(from int, fn string) int {
	n := 0
	for _, c := range g.calls[from:] {
		if c == fn {
			n++
		}
	}
	return n
}

// le32 is the little-endian bytes of v.
func le32(v []int32) []byte {
	var buf bytes.Buffer
	binary.Write(&buf, binary.LittleEndian, v)
	return buf.Bytes()
}

// graphStep is a decode step's shape on the fake: the ids gathered, RoPE twice at the same
// positions (one arena slot), a matrix-vector product into out and a cuBLAS GEMM.
type graphStep struct {
	b                                           *Backend
	table, x, w, big, bigOut, cos, sin, out, o2 *engine.Tensor
}

func newGraphStep(b *Backend) *graphStep {
	return &graphStep{b: b, table: b.Alloc(32, 16), x: b.Alloc(4, 16), w: b.Alloc(8, 16), big: b.Alloc(16, 16),
		bigOut: b.Alloc(16, 8), cos: b.Alloc(64, 8), sin: b.Alloc(64, 8), out: b.Alloc(4, 8), o2: b.Alloc(4, 8)}
}

// openGraphStep opens a backend with options o on a new fake driver (compute capability 9.0,
// 1 GiB) and allocates a graphStep on it.
func openGraphStep(t *testing.T, o Options) (*fakeGPU, *Backend, *graphStep) {
	t.Helper()
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return g, b, newGraphStep(b)
}

// run runs the step on ids at positions pos into out, failing t on an error.
func (s *graphStep) run(t *testing.T, ids, pos []int32, out *engine.Tensor) {
	t.Helper()
	b := s.b
	b.BeginDecodeStep(4)
	b.GatherRows(s.x, s.table, ids)
	for range 2 {
		b.RoPE(s.x, 16, pos, s.cos, s.sin)
	}
	b.MatMul(out, s.x, s.w)
	b.MatMul(s.bigOut, s.big, s.w)
	if err := b.EndDecodeStep(); err != nil {
		t.Fatal(err)
	}
}

// TestDecodeGraphs: with Options.DecodeGraphs, on the fake driver, a bucket's first step runs
// eagerly and sizes its metadata arena (pinned); the second is captured (one arena upload,
// then cuStreamBeginCapture, the kernels and the GEMM, cuStreamEndCapture,
// cuGraphInstantiate, cuGraphLaunch) with the kernels reading the metadata from the arena; the
// third launches nothing but the graph after one upload of the arena holding its own ids and
// positions; a step whose ops differ (another output tensor) destroys the graph and runs
// eagerly, and the next such step is captured anew. Without the option no graph call is made.
func TestDecodeGraphs(t *testing.T) {
	g, b, s := openGraphStep(t, Options{DecodeGraphs: true})
	if !b.DecodeGraphs() || !b.PadDecode() {
		t.Fatal("DecodeGraphs or PadDecode false with Options.DecodeGraphs")
	}

	// Step 1: eager, then the arena.
	c0, l0 := len(g.calls), len(g.launches)
	s.run(t, []int32{1, 2, 3, 4}, []int32{5, 6, 7, 8}, s.out)
	eagerKernels := g.launched(l0)
	if want := []string{"gather_rows", "rope", "rope", "gemv_f32"}; !slices.Equal(eagerKernels, want) {
		t.Fatalf("step 1 launched %v, want %v", eagerKernels, want)
	}
	if got := g.graphCalls(c0); g.countSince(c0, "streamBeginCapture") != 0 || g.countSince(c0, "blas.gemmEx") != 1 || g.countSince(c0, "memHostAlloc") != 1 {
		t.Fatalf("step 1 calls %v: want the eager launches, one GEMM, no capture, one pinned arena", got)
	}

	// Step 2: captured.
	c0, l0 = len(g.calls), len(g.launches)
	ids2, pos2 := []int32{9, 10, 11, 12}, []int32{6, 7, 8, 9}
	s.run(t, ids2, pos2, s.out)
	want := []string{"memcpyHtoDAsync", "streamBeginCapture", "launchKernel", "launchKernel", "launchKernel", "launchKernel",
		"blas.gemmEx", "streamEndCapture", "graphInstantiateWithFlags", "graphLaunch"}
	if got := g.graphCalls(c0); !slices.Equal(got, want) {
		t.Fatalf("step 2 calls %v, want %v", got, want)
	}
	if got := g.launched(l0); !slices.Equal(got, eagerKernels) {
		t.Fatalf("step 2 captured %v, want %v", got, eagerKernels)
	}
	cp := g.copies[len(g.copies)-1]
	wantArena := append(append(le32(ids2), make([]byte, arenaAlign-16)...), le32(pos2)...)
	if !bytes.Equal(cp.data, wantArena) {
		t.Fatalf("step 2 uploaded the arena % x, want % x", cp.data, wantArena)
	}
	ls := g.launches[l0:]
	if ls[0].args[2] != cp.dst || ls[1].args[1] != cp.dst+arenaAlign || ls[2].args[1] != cp.dst+arenaAlign {
		t.Fatalf("captured metadata arguments: gather_rows ids %#x, rope pos %#x and %#x; want the arena's %#x and %#x",
			ls[0].args[2], ls[1].args[1], ls[2].args[1], cp.dst, cp.dst+arenaAlign)
	}

	// Step 3: replayed.
	c0, l0 = len(g.calls), len(g.launches)
	ids3, pos3 := []int32{13, 14, 15, 16}, []int32{7, 8, 9, 10}
	s.run(t, ids3, pos3, s.out)
	if got, want := g.graphCalls(c0), []string{"memcpyHtoDAsync", "graphLaunch"}; !slices.Equal(got, want) {
		t.Fatalf("step 3 calls %v, want %v", got, want)
	}
	if n := len(g.launches) - l0; n != 0 {
		t.Fatalf("step 3 launched %d kernels, want 0 (the graph)", n)
	}
	cp3 := g.copies[len(g.copies)-1]
	wantArena = append(append(le32(ids3), make([]byte, arenaAlign-16)...), le32(pos3)...)
	if cp3.dst != cp.dst || !bytes.Equal(cp3.data, wantArena) {
		t.Fatalf("step 3 uploaded % x to %#x, want % x to %#x", cp3.data, cp3.dst, wantArena, cp.dst)
	}

	// Step 4: another output tensor: the graph is destroyed, the step runs eagerly.
	c0, l0 = len(g.calls), len(g.launches)
	s.run(t, ids3, pos3, s.o2)
	got := g.graphCalls(c0)
	if g.countSince(c0, "graphExecDestroy") != 1 || g.countSince(c0, "graphDestroy") != 1 || g.countSince(c0, "graphLaunch") != 0 ||
		g.countSince(c0, "streamBeginCapture") != 0 || !slices.Equal(g.launched(l0), eagerKernels) {
		t.Fatalf("step 4 (other ops) calls %v, launches %v: want the graph destroyed and the step eager", got, g.launched(l0))
	}
	if ls := g.launches[l0:]; ls[3].args[0] != uint64(ptr(s.o2)) {
		t.Fatalf("step 4's gemv writes %#x, want o2 %#x", ls[3].args[0], ptr(s.o2))
	}
	// Step 5: the new sequence is captured.
	c0 = len(g.calls)
	s.run(t, ids2, pos2, s.o2)
	if g.countSince(c0, "streamBeginCapture") != 1 || g.countSince(c0, "graphLaunch") != 1 {
		t.Fatalf("step 5 calls %v, want a new capture", g.graphCalls(c0))
	}
	st := b.DecodeGraphStats()[4]
	if st != (DecodeGraphStat{Captures: 2, Replays: 1, Eager: 2}) {
		t.Fatalf("stats %+v, want 2 captures, 1 replay, 2 eager steps", st)
	}

	// Off: no graph call at all.
	g, _, s = openGraphStep(t, Options{})
	c0, l0 = len(g.calls), len(g.launches)
	for range 3 {
		s.run(t, ids2, pos2, s.out)
	}
	for _, fn := range []string{"streamBeginCapture", "streamEndCapture", "graphLaunch", "memHostAlloc", "graphInstantiateWithFlags"} {
		if n := g.countSince(c0, fn); n != 0 {
			t.Fatalf("Options.DecodeGraphs off: %d %s calls", n, fn)
		}
	}
	if n := len(g.launches) - l0; n != 12 {
		t.Fatalf("Options.DecodeGraphs off: %d launches in 3 steps, want 12", n)
	}
}

// TestDecodeGraphCaptureFails: a capture the driver refuses switches graphs off for the bucket
// (said why) and the step still runs, eagerly, with its results.
func TestDecodeGraphCaptureFails(t *testing.T) {
	g, b, s := openGraphStep(t, Options{DecodeGraphs: true})
	s.run(t, []int32{1, 2, 3, 4}, []int32{5, 6, 7, 8}, s.out)
	g.fail("streamBeginCapture", 900)
	l0 := len(g.launches)
	s.run(t, []int32{1, 2, 3, 4}, []int32{5, 6, 7, 8}, s.out)
	if got := g.launched(l0); len(got) != 4 {
		t.Fatalf("after a refused capture the step launched %v, want its 4 kernels", got)
	}
	st := b.DecodeGraphStats()[4]
	if st.Off == "" || st.Captures != 0 || st.Eager != 2 {
		t.Fatalf("stats %+v: want graphs off with a reason, 2 eager steps", st)
	}
	c0 := len(g.calls)
	s.run(t, []int32{1, 2, 3, 4}, []int32{5, 6, 7, 8}, s.out)
	if n := g.countSince(c0, "streamBeginCapture"); n != 0 {
		t.Fatalf("graphs off: %d captures tried", n)
	}
}

// graphTestConfig is a small Qwen2-shaped model for the generation tests.
var graphTestConfig = &engine.Config{ModelType: "qwen2", VocabSize: 131, HiddenSize: 64, NumHiddenLayers: 2,
	NumAttentionHeads: 4, NumKeyValueHeads: 2, HeadDim: 16, IntermediateSize: 96, RMSNormEps: 1e-6,
	RopeTheta: 10000, MaxPositionEmbeddings: 256, TieWordEmbeddings: true, AttentionBias: true}

// graphTestRequests are 4 samples (bucket 4) that end after 6 tokens (3 rows, still bucket 4),
// 12 (the two sampled ones) and 24 (bucket 1), greedy and sampled.
func graphTestRequests() []engine.Request {
	return []engine.Request{
		{Prompt: []int32{3, 1, 4, 1, 5, 9, 2, 6}, Params: engine.SamplingParams{MaxNewTokens: 24}},
		{Prompt: []int32{2, 7, 1, 8}, Params: engine.SamplingParams{N: 2, Temperature: 1, MaxNewTokens: 12, Seed: 7}},
		{Prompt: []int32{5, 5, 5}, Params: engine.SamplingParams{Temperature: 0.7, TopK: 20, MaxNewTokens: 6, Seed: 3}},
	}
}

// generateOn runs graphTestRequests on b with random weights (seed 1).
func generateOn(t *testing.T, b engine.Backend) []engine.Result {
	t.Helper()
	return generateReqs(t, b, graphTestRequests())
}

// generateReqs runs reqs on b with graphTestConfig's random weights (seed 1), MaxSeqs 8.
func generateReqs(t *testing.T, b engine.Backend, reqs []engine.Request) []engine.Result {
	t.Helper()
	m, err := engine.NewModel(graphTestConfig, b, engine.RandomWeights(graphTestConfig, 1, 0.25), engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	gen, err := engine.NewGenerator(m, engine.GeneratorOptions{MaxSeqs: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer gen.Close()
	res, err := gen.Generate(context.Background(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestDecodeGraphsGenerate: the engine's generator on the fake driver with
// Options.DecodeGraphs: every bucket (4, 1) is captured once and its later steps are
// replayed, with no error and no bucket switched off.
func TestDecodeGraphsGenerate(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{DecodeGraphs: true})
	if err != nil {
		t.Fatal(err)
	}
	generateOn(t, b)
	st := b.DecodeGraphStats()
	for _, key := range []int{1, 4} {
		s, ok := st[key]
		if !ok || s.Off != "" || s.Captures != 1 || s.Replays == 0 {
			t.Errorf("bucket %d: %+v (present %v); want one capture, replays, graphs on", key, s, ok)
		}
	}
	// 23 decode steps: 11 of bucket 4, 12 of bucket 1; each bucket's first runs eagerly, its
	// second is captured and launched, the others replayed.
	if n := g.count("graphLaunch"); n != 21 || st[4].Replays != 9 || st[1].Replays != 10 {
		t.Errorf("%d cuGraphLaunch calls in 23 decode steps, want 21; replays %d and %d, want 9 and 10", n, st[4].Replays, st[1].Replays)
	}
	t.Logf("stats %+v", st)
}

// TestDecodeGraphAllocInStep: a step that allocates, zeroes and frees a tensor between its ops
// (LoRA adapters' intermediates) is not captured and runs eagerly with the zeroing in its
// place among the launches, the freed memory reused by nothing before them.
func TestDecodeGraphAllocInStep(t *testing.T) {
	g, b, s := openGraphStep(t, Options{DecodeGraphs: true})
	for step := range 3 {
		c0 := len(g.calls)
		b.BeginDecodeStep(4)
		b.GatherRows(s.x, s.table, []int32{1, 2, 3, 4})
		tmp := b.Alloc(4, 8)
		b.MatMul(tmp, s.x, s.w)
		b.Free(tmp)
		tmp2 := b.Alloc(4, 8) // may take tmp's memory: zeroed only after the MatMul into tmp
		b.Add(s.out, tmp2, s.out)
		b.Free(tmp2)
		if err := b.EndDecodeStep(); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, c := range g.calls[c0:] {
			if c == "launchKernel" || c == "memsetD32Async" || c == "streamBeginCapture" {
				got = append(got, c)
			}
		}
		want := []string{"launchKernel", "memsetD32Async", "launchKernel", "memsetD32Async", "launchKernel"}
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: %v, want %v (eager, in the ops' order)", step, got, want)
		}
	}
	if st := b.DecodeGraphStats()[4]; st.Eager != 3 || st.Captures != 0 {
		t.Fatalf("stats %+v, want 3 eager steps", st)
	}
}

// TestDecodeGraphOtherGoroutine: while one goroutine records a decode step, another's ops (a
// trainer's, overlapped with rollouts) run at once and are not recorded into the step, which is
// captured and replayed as before.
func TestDecodeGraphOtherGoroutine(t *testing.T) {
	g, b, s := openGraphStep(t, Options{DecodeGraphs: true})
	other := b.Alloc(16, 8)
	ids, pos := []int32{1, 2, 3, 4}, []int32{5, 6, 7, 8}
	s.run(t, ids, pos, s.out)
	for step := range 2 {
		l0 := len(g.launches)
		b.BeginDecodeStep(4)
		b.GatherRows(s.x, s.table, ids)
		done := make(chan []string)
		go func() {
			n := len(g.launches)
			b.Add(other, other, other)
			done <- g.launched(n)
		}()
		if got := <-done; !slices.Equal(got, []string{"add"}) {
			t.Fatalf("step %d: the other goroutine's Add launched %v at once, want [add]", step, got)
		}
		for range 2 {
			b.RoPE(s.x, 16, pos, s.cos, s.sin)
		}
		b.MatMul(s.out, s.x, s.w)
		b.MatMul(s.bigOut, s.big, s.w)
		if err := b.EndDecodeStep(); err != nil {
			t.Fatal(err)
		}
		want := [][]string{{"add", "gather_rows", "rope", "rope", "gemv_f32"}, {"add"}}[step] // captured, then replayed
		if got := g.launched(l0); !slices.Equal(got, want) {
			t.Fatalf("step %d launched %v, want %v", step, got, want)
		}
	}
	if st := b.DecodeGraphStats()[4]; st.Captures != 1 || st.Replays != 1 {
		t.Fatalf("stats %+v, want a capture and a replay", st)
	}
}

// TestDecodeGraphArenaOverflow: a step whose metadata outgrows the arena part-way runs eagerly
// with what fit uploaded from the arena and the rest from scratch, then gets a larger arena
// and is captured at its next step.
func TestDecodeGraphArenaOverflow(t *testing.T) {
	g, b, s := openGraphStep(t, Options{DecodeGraphs: true})
	s.run(t, []int32{1, 2, 3, 4}, []int32{5, 6, 7, 8}, s.out)
	size := b.graphs[4].size
	// A step whose positions take more than the arena after its ids.
	long := make([]int32, size/4)
	for i := range long {
		long[i] = int32(i)
	}
	c0, l0, k0 := len(g.calls), len(g.launches), len(g.copies)
	b.BeginDecodeStep(4)
	b.GatherRows(s.x, s.table, []int32{4, 3, 2, 1})
	b.RoPE(s.x, 16, long, s.cos, s.sin)
	if err := b.EndDecodeStep(); err != nil {
		t.Fatal(err)
	}
	if n := g.countSince(c0, "streamBeginCapture"); n != 0 {
		t.Fatalf("a step past its arena was captured")
	}
	if n := len(g.copies) - k0; n != 1 {
		t.Fatalf("%d uploads from the pinned arena, want 1 (the ids that fit)", n)
	}
	arenaCopy := &g.copies[k0]
	if !bytes.Equal(arenaCopy.data, le32([]int32{4, 3, 2, 1})) {
		t.Fatalf("the arena upload holds % x, want the ids", arenaCopy.data)
	}
	ls := g.launches[l0:]
	if len(ls) != 2 || ls[0].args[2] != arenaCopy.dst || ls[1].args[1] < arenaCopy.dst+uint64(size) && ls[1].args[1] >= arenaCopy.dst {
		t.Fatalf("launches %+v: want gather_rows reading the arena %#x, rope reading scratch", ls, arenaCopy.dst)
	}
	if got := b.graphs[4].size; got < 2*(arenaAlign+4*len(long)) {
		t.Fatalf("arena of %d bytes after a step of %d, want twice that", got, arenaAlign+4*len(long))
	}
}
