package main

import (
	"bytes"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/tools/internal/tooltest"
)

// fixtures are the ONNX files of onnx/testdata (scripts/make_onnx_fixtures.py): torch.onnx /
// optimum-style exports with and without past_key_values, one with external data, and an
// onnxruntime-genai-style graph.
var fixtures = []string{"qwen2_past", "llama3_nopast", "qwen3_past_ext", "genai_qwen2"}

func fixture(name string) string { return filepath.Join("../../onnx/testdata", name, "model.onnx") }

// convert runs the program in process with args (progress bar off) and returns its output and
// error.
func convert(t *testing.T, args ...string) (string, error) { return tooltest.Main(run).Run(args...) }

func mustConvert(t *testing.T, args ...string) string {
	t.Helper()
	return tooltest.Main(run).Must(t, "convert", args...)
}

// sameFile fails t unless a and b hold the same bytes.
func sameFile(t *testing.T, a, b string) { t.Helper(); tooltest.SameFile(t, a, b) }

// TestSafetensorsRoundTrip: ONNX -> safetensors, then safetensors -> ONNX -> safetensors and
// safetensors -> engine -> safetensors, give byte-identical model.safetensors and config.json
// (no ONNX Runtime needed).
func TestSafetensorsRoundTrip(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(fx, func(t *testing.T) {
			dir := t.TempDir()
			hf, onnxDir, back := filepath.Join(dir, "hf"), filepath.Join(dir, "onnx"), filepath.Join(dir, "back")
			mustConvert(t, "-i", fixture(fx), "-o", hf, "--max-position-embeddings", "512")
			mustConvert(t, "-i", hf, "-o", onnxDir, "--to", "onnx")
			mustConvert(t, "-i", onnxDir, "-o", back)
			for _, f := range []string{"model.safetensors", "config.json", "generation_config.json"} {
				sameFile(t, filepath.Join(hf, f), filepath.Join(back, f))
			}

			viaEngine := tooltest.ThroughEngine(t, hf, dir)
			sameFile(t, filepath.Join(hf, "model.safetensors"), filepath.Join(viaEngine, "model.safetensors"))
		})
	}
}

