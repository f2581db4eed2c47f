package checkpoints

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// tinyConfig is a small Qwen2-style model: saves take milliseconds, training steps too.
func tinyConfig() *engine.Config {
	return &engine.Config{ModelType: "qwen2", VocabSize: 64, HiddenSize: 32, NumHiddenLayers: 2,
		NumAttentionHeads: 4, NumKeyValueHeads: 2, HeadDim: 8, IntermediateSize: 48, RMSNormEps: 1e-6,
		RopeTheta: 10000, MaxPositionEmbeddings: 64, AttentionBias: true, TieWordEmbeddings: true}
}

// sampleState is a run state with every field filled.
func sampleState(step int64, seed uint64) *RunState {
	cfg := tinyConfig()
	w := engine.RandomWeights(cfg, seed, 0.02)
	ref := engine.RandomWeights(cfg, seed+100, 0.02)
	m, v := map[string]engine.HostTensor{}, map[string]engine.HostTensor{}
	r := rand.New(rand.NewPCG(seed, 9))
	for n, t := range w {
		a, b := make([]float32, len(t.Data)), make([]float32, len(t.Data))
		for i := range a {
			a[i], b[i] = float32(r.NormFloat64()), float32(r.Float64()*1e-6)
		}
		m[n], v[n] = engine.HostTensor{Shape: t.Shape, Data: a}, engine.HostTensor{Shape: t.Shape, Data: b}
	}
	pcg := rand.NewPCG(seed, 1)
	rng, _ := pcg.MarshalBinary()
	return &RunState{Step: step, Config: cfg, Weights: w, Reference: ref,
		Optimizer:    &OptimizerState{Step: step / 2, Groups: map[string]map[string]engine.HostTensor{"m": m, "v": v}},
		RNG:          map[string][]byte{"sampler": rng, "data": {0, 1, 2, 255}},
		DataPosition: json.RawMessage(`{"epoch":2,"index":` + strconv.FormatInt(step*8, 10) + `}`),
		Metrics:      json.RawMessage(`[{"step":1,"reward":0.25}]`),
		Extra:        map[string]json.RawMessage{"options": json.RawMessage(`{"lr":1e-5}`)}}
}

// sameTensors reports the first difference between two tensor maps, bit for bit.
func sameTensors(a, b map[string]engine.HostTensor) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d tensors vs %d", len(a), len(b))
	}
	for n, x := range a {
		y, ok := b[n]
		if !ok {
			return fmt.Errorf("%q missing", n)
		}
		if fmt.Sprint(x.Shape) != fmt.Sprint(y.Shape) || len(x.Data) != len(y.Data) {
			return fmt.Errorf("%q: shape %v vs %v", n, x.Shape, y.Shape)
		}
		for i := range x.Data {
			if math.Float32bits(x.Data[i]) != math.Float32bits(y.Data[i]) {
				return fmt.Errorf("%q[%d]: %g vs %g", n, i, x.Data[i], y.Data[i])
			}
		}
	}
	return nil
}

// sameState reports the first difference between two run states.
func sameState(a, b *RunState) error {
	if a.Step != b.Step {
		return fmt.Errorf("step %d vs %d", a.Step, b.Step)
	}
	if err := sameTensors(a.Weights, b.Weights); err != nil {
		return fmt.Errorf("weights: %w", err)
	}
	if (a.Reference == nil) != (b.Reference == nil) {
		return errors.New("reference present in one only")
	}
	if err := sameTensors(a.Reference, b.Reference); a.Reference != nil && err != nil {
		return fmt.Errorf("reference: %w", err)
	}
	if (a.Optimizer == nil) != (b.Optimizer == nil) {
		return errors.New("optimizer present in one only")
	}
	if a.Optimizer != nil {
		if a.Optimizer.Step != b.Optimizer.Step || len(a.Optimizer.Groups) != len(b.Optimizer.Groups) {
			return fmt.Errorf("optimizer step %d vs %d", a.Optimizer.Step, b.Optimizer.Step)
		}
		for g := range a.Optimizer.Groups {
			if err := sameTensors(a.Optimizer.Groups[g], b.Optimizer.Groups[g]); err != nil {
				return fmt.Errorf("optimizer group %s: %w", g, err)
			}
		}
	}
	if fmt.Sprint(a.RNG) != fmt.Sprint(b.RNG) {
		return fmt.Errorf("rng %v vs %v", a.RNG, b.RNG)
	}
	for _, p := range [][2]json.RawMessage{{a.DataPosition, b.DataPosition}, {a.Metrics, b.Metrics}, {a.Extra["options"], b.Extra["options"]}} {
		if string(p[0]) != string(p[1]) {
			return fmt.Errorf("JSON %s vs %s", p[0], p[1])
		}
	}
	if a.Config.HiddenSize != b.Config.HiddenSize || a.Config.TieWordEmbeddings != b.Config.TieWordEmbeddings {
		return errors.New("config differs")
	}
	return nil
}

