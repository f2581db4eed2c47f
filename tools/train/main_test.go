package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/data"
	"github.com/prolong-rl/prolong/grpo/quickstart"
	"github.com/prolong-rl/prolong/grpo/tasks"
)

// runArgs runs the program's flags and run as main does.
func runArgs(t *testing.T, args ...string) error {
	t.Helper()
	o, fs, err := parseOptions(args)
	if err != nil {
		return err
	}
	return run(context.Background(), o, fs)
}

// shortRun is a default job small enough for a test.
var shortRun = []string{"--quiet", "--seed", "1", "--steps", "4", "--sft-steps", "20", "--sft-lr", "3e-3", "--eval-every", "2",
	"--eval-size", "20", "--ref-reset-every", "3", "--lr", "1e-4", "--prompts", "4", "--n", "4", "--train-problems", "200",
	"--max-response", "8", "--eval-samples", "2"}

// TestShortRun runs the default job for a few steps and checks what the run directory holds:
// a metrics line per step (plus the step-0 evaluation), held-out evaluations with pass@k, a
// reference reset, the PNG plots, exports and a run state.
func TestShortRun(t *testing.T) {
	dir := t.TempDir()
	if err := runArgs(t, append(shortRun, "--out", dir)...); err != nil {
		t.Fatal(err)
	}
	recs, err := grpo.ReadMetrics(filepath.Join(dir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 5 || recs[0].Eval == nil || recs[2].Eval == nil || recs[4].Eval == nil || !recs[3].RefReset {
		t.Fatalf("%d records: %+v", len(recs), recs)
	}
	if _, ok := recs[4].Eval.PassAtK[2]; !ok {
		t.Errorf("no pass@2 in the final evaluation: %+v", recs[4].Eval)
	}
	if err := runArgs(t, append(shortRun, "--out", dir)...); err == nil || !strings.Contains(err.Error(), "--resume") {
		t.Errorf("a second run into the same directory: %v", err)
	}
	for _, f := range []string{"reward.png", "heldout_accuracy.png", "response_length.png",
		"checkpoints/step-000003/model.onnx", "checkpoints/step-000004/model.onnx", "checkpoints/step-000004/config.json",
		"checkpoints/step-000004/model.safetensors", "checkpoints/step-000004/tokenizer.json", "state/latest"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// TestResume: a run of 4 steps, extended with --resume --steps 6, ends at the same weights,
// bit for bit, as a run of 6 steps, and its metrics.jsonl holds each step once.
func TestResume(t *testing.T) {
	base := []string{"--quiet", "--seed", "3", "--sft-steps", "40", "--sft-lr", "3e-3", "--cot", "--eval-every", "3",
		"--eval-size", "10", "--ref-reset-every", "3", "--prompts", "4", "--n", "8", "--train-problems", "100",
		"--eval-samples", "2", "--save-every", "2"}
	full, split := t.TempDir(), t.TempDir()
	if err := runArgs(t, append(base, "--out", full, "--steps", "6")...); err != nil {
		t.Fatal(err)
	}
	if err := runArgs(t, append(base, "--out", split, "--steps", "4")...); err != nil {
		t.Fatal(err)
	}
	// A crash after step 5 was logged but before its state: the log line must go.
	f, err := os.OpenFile(filepath.Join(split, "metrics.jsonl"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"step":5,"reward_mean":0.5}` + "\n")
	f.Close()
	// Only the run directory and the new length: every other setting comes from the run state.
	if err := runArgs(t, "--quiet", "--out", split, "--resume", "--steps", "6"); err != nil {
		t.Fatal(err)
	}
	a, err := checkpoints.LoadRunState(filepath.Join(full, "state"), checkpoints.Latest)
	if err != nil {
		t.Fatal(err)
	}
	b, err := checkpoints.LoadRunState(filepath.Join(split, "state"), checkpoints.Latest)
	if err != nil {
		t.Fatal(err)
	}
	if a.Step != 6 || b.Step != 6 {
		t.Fatalf("steps %d and %d, want 6", a.Step, b.Step)
	}
	for name, w := range a.Weights {
		if !bytes.Equal(f32bytes(w.Data), f32bytes(b.Weights[name].Data)) {
			t.Fatalf("%s differs between the resumed and the uninterrupted run", name)
		}
		if !bytes.Equal(f32bytes(a.Reference[name].Data), f32bytes(b.Reference[name].Data)) {
			t.Fatalf("reference %s differs between the resumed and the uninterrupted run", name)
		}
	}
	recs, err := grpo.ReadMetrics(filepath.Join(split, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs[5:] { // the resumed steps must train, or the comparison proves nothing
		if r.OptimizerUpdates == 0 {
			t.Errorf("resumed step %d made no update: %+v", r.Step, r.Metrics)
		}
	}
	ra, _ := os.ReadFile(filepath.Join(full, "metrics.jsonl"))
	rb, _ := os.ReadFile(filepath.Join(split, "metrics.jsonl"))
	if n, m := bytes.Count(ra, []byte("\n")), bytes.Count(rb, []byte("\n")); n != 7 || m != 7 {
		t.Errorf("metrics lines: uninterrupted %d, resumed %d; want 7 each", n, m)
	}
	if err := runArgs(t, "--quiet", "--out", t.TempDir(), "--resume"); err == nil || !strings.Contains(err.Error(), "--resume") {
		t.Errorf("resume of an empty directory: %v", err)
	}
}

// f32bytes is the bit pattern of v, so that comparisons are bit for bit (NaN included).
func f32bytes(v []float32) []byte {
	b := make([]byte, 0, 4*len(v))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

// TestOptions: the command line wins over --config, which wins over the default job's values,
// which win over ProRL's; bad settings are named.
func TestOptions(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "recipe.yaml")
	os.WriteFile(cfg, []byte("clip_high: 0.28\nlr: 1e-5\nn: 12\nfreeze: ['^model\\.embed_tokens\\.', 'a,b']\nno-dynamic-sampling: true\n"), 0o644)
	o, _, err := parseOptions([]string{"--config", cfg, "--n", "6"})
	if err != nil {
		t.Fatal(err)
	}
	if o.Run.Trainer.Loss.ClipHigh != 0.28 || o.Run.Optimizer.LR != 1e-5 || o.Run.Trainer.SamplesPerPrompt != 6 || o.Run.Trainer.DynamicSampling || len(o.Run.Freeze) != 2 || o.Run.Freeze[1] != "a,b" {
		t.Errorf("config file: %+v", *o)
	}
	if o.Run.Trainer.PromptsPerStep != 16 || o.Run.Steps != 200 || o.Run.Trainer.MaxResponseTokens != 24 { // the default job's
		t.Errorf("default job values: prompts %d steps %d max-response %d", o.Run.Trainer.PromptsPerStep, o.Run.Steps, o.Run.Trainer.MaxResponseTokens)
	}
	o, _, err = parseOptions([]string{"--model", "m", "--data", "d"})
	if err != nil {
		t.Fatal(err)
	}
	if o.Run.Trainer.PromptsPerStep != 256 || o.Run.Trainer.SamplesPerPrompt != 16 || o.Run.Optimizer.LR != 2e-6 || o.Run.Trainer.Loss.ClipHigh != 0.4 || o.Run.Trainer.Loss.ClipLow != 0.2 || o.Run.Trainer.Loss.KLCoef != 1e-4 || o.Run.Trainer.Temperature != 1.2 || o.Run.Trainer.MiniBatches != 4 {
		t.Errorf("ProRL defaults with --model: %+v", *o)
	}
	for _, tc := range []struct{ file, want string }{
		{"clip_hgh: 0.3\n", `unknown setting "clip_hgh"`},
		{"lr: fast\n", `setting "lr"`},
		{"out: /tmp/x\n", `"out" can only be given on the command line`},
		{"n: [1, 2]\n", "a list given"},
		{"- a\n", "recipe.yaml"},
	} {
		os.WriteFile(cfg, []byte(tc.file), 0o644)
		if _, _, err := parseOptions([]string{"--config", cfg}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: error %v, want it to say %q", tc.file, err, tc.want)
		}
	}
	if _, _, err := parseOptions([]string{"stray"}); err == nil {
		t.Error("a stray argument was accepted")
	}
}

// TestQuickstartTokenizerFile: the tokenizer.json written beside the default model's exports
// encodes the default task's prompts and worked answers to the ids of the default tokenizer
// itself, and decodes responses to the same text, so an exported step directory is the whole
// model for tools that read Hugging Face directories (and for --model).
func TestQuickstartTokenizerFile(t *testing.T) {
	dir := t.TempDir()
	if err := quickstartTokenizerFiles(dir); err != nil {
		t.Fatal(err)
	}
	hf, err := loadTokenizer(dir)
	if err != nil {
		t.Fatal(err)
	}
	q := quickstart.NewTokenizer()
	ts, err := tasks.Generate(quickstart.Task(), tasks.GenerateConfig{Split: tasks.Train, N: 200, Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range ts {
		for _, text := range []string{quickstart.BOS + task.Prompt, quickstart.Working(task.Prompt) + quickstart.EOS} {
			want, err := q.Encode(text)
			if err != nil {
				t.Fatal(err)
			}
			// A prompt goes through the chat template (which keeps "<bos>8+7-5=" as is); an
			// answer is plain text.
			got, _, err := hf.prompt(data.Row{Prompt: text}, strings.HasPrefix(text, quickstart.BOS), 1<<30)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("%q: tokenizer.json gives %v, the default tokenizer %v", text, got, want)
			}
			if text[0] != '<' && hf.decode(got) != q.Decode(want) {
				t.Fatalf("%q: decoded %q and %q", text, hf.decode(got), q.Decode(want))
			}
		}
	}
	// A question without BOS, as a chat client sends it, gets the BOS the model was trained with.
	for _, row := range []data.Row{{Prompt: "8+7-5="}, {Messages: []data.Message{{Role: "user", Content: "8+7-5="}}}} {
		got, text, err := hf.prompt(row, true, 1<<30)
		want, _ := q.Encode(quickstart.BOS + "8+7-5=")
		if err != nil || text != quickstart.BOS+"8+7-5=" || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%+v: %q %v, %v; want %v", row, text, got, err, want)
		}
	}
	if stop := hf.stopTokens(quickstart.ModelConfig()); fmt.Sprint(stop) != fmt.Sprint([]int32{q.ID(quickstart.EOS)}) {
		t.Errorf("stop tokens %v", stop)
	}
}

// TestRolloutServers: the default job with --rollout-servers (not overlapped) generates on a
// real tools/rollout-server (weights pushed before the first step and after each) and logs
// the same metrics, step for step, as the same run with in-process rollouts.
func TestRolloutServers(t *testing.T) {
	url := startRolloutServers(t, 1)[0] // the trainer pushes its weights before the first step
	t.Setenv("PROLONG_API_KEY", "k")
	servedMatchesInProcess(t, url)
}

// servedMatchesInProcess runs a three-step job (seed 4, evaluated at step 3) with the flags
// extra twice, generating in process and on the rollout server at url (not overlapped), and
// fails t unless both log the same reward, loss and response length at every step after the
// first, and the same held-out accuracy.
func servedMatchesInProcess(t *testing.T, url string, extra ...string) {
	t.Helper()
	args := slices.Clip(append([]string{"--quiet", "--seed", "4", "--steps", "3", "--sft-steps", "40", "--sft-lr", "3e-3", "--cot",
		"--eval-every", "3", "--eval-size", "10", "--prompts", "4", "--n", "8", "--train-problems", "100", "--eval-samples", "2"}, extra...))
	local, served := t.TempDir(), t.TempDir()
	if err := runArgs(t, append(args, "--out", local)...); err != nil {
		t.Fatal(err)
	}
	if err := runArgs(t, append(args, "--out", served, "--rollout-servers", url, "--overlap", "off")...); err != nil {
		t.Fatal(err)
	}
	a, _ := grpo.ReadMetrics(filepath.Join(local, "metrics.jsonl"))
	b, _ := grpo.ReadMetrics(filepath.Join(served, "metrics.jsonl"))
	if len(a) != 4 || len(b) != 4 {
		t.Fatalf("%d and %d records", len(a), len(b))
	}
	for i := range a {
		if i > 0 && (a[i].RewardMean != b[i].RewardMean || a[i].Loss != b[i].Loss || a[i].ResponseLenMean != b[i].ResponseLenMean) {
			t.Errorf("step %d: in-process reward %v loss %v len %v, served reward %v loss %v len %v", i,
				a[i].RewardMean, a[i].Loss, a[i].ResponseLenMean, b[i].RewardMean, b[i].Loss, b[i].ResponseLenMean)
		}
	}
	if a[3].Eval.Accuracy != b[3].Eval.Accuracy {
		t.Errorf("held-out accuracy %v in process, %v served", a[3].Eval.Accuracy, b[3].Eval.Accuracy)
	}
}

// TestFlagDefaultsAreGRPOs: with --model the flags describe grpo.DefaultRunConfig exactly (the
// defaults are defined once, in grpo), and each value the default job changes is the one its
// flag's help text gives.
func TestFlagDefaultsAreGRPOs(t *testing.T) {
	o, fs, err := parseOptions([]string{"--model", "m", "--data", "d", "--out", "x"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := runConfig(*o, fs)
	if err != nil {
		t.Fatal(err)
	}
	want := grpo.DefaultRunConfig()
	want.Dir, want.Backend, want.Settings, want.Cluster = got.Dir, got.Backend, got.Settings, got.Cluster
	if !reflect.DeepEqual(got, want) {
		t.Errorf("flags give\n%+v\ngrpo.DefaultRunConfig is\n%+v", got, want)
	}
	var help bytes.Buffer
	usage(&help, fs)
	lines := map[string]string{}
	for _, l := range strings.Split(help.String(), "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], "--") {
			lines[strings.TrimPrefix(f[0], "--")] = l
		}
		if strings.Count(l, "(default") > 1 {
			t.Errorf("two defaults on one line of --help: %s", l)
		}
	}
	for name, v := range defaultJobFlags {
		f := fs.Lookup(name)
		if want := "(default " + f.DefValue + "; default job: " + v + ")"; !strings.Contains(lines[name], want) {
			t.Errorf("--%s in --help: %q, want %q", name, lines[name], want)
		}
	}
	if f := fs.Lookup("steps"); f.DefValue != "1000" {
		t.Errorf("usage changed --steps's default to %q", f.DefValue)
	}
}

// TestModelRunCarriesGenerationConfig: a --model run's exports carry the source model's
// generation_config.json (its sampling defaults) with the model's token ids, and model.onnx is
// written 0644 like every other file.
func TestModelRunCarriesGenerationConfig(t *testing.T) {
	src, dataDir, out := t.TempDir(), t.TempDir(), t.TempDir()
	c := quickstart.ModelConfig()
	if err := checkpoints.Save(src, c, engine.RandomWeights(c, 1, 0.02), checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := quickstartTokenizerFiles(src); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "generation_config.json"), []byte(`{"temperature": 0.6, "top_p": 0.95, "do_sample": true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := runArgs(t, "--write-task-data", dataDir, "--train-problems", "40", "--eval-size", "8"); err != nil {
		t.Fatal(err)
	}
	err := runArgs(t, "--quiet", "--device", "cpu", "--model", src, "--data", filepath.Join(dataDir, "train.jsonl"),
		"--steps", "1", "--prompts", "2", "--n", "2", "--max-response", "8", "--eval-every", "1", "--eval-samples", "1", "--out", out)
	if err != nil {
		t.Fatal(err)
	}
	dirs, _ := filepath.Glob(filepath.Join(out, "checkpoints", "step-*"))
	if len(dirs) == 0 {
		t.Fatal("no export")
	}
	b, err := os.ReadFile(filepath.Join(dirs[len(dirs)-1], "generation_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var gen map[string]any
	if err := json.Unmarshal(b, &gen); err != nil {
		t.Fatal(err)
	}
	if gen["temperature"] != 0.6 || gen["top_p"] != 0.95 || gen["do_sample"] != true || gen["eos_token_id"] == nil {
		t.Errorf("export's generation_config.json lost the source's defaults or the eos id: %s", b)
	}
	cb, err := os.ReadFile(filepath.Join(dirs[len(dirs)-1], "config.json"))
	if err != nil || !strings.Contains(string(cb), `"eos_token_id"`) {
		t.Errorf("export's config.json has no eos_token_id (%v): %s", err, cb)
	}
	fi, err := os.Stat(filepath.Join(dirs[len(dirs)-1], "model.onnx"))
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("model.onnx: %v, mode %v", err, fi.Mode().Perm())
	}
}