// TestDTypes: --dtype stores every tensor in that type, each value the f32 weight rounded to
// nearest even; values an f16 cannot hold are refused with the tensor named, and nothing is
// written.
func TestDTypes(t *testing.T) {
	dir := t.TempDir()
	src := fixture("qwen2_past")
	mustConvert(t, "-i", src, "-o", dir+"/ref")
	ref, err := checkpoints.ReadSafetensors(dir + "/ref/model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		flag  string
		dtype checkpoints.DType
		round func(float32) float32
	}{
		{"bf16", checkpoints.BF16, func(v float32) float32 { return checkpoints.BF16ToF32(checkpoints.F32ToBF16(v)) }},
		{"f16", checkpoints.F16, func(v float32) float32 { return checkpoints.F16ToF32(checkpoints.F32ToF16(v)) }},
		{"f32", checkpoints.F32, func(v float32) float32 { return v }},
	} {
		out := filepath.Join(dir, tc.flag)
		mustConvert(t, "-i", src, "-o", out, "--dtype", tc.flag)
		f, err := checkpoints.ReadSafetensors(filepath.Join(out, "model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		rounded := 0
		for name, x := range ref.Tensors {
			if f.DTypes[name] != tc.dtype {
				t.Fatalf("--dtype %s: %s stored as %s", tc.flag, name, f.DTypes[name])
			}
			for i, v := range x.Data {
				if got, want := f.Tensors[name].Data[i], tc.round(v); math.Float32bits(got) != math.Float32bits(want) {
					t.Fatalf("--dtype %s: %s[%d] = %v, want %v rounded = %v", tc.flag, name, i, got, v, want)
				}
				if tc.round(v) != v {
					rounded++
				}
			}
		}
		if tc.dtype != checkpoints.F32 && rounded == 0 {
			t.Errorf("--dtype %s changed no value: the test compares nothing", tc.flag)
		}
		cfg, _ := os.ReadFile(filepath.Join(out, "config.json"))
		if want := map[string]string{"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[tc.flag]; !bytes.Contains(cfg, []byte(`"torch_dtype": "`+want+`"`)) {
			t.Errorf("--dtype %s: config.json has no torch_dtype %s", tc.flag, want)
		}
	}

	// A weight beyond the f16 range: fine in f32 and bf16, refused in f16.
	cfg, w, err := checkpoints.Load(dir + "/ref")
	if err != nil {
		t.Fatal(err)
	}
	w["model.layers.1.mlp.up_proj.weight"].Data[5] = 1e5
	if err := checkpoints.Save(dir+"/big", cfg, w, checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	mustConvert(t, "-i", dir+"/big", "-o", dir+"/big-onnx", "--to", "onnx")
	mustConvert(t, "-i", dir+"/big-onnx", "-o", dir+"/big-bf16", "--dtype", "bf16")
	_, err = convert(t, "-i", dir+"/big-onnx", "-o", dir+"/big-f16", "--dtype", "f16")
	if err == nil || !strings.Contains(err.Error(), "model.layers.1.mlp.up_proj.weight[0,5] = 100000 does not fit in f16") {
		t.Errorf("f16 overflow: %v", err)
	}
	if _, err := os.Stat(dir + "/big-f16"); !os.IsNotExist(err) {
		t.Error("a refused conversion left its output behind")
	}
}

// TestSideFiles: the tokenizer files beside the input come along, both ways, and so does
// generation_config.json with its sampling defaults, completed with the end-of-sequence id that
// the ONNX input does not know (the tokenizer's eos_token), which config.json carries too.
func TestSideFiles(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	os.MkdirAll(in, 0o755)
	sameFileCopy(t, fixture("qwen2_past"), filepath.Join(in, "model.onnx"))
	side := map[string]string{
		"tokenizer.json":         `{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}`,
		"tokenizer_config.json":  `{"eos_token": "a"}`,
		"generation_config.json": `{"do_sample": true, "temperature": 0.6, "top_p": 0.95}`,
	}
	for name, body := range side {
		os.WriteFile(filepath.Join(in, name), []byte(body), 0o644)
	}
	os.WriteFile(filepath.Join(in, "notes.txt"), []byte("mine"), 0o644)
	out := mustConvert(t, "-i", in, "-o", dir+"/hf")
	mustConvert(t, "-i", dir+"/hf", "-o", dir+"/onnx", "--to", "onnx")
	for _, o := range []string{"hf", "onnx"} {
		for name, body := range side {
			if name == "generation_config.json" {
				continue
			}
			if b, err := os.ReadFile(filepath.Join(dir, o, name)); err != nil || string(b) != body {
				t.Errorf("%s/%s = %q, %v; want the input's", o, name, b, err)
			}
		}
		var gen, cfg map[string]any
		tooltest.ReadJSON(t, filepath.Join(dir, o, "generation_config.json"), &gen)
		tooltest.ReadJSON(t, filepath.Join(dir, o, "config.json"), &cfg)
		if want := map[string]any{"do_sample": true, "temperature": 0.6, "top_p": 0.95, "eos_token_id": 0.0}; !reflect.DeepEqual(gen, want) {
			t.Errorf("%s/generation_config.json = %v, want %v", o, gen, want)
		}
		if cfg["eos_token_id"] != 0.0 {
			t.Errorf("%s/config.json eos_token_id = %v, want the tokenizer's 0", o, cfg["eos_token_id"])
		}
		if _, err := os.Stat(filepath.Join(dir, o, "notes.txt")); !os.IsNotExist(err) {
			t.Errorf("%s/notes.txt was copied", o)
		}
	}
	if !strings.Contains(out, filepath.Join(dir, "hf", "tokenizer.json")) {
		t.Errorf("the summary does not list tokenizer.json:\n%s", out)
	}
	// Without a tokenizer the output says so.
	if out := mustConvert(t, "-i", fixture("qwen2_past"), "-o", dir+"/bare"); !strings.Contains(out, "no tokenizer.json beside the input") {
		t.Errorf("no warning about the missing tokenizer:\n%s", out)
	}
}

func sameFileCopy(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestShards: --shard-size splits the weights with an index; the sharded directory converts
// to the same model.onnx as the single file.
func TestShards(t *testing.T) {
	dir := t.TempDir()
	mustConvert(t, "-i", fixture("qwen2_past"), "-o", dir+"/one")
	mustConvert(t, "-i", fixture("qwen2_past"), "-o", dir+"/sharded", "--shard-size", "100000")
	shards, _ := filepath.Glob(dir + "/sharded/model-*-of-*.safetensors")
	if len(shards) < 3 {
		t.Fatalf("%d shards", len(shards))
	}
	if _, err := os.Stat(dir + "/sharded/model.safetensors.index.json"); err != nil {
		t.Fatal(err)
	}
	mustConvert(t, "-i", dir+"/one", "-o", dir+"/one-onnx", "--to", "onnx")
	mustConvert(t, "-i", dir+"/sharded", "-o", dir+"/sharded-onnx", "--to", "onnx")
	sameFile(t, dir+"/one-onnx/model.onnx", dir+"/sharded-onnx/model.onnx")
}

// TestBadInput: each mistake exits with an error naming the file, tensor or flag at fault and
// writes nothing: an existing output keeps its contents, and no temporary directory stays.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	hf := filepath.Join(dir, "hf")
	mustConvert(t, "-i", fixture("qwen2_past"), "-o", hf)
	st, _ := os.ReadFile(filepath.Join(hf, "model.safetensors"))
	cfg, _ := os.ReadFile(filepath.Join(hf, "config.json"))
	model := func(name string, files map[string][]byte) string {
		d := filepath.Join(dir, name)
		os.MkdirAll(d, 0o755)
		for f, b := range files {
			os.WriteFile(filepath.Join(d, f), b, 0o644)
		}
		return d
	}
	truncated := model("truncated", map[string][]byte{"model.safetensors": st[:len(st)/2], "config.json": cfg})
	lying := append([]byte(nil), st...)
	copy(lying[8:], bytes.Replace(lying[8:200], []byte(`"dtype":"F32"`), []byte(`"dtype":"I64"`), 1))
	if bytes.Equal(lying, st) {
		t.Fatalf("no F32 dtype in the header: %q", st[8:200])
	}
	lyingDType := model("lying", map[string][]byte{"model.safetensors": lying, "config.json": cfg})
	moreLayers := bytes.Replace(cfg, []byte(`"num_hidden_layers": 2`), []byte(`"num_hidden_layers": 3`), 1)
	if bytes.Equal(moreLayers, cfg) {
		t.Fatalf("the fixture's config.json changed:\n%s", cfg)
	}
	wrongConfig := model("wrong", map[string][]byte{"model.safetensors": st, "config.json": moreLayers})
	badJSON := model("badjson", map[string][]byte{"model.safetensors": st, "config.json": []byte(`{"model_type": "qwen2",`)})
	both := model("both", map[string][]byte{"model.safetensors": st, "config.json": cfg, "model.onnx": []byte("not read")})
	garbageONNX := model("garbage", map[string][]byte{"model.onnx": []byte("this is not a protobuf \xff\xff\xff")})
	outs := filepath.Join(dir, "outs")
	existing := filepath.Join(outs, "existing")
	os.MkdirAll(existing, 0o755)
	os.WriteFile(filepath.Join(existing, "model.safetensors"), []byte("mine"), 0o644)

	x := filepath.Join(outs, "x")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no -i", []string{"-o", x}, "-i/--input is required"},
		{"no -o", []string{"-i", hf}, "-o/--output is required"},
		{"stray argument", []string{"-i", hf, "-o", x, "--to", "onnx", "extra"}, `unexpected arguments ["extra"]`},
		{"missing file", []string{"-i", dir + "/nope.onnx", "-o", x}, dir + "/nope.onnx: no such file"},
		{"not onnx", []string{"-i", filepath.Join(hf, "config.json"), "-o", x}, "config.json: not an .onnx file"},
		{"empty dir", []string{"-i", outs + "/existing", "-o", x}, "no model here"},
		{"garbage onnx", []string{"-i", garbageONNX, "-o", x}, filepath.Join(garbageONNX, "model.onnx")},
		{"truncated safetensors", []string{"-i", truncated, "-o", x, "--to", "onnx"}, filepath.Join(truncated, "model.safetensors")},
		{"header lies about dtype", []string{"-i", lyingDType, "-o", x, "--to", "onnx"}, filepath.Join(lyingDType, "model.safetensors")},
		{"config not matching weights", []string{"-i", wrongConfig, "-o", x, "--to", "onnx"}, `"model.layers.2.`},
		{"bad config.json", []string{"-i", badJSON, "-o", x, "--to", "onnx"}, filepath.Join(badJSON, "config.json")},
		{"config for ONNX mismatching", []string{"-i", fixture("qwen2_past"), "-o", x, "--config", filepath.Join(wrongConfig, "config.json")}, "model.layers.2.input_layernorm.weight: missing from the graph"},
		{"missing --config", []string{"-i", fixture("qwen2_past"), "-o", x, "--config", dir + "/none.json"}, "--config: "},
		{"existing output", []string{"-i", hf, "-o", existing, "--to", "onnx"}, existing + " exists and is not empty"},
		{"unknown --to", []string{"-i", hf, "-o", x, "--to", "gguf"}, `--to "gguf"`},
		{"bad --dtype", []string{"-i", fixture("qwen2_past"), "-o", x, "--dtype", "int4"}, `--dtype "int4"`},
		{"--dtype with --to onnx", []string{"-i", hf, "-o", x, "--to", "onnx", "--dtype", "bf16"}, "--dtype applies to safetensors"},
		{"--verify-tokens 0", []string{"-i", hf, "-o", x, "--to", "onnx", "--verify-tokens", "0"}, "--verify-tokens 0"},
		{"safetensors to safetensors", []string{"-i", hf, "-o", x}, "is a safetensors model already"},
		{"both formats in -i", []string{"-i", both, "-o", x}, "to convert the model.onnx beside it, give -i " + filepath.Join(both, "model.onnx")},
		{"onnx to onnx", []string{"-i", fixture("qwen2_past"), "-o", x, "--to", "onnx"}, "is ONNX already"},
		{"unknown flag", []string{"-i", hf, "-o", x, "--too", "onnx"}, "unknown flag: --too"},
		{"output is a file", []string{"-i", hf, "-o", filepath.Join(existing, "model.safetensors"), "--to", "onnx"}, "-o " + filepath.Join(existing, "model.safetensors") + " exists and is not a directory"},
		{"--force onto the input", []string{"-i", hf, "-o", hf, "--to", "onnx", "--force"}, "-o " + hf + " holds the input " + hf},
		{"--force onto the input's directory", []string{"-i", filepath.Join(existing, "..", "..", "hf"), "-o", dir, "--to", "onnx", "--force"}, "-o " + dir + " holds the input"},
		{"--verify-tokens past the model", []string{"-i", hf, "-o", x, "--to", "onnx", "--verify", "--verify-tokens", "5000"}, "--verify-tokens 5000: more than the model's max_position_embeddings 512"},
	} {
		o, err := convert(t, tc.args...)
		t.Logf("%s: %v", tc.name, err)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: convert %v: error %v, want it to mention %q\n%s", tc.name, tc.args, err, tc.want, o)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(existing, "model.safetensors")); string(b) != "mine" {
		t.Error("the existing output directory was overwritten")
	}
	if b, _ := os.ReadFile(filepath.Join(hf, "model.safetensors")); !bytes.Equal(b, st) {
		t.Error("a refused --force onto the input changed the input")
	}
	if entries, _ := os.ReadDir(outs); len(entries) != 1 {
		t.Errorf("failed conversions left %d entries in %s, want only existing/", len(entries), outs)
	}
	// --force replaces it, once the new one is complete.
	mustConvert(t, "-i", hf, "-o", existing, "--to", "onnx", "--force")
	if _, err := os.Stat(filepath.Join(existing, "model.safetensors")); !os.IsNotExist(err) {
		t.Error("--force kept the old directory's files")
	}
	if _, err := os.Stat(filepath.Join(existing, "model.onnx")); err != nil {
		t.Error(err)
	}
	if entries, _ := os.ReadDir(outs); len(entries) != 1 {
		t.Errorf("--force left %d entries in %s", len(entries), outs)
	}
}

// TestModes: the output directory and its files get the modes new ones get under the umask
// (as checkpoints.Save's do), not the owner-only modes of the temporary directory.
func TestModes(t *testing.T) {
	dir := t.TempDir()
	wantDir, wantFile := tooltest.UmaskModes(t, dir)
	mustConvert(t, "-i", fixture("qwen3_past_ext"), "-o", dir+"/hf", "--max-position-embeddings", "512")
	mustConvert(t, "-i", dir+"/hf", "-o", dir+"/onnx", "--to", "onnx")
	for _, out := range []string{"hf", "onnx"} {
		if entries, _ := os.ReadDir(filepath.Join(dir, out)); len(entries) < 3 {
			t.Fatalf("%s: %d files", out, len(entries))
		}
		tooltest.CheckModes(t, out, filepath.Join(dir, out), wantDir, wantFile)
	}
}

// TestHelp: --help shows the usage line, examples and every flag with its explanation.
func TestHelp(t *testing.T) {
	var out bytes.Buffer
	var o options
	fs := newFlags(&o, &out)
	fs.Usage()
	tooltest.CheckHelp(t, fs, out.String(), []string{"Usage: go run ./tools/convert -i INPUT -o OUTDIR", "Examples:", "--to onnx", "--verify"}, 12)
}

// TestBinary builds the program and runs it as a user would: exit status 0 with the summary
// on stdout, 1 with the error on stderr, 0 for --help.
func TestBinary(t *testing.T) {
	dir := t.TempDir()
	bin := tooltest.Build(t, ".", false)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "-i", "../../onnx/testdata/qwen2_past", "-o", filepath.Join(dir, "hf"), "--quiet")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil || !strings.Contains(stdout.String(), "converted ../../onnx/testdata/qwen2_past (onnx, qwen2, ") {
		t.Fatalf("%v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if _, _, err := checkpoints.Load(filepath.Join(dir, "hf")); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	cmd = exec.Command(bin, "-i", filepath.Join(dir, "missing"), "-o", filepath.Join(dir, "x"))
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !regexp.MustCompile(`(^|[\r\n]|ERROR )convert: -i `+regexp.QuoteMeta(filepath.Join(dir, "missing"))+`: `).MatchString(stderr.String()) {
		t.Fatalf("bad input: %v\n%s", err, stderr.String())
	}
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Usage: go run ./tools/convert") {
		t.Fatalf("--help: %v\n%s", err, out)
	}
}