// TestRunStateRoundTrip: every field comes back bit for bit; steps are listed; latest follows
// the newest save; a step directory is also a Hugging Face model directory; Keep prunes.
func TestRunStateRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	if _, err := LoadRunState(dir, Latest); err == nil {
		t.Fatal("loading from a missing run directory succeeded")
	}
	states := map[int64]*RunState{}
	for i, step := range []int64{10, 20, 30} {
		st := sampleState(step, uint64(i+1))
		if i == 1 {
			st.Reference, st.Optimizer, st.RNG, st.Metrics = nil, nil, nil, nil // all optional
		}
		states[step] = st
		if err := SaveRunState(dir, st, SaveRunOptions{}); err != nil {
			t.Fatal(err)
		}
		got, err := LoadRunState(dir, Latest)
		if err != nil {
			t.Fatal(err)
		}
		if err := sameState(st, got); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
	}
	if steps, err := ListSteps(dir); err != nil || fmt.Sprint(steps) != "[10 20 30]" {
		t.Fatalf("ListSteps = %v, %v", steps, err)
	}
	got, err := LoadRunState(dir, 20)
	if err != nil {
		t.Fatal(err)
	}
	if err := sameState(states[20], got); err != nil {
		t.Fatal(err)
	}
	// A step directory loads as a model directory.
	cfg, w, err := Load(filepath.Join(dir, StepDirName(30)))
	if err != nil || cfg.HiddenSize != 32 || sameTensors(w, states[30].Weights) != nil {
		t.Fatalf("step directory as a model directory: %v", err)
	}
	// Re-saving a step replaces it whole.
	again := sampleState(30, 77)
	if err := SaveRunState(dir, again, SaveRunOptions{Keep: 2}); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadRunState(dir, 30); err != nil || sameState(again, got) != nil {
		t.Fatalf("re-saved step: %v", err)
	}
	if steps, _ := ListSteps(dir); fmt.Sprint(steps) != "[20 30]" {
		t.Fatalf("Keep 2 left %v", steps)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Fatalf("run directory holds %v", entries)
	}
	// Without the latest file the newest step is found by listing.
	os.Remove(filepath.Join(dir, LatestFile))
	if s, err := LatestStep(dir); err != nil || s != 30 {
		t.Fatalf("LatestStep without the pointer = %d, %v", s, err)
	}
}

// TestRunStateCrash aborts a save after each of its files, after state.json, and after the
// rename but before the latest pointer moves: the previous checkpoint still loads as latest,
// whole, and the next save clears what the aborted one left.
func TestRunStateCrash(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	prev := sampleState(5, 1)
	if err := SaveRunState(dir, prev, SaveRunOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() { testHookRunState = nil }()
	for _, at := range []string{ConfigFile, GenerationConfigFile, WeightsFile, ReferenceFile, OptimizerFile, StateFile, "rename"} {
		crash := errors.New("simulated crash")
		testHookRunState = func(file string) error {
			if file == at {
				return crash
			}
			return nil
		}
		err := SaveRunState(dir, sampleState(6, 2), SaveRunOptions{})
		if !errors.Is(err, crash) || !strings.Contains(err.Error(), at) {
			t.Fatalf("crash after %s: error %v", at, err)
		}
		testHookRunState = nil
		got, err := LoadRunState(dir, Latest)
		if err != nil {
			t.Fatalf("crash after %s: previous checkpoint: %v", at, err)
		}
		if err := sameState(prev, got); err != nil {
			t.Fatalf("crash after %s: previous checkpoint changed: %v", at, err)
		}
		steps, _ := ListSteps(dir)
		if want := map[bool]string{true: "[5 6]", false: "[5]"}[at == "rename"]; fmt.Sprint(steps) != want {
			t.Fatalf("crash after %s: steps %v", at, steps)
		}
		os.RemoveAll(filepath.Join(dir, StepDirName(6)))
	}
	// A real crash leaves the temporary directory; simulate one and check the next save clears it.
	os.Mkdir(filepath.Join(dir, "."+StepDirName(6)+".tmp-123"), 0o755)
	next := sampleState(6, 2)
	if err := SaveRunState(dir, next, SaveRunOptions{}); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 3 {
		t.Fatalf("leftovers: %v", entries)
	}
	if got, err := LoadRunState(dir, Latest); err != nil || sameState(next, got) != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

// TestRunStateBadInput: corrupted files, a lying state.json and invalid states give errors
// naming the file or field, and a refused save changes nothing.
func TestRunStateBadInput(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	st := sampleState(7, 1)
	if err := SaveRunState(dir, st, SaveRunOptions{}); err != nil {
		t.Fatal(err)
	}
	sd := filepath.Join(dir, StepDirName(7))
	corrupt := func(file string, edit func([]byte) []byte) {
		p := filepath.Join(sd, file)
		orig, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(p, edit(append([]byte(nil), orig...)), 0o644)
		t.Cleanup(func() {})
		_, lerr := LoadRunState(dir, Latest)
		os.WriteFile(p, orig, 0o644)
		wantErr(t, lerr, p)
	}
	corrupt(WeightsFile, func(b []byte) []byte { b[len(b)-3] ^= 1; return b })
	corrupt(OptimizerFile, func(b []byte) []byte { return b[:len(b)-4] })
	corrupt(ConfigFile, func(b []byte) []byte { return append(b, ' ') })
	corrupt(StateFile, func(b []byte) []byte { return []byte(strings.Replace(string(b), `"version": 1`, `"version": 99`, 1)) })
	corrupt(StateFile, func(b []byte) []byte { return []byte(strings.Replace(string(b), `"step": 7`, `"step": 8`, 1)) })
	corrupt(StateFile, func(b []byte) []byte { return b[:10] })
	os.WriteFile(filepath.Join(dir, LatestFile), []byte("../etc\n"), 0o644)
	_, err := LoadRunState(dir, Latest)
	wantErr(t, err, filepath.Join(dir, LatestFile))
	os.WriteFile(filepath.Join(dir, LatestFile), []byte(StepDirName(7)+"\n"), 0o644)
	_, err = LoadRunState(dir, 8)
	wantErr(t, err, StepDirName(8))

	before := dirSnapshot(t, sd)
	bad := sampleState(7, 2)
	delete(bad.Weights, "model.norm.weight")
	wantErr(t, SaveRunState(dir, bad, SaveRunOptions{}), "model.norm.weight")
	bad = sampleState(7, 2)
	bad.Reference["model.norm.weight"] = engine.HostTensor{Shape: []int{3}, Data: make([]float32, 3)}
	wantErr(t, SaveRunState(dir, bad, SaveRunOptions{}), "reference", "model.norm.weight")
	bad = sampleState(7, 2)
	bad.Optimizer.Groups["a/b"] = nil
	wantErr(t, SaveRunState(dir, bad, SaveRunOptions{}), `"a/b"`)
	bad = sampleState(7, 2)
	bad.Metrics = json.RawMessage(`{`)
	wantErr(t, SaveRunState(dir, bad, SaveRunOptions{}), "metrics")
	if fmt.Sprint(dirSnapshot(t, sd)) != fmt.Sprint(before) {
		t.Fatal("a refused save changed the saved step")
	}
	if got, err := LoadRunState(dir, Latest); err != nil || sameState(st, got) != nil {
		t.Fatalf("after refused saves: %v", err)
	}
}

// FuzzParseState: state.json of arbitrary bytes never panics, and what parses lists only
// plain file names inside the step directory.
func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"format":"prolong-run-state","version":1,"step":3,"files":{"model.safetensors":{"size":8,"sha256":"` + strings.Repeat("0", 64) + `"}}}`))
	f.Add([]byte(`{"format":"prolong-run-state","version":1,"step":3,"files":{"../x":{"size":8,"sha256":""}}}`))
	f.Add([]byte(`{"format":"prolong-run-state","version":1,"step":-1,"rng":{"a":"AAE="}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseState(data)
		if err != nil {
			return
		}
		for file := range s.Files {
			if file != filepath.Base(file) || strings.ContainsAny(file, `/\`) || file == ".." || file == "." {
				t.Fatalf("state accepted file %q", file)
			}
		}
	})
}

// Resumption: a run of resumeSteps training steps on a tiny model, with a batch drawn from a
// seeded PCG each step, saving its whole state after every step.

const resumeSteps = 30

// trainRun trains from the state in dir (or from scratch) up to resumeSteps, saving after each
// step, and returns the final weights. A child process run of it is what the kill test kills.
func trainRun(t testing.TB, dir string) map[string]engine.HostTensor {
	cfg := tinyConfig()
	w := engine.RandomWeights(cfg, 11, 0.05)
	pcg := rand.NewPCG(21, 22)
	var step int64
	var opt *engine.OptimizerState
	if _, err := LatestStep(dir); err == nil {
		st, err := LoadRunState(dir, Latest)
		if err != nil {
			t.Fatal(err)
		}
		w, step = st.Weights, st.Step
		if err := pcg.UnmarshalBinary(st.RNG["batches"]); err != nil {
			t.Fatal(err)
		}
		opt = &engine.OptimizerState{Step: int(st.Optimizer.Step), M: st.Optimizer.Groups["m"], V: st.Optimizer.Groups["v"]}
	}
	m, err := engine.NewModel(cfg, cpu.New(), w, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := engine.NewTrainer(m, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-2, WeightDecay: 0.01, ClipNorm: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if opt != nil {
		if err := tr.LoadOptimizerState(opt); err != nil {
			t.Fatal(err)
		}
	}
	r := rand.New(pcg)
	for ; step < resumeSteps; step++ {
		var batch []engine.ScoreRequest
		for range 3 {
			toks := make([]int32, 6+r.IntN(10))
			for i := range toks {
				toks[i] = int32(r.IntN(cfg.VocabSize))
			}
			batch = append(batch, engine.ScoreRequest{Tokens: toks, Start: 1})
		}
		tr.ZeroGrad()
		if _, err := tr.ForwardBackward(context.Background(), batch, engine.CrossEntropy(0)); err != nil {
			t.Fatal(err)
		}
		if _, err := tr.Step(); err != nil {
			t.Fatal(err)
		}
		if dir == "" {
			continue
		}
		hw, err := m.HostWeights()
		if err != nil {
			t.Fatal(err)
		}
		os, err := tr.OptimizerState()
		if err != nil {
			t.Fatal(err)
		}
		rng, _ := pcg.MarshalBinary()
		st := &RunState{Step: step + 1, Config: cfg, Weights: hw, RNG: map[string][]byte{"batches": rng},
			Optimizer: &OptimizerState{Step: int64(os.Step), Groups: map[string]map[string]engine.HostTensor{"m": os.M, "v": os.V}}}
		if err := SaveRunState(dir, st, SaveRunOptions{Keep: 2}); err != nil {
			t.Fatal(err)
		}
	}
	hw, err := m.HostWeights()
	if err != nil {
		t.Fatal(err)
	}
	return hw
}

// TestKillAndResume SIGKILLs a child process that trains and saves its run state after every
// step, at several moments, resuming it each time from its latest checkpoint: the final
// weights equal, bit for bit, those of a run that was never interrupted.
func TestKillAndResume(t *testing.T) {
	if dir := os.Getenv("PROLONG_RESUME_CHILD_DIR"); dir != "" {
		fmt.Println("child: training") // startChild's cue
		trainRun(t, dir)
		return
	}
	want := trainRun(t, "")
	dir := filepath.Join(t.TempDir(), "run")
	var seen []int64
	for i, delay := range []int{150, 90, 120, 80, 200, 110, 130} {
		cmd := startChild(t, "TestKillAndResume", "PROLONG_RESUME_CHILD_DIR="+dir)
		time.Sleep(time.Duration(delay) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		s, err := LatestStep(dir)
		if err != nil {
			t.Logf("kill %d after %d ms: nothing saved yet", i, delay)
			continue
		}
		if _, err := LoadRunState(dir, Latest); err != nil {
			t.Fatalf("kill %d after %d ms: the latest checkpoint does not load: %v", i, delay, err)
		}
		seen = append(seen, s)
	}
	t.Logf("latest step after each kill: %v (of %d)", seen, resumeSteps)
	if len(seen) == 0 {
		t.Fatal("no kill came after a save; the test proves nothing (retune the delays)")
	}
	got := trainRun(t, dir)
	if err := sameTensors(want, got); err != nil {
		t.Fatalf("resumed run differs from the uninterrupted one: %v", err)
	}
}

// TestRunStateStepNames: run states are saved as step-NNNNNN, the exports' width, and run
// directories saved under the former eight-digit names still list, load and prune.
func TestRunStateStepNames(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	for _, s := range []int64{3, 4} {
		if err := SaveRunState(dir, sampleState(s, 1), SaveRunOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "step-000004", StateFile)); err != nil {
		t.Fatalf("step 4 not saved as step-000004: %v", err)
	}
	// The former layout: eight digits, latest naming them.
	for _, s := range []int64{3, 4} {
		if err := os.Rename(filepath.Join(dir, StepDirName(s)), filepath.Join(dir, fmt.Sprintf("step-%08d", s))); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, LatestFile), []byte("step-00000004\n"), 0o644)
	if steps, err := ListSteps(dir); err != nil || fmt.Sprint(steps) != "[3 4]" {
		t.Fatalf("ListSteps of the former layout: %v %v", steps, err)
	}
	got, err := LoadRunState(dir, Latest)
	if err != nil || got.Step != 4 {
		t.Fatalf("LoadRunState of the former layout: %v", err)
	}
	if err := SaveRunState(dir, sampleState(5, 1), SaveRunOptions{Keep: 2}); err != nil {
		t.Fatal(err)
	}
	if steps, _ := ListSteps(dir); fmt.Sprint(steps) != "[4 5]" {
		t.Fatalf("after pruning with a former-layout step: %v", steps)
	}
	if _, err := os.Stat(filepath.Join(dir, "step-00000003")); !os.IsNotExist(err) {
		t.Fatalf("former-layout step 3 not pruned: %v", err)
	}
}
