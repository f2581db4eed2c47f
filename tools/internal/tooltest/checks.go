package tooltest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/tools/internal/hffixture"
	"github.com/prolong-rl/prolong/tools/internal/modelio"
)

// HaveORT reports whether ONNX Runtime can be loaded; under PROLONG_REQUIRE_ORT=1 (CI) its
// absence fails the test.
func HaveORT(t testing.TB) bool {
	t.Helper()
	if err := modelio.InitORT(); err != nil {
		if os.Getenv("PROLONG_REQUIRE_ORT") == "1" {
			t.Fatalf("PROLONG_REQUIRE_ORT=1: %v", err)
		}
		t.Logf("ONNX Runtime unavailable: %v", err)
		return false
	}
	return true
}

// NeedORT skips the test without ONNX Runtime (fails under PROLONG_REQUIRE_ORT=1).
func NeedORT(t testing.TB) {
	t.Helper()
	if !HaveORT(t) {
		t.Skip("skipping: ONNX Runtime unavailable (run scripts/setup-ort.sh, or set ONNXRUNTIME_LIB)")
	}
}

// MaxDiff is max_i |a_i - b_i| and max_i |b_i|, for logits of the same length.
func MaxDiff(t testing.TB, a, b []float32) (d, scale float64) {
	t.Helper()
	if len(a) != len(b) || len(a) == 0 {
		t.Fatalf("%d and %d logits", len(a), len(b))
	}
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i])-float64(b[i])))
		scale = math.Max(scale, math.Abs(float64(b[i])))
	}
	return d, scale
}

// ReadJSON decodes the JSON file at path into v.
func ReadJSON(t testing.TB, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// RunDocs runs, from the repository root, the ```sh commands of the tool's page
// docs/<tool>.md in order (out/ pointed at a fresh temporary directory, which it returns),
// through run (the tool's arguments → its output). The page must hold want commands of the
// tool and nothing else. Without ONNX Runtime the --verify flags are left out (and the test
// says so); with it, each --verify run must print its result. The caller checks what the
// commands wrote.
func RunDocs(t *testing.T, tool string, want int, run func(args ...string) (string, error)) string {
	t.Helper()
	ort := HaveORT(t)
	page, err := os.ReadFile(filepath.Join("..", "..", "docs", tool+".md"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	cmds, others := modelio.DocCommands(string(page), tool, tmp)
	if len(others) > 0 || len(cmds) != want {
		t.Fatalf("docs/%s.md: %d %s commands (want %d), and commands the test cannot run: %q", tool, len(cmds), tool, want, others)
	}
	t.Chdir("../..")
	for _, args := range cmds {
		if !ort && slices.Contains(args, "--verify") {
			args = slices.DeleteFunc(slices.Clone(args), func(a string) bool { return a == "--verify" })
			t.Logf("no ONNX Runtime: running without --verify: %s", strings.Join(args, " "))
		}
		o, err := run(args...)
		if err != nil {
			t.Fatalf("docs/%s.md: go run ./tools/%s %s: %v\n%s", tool, tool, strings.Join(args, " "), err, o)
		}
		if ort && slices.Contains(args, "--verify") && !strings.Contains(o, "verify: max |logit difference|") {
			t.Errorf("--verify printed nothing:\n%s", o)
		}
	}
	return tmp
}

// EachHFFixture runs f as a subtest for every fixture model in every config.json form, with
// the fixture and a fresh directory holding its files (see hffixture.WriteDir).
func EachHFFixture(t *testing.T, f func(t *testing.T, fx *hffixture.Fixture, dir string)) {
	for _, name := range hffixture.Names {
		for _, form := range hffixture.Forms {
			t.Run(name+"/"+form, func(t *testing.T) {
				fx, err := hffixture.Load(name)
				if err != nil {
					t.Fatal(err)
				}
				dir := filepath.Join(t.TempDir(), name)
				if err := hffixture.WriteDir(dir, name, form); err != nil {
					t.Fatal(err)
				}
				f(t, fx, dir)
			})
		}
	}
}

// LoadModel loads the model directory dir into the engine (CPU backend, f32 weights); an
// error ends the test.
func LoadModel(t testing.TB, dir string) (*engine.Config, *engine.Model) {
	t.Helper()
	cfg, w, err := checkpoints.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := engine.NewModel(cfg, cpu.New(), w, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, m
}

// EngineMatchesFixture loads the model directory dir into the engine (CPU, f32) and checks
// its logits and greedy continuations against the fixture's PyTorch goldens (see
// hffixture.Fixture.Check): a mismatch is an error of the test naming what, the figure is
// logged. It returns dir's config.
func EngineMatchesFixture(t testing.TB, fx *hffixture.Fixture, dir, what string) *engine.Config {
	t.Helper()
	cfg, m := LoadModel(t, dir)
	d, err := fx.Check(cfg.VocabSize, hffixture.LogitsTolerance, func(seq []int32) ([]float32, error) {
		lg, err := m.Logits(context.Background(), [][]int32{seq})
		if err != nil {
			return nil, err
		}
		return lg[0], nil
	})
	if err != nil {
		t.Errorf("%s, in the engine: %v", what, err)
	}
	t.Logf("%s, in the engine, vs PyTorch: max |logit difference| %.3g", what, d)
	return cfg
}

// ORTMatchesFixture checks the logits and greedy continuations ONNX Runtime computes on the
// model file path against the fixture's PyTorch goldens, as EngineMatchesFixture does.
func ORTMatchesFixture(t testing.TB, fx *hffixture.Fixture, path, what string) {
	t.Helper()
	d, err := fx.Check(fx.VocabSize(), hffixture.LogitsTolerance, func(seq []int32) ([]float32, error) {
		lg, _, err := modelio.ORTLogits(path, seq)
		return lg, err
	})
	if err != nil {
		t.Errorf("%s in ONNX Runtime: %v", what, err)
	}
	t.Logf("%s in ONNX Runtime vs PyTorch: max |logit difference| %.3g", what, d)
}

// CheckHelp checks a tool's --help text: it holds each of want (the usage line, examples) and
// explains every flag of fs, of which there are at least minFlags.
func CheckHelp(t testing.TB, fs *pflag.FlagSet, help string, want []string, minFlags int) {
	t.Helper()
	for _, s := range want {
		if !strings.Contains(help, s) {
			t.Errorf("--help lacks %q", s)
		}
	}
	n := 0
	fs.VisitAll(func(f *pflag.Flag) {
		n++
		if f.Usage == "" || !strings.Contains(help, "--"+f.Name) || !strings.Contains(help, f.Usage) {
			t.Errorf("--help does not explain --%s", f.Name)
		}
	})
	if n < minFlags {
		t.Errorf("%d flags, want at least %d", n, minFlags)
	}
}

// UmaskModes returns the modes a new directory (made 0777) and a new file (made 0666) get
// under the process's umask, found by making them in a probe directory under dir.
func UmaskModes(t testing.TB, dir string) (wantDir, wantFile os.FileMode) {
	t.Helper()
	probe := filepath.Join(dir, "probe")
	if err := os.Mkdir(probe, 0o777); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(probe)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(probe, "f"))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	fst, err := os.Stat(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm(), fst.Mode().Perm()
}

// CheckModes checks that the output directory out and every file in it have the modes
// UmaskModes gave; what names the output in errors.
func CheckModes(t testing.TB, what, out string, wantDir, wantFile os.FileMode) {
	t.Helper()
	st, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != wantDir {
		t.Errorf("%s: the directory has mode %v, want %v", what, st.Mode().Perm(), wantDir)
	}
	entries, _ := os.ReadDir(out)
	if len(entries) == 0 {
		t.Errorf("%s: no files", what)
	}
	for _, e := range entries {
		if info, _ := e.Info(); info.Mode().Perm() != wantFile {
			t.Errorf("%s: %s has mode %v, want %v", what, e.Name(), info.Mode().Perm(), wantFile)
		}
	}
}

// ORTLogits runs the model file path in ONNX Runtime on ids and returns its logits; an error
// ends the test.
func ORTLogits(t testing.TB, path string, ids []int32) []float32 {
	t.Helper()
	lg, _, err := modelio.ORTLogits(path, ids)
	if err != nil {
		t.Fatalf("%s in ONNX Runtime: %v", path, err)
	}
	return lg
}

// Main is a tool's main function as its tests call it in process: arguments, stdout, stderr.
type Main func(args []string, stdout, stderr io.Writer) error

// Run runs the tool in process with args and --quiet (no progress bar) and returns what it
// wrote to stdout and stderr, and its error.
func (m Main) Run(args ...string) (string, error) {
	var out, errOut bytes.Buffer
	err := m(append(args, "--quiet"), &out, &errOut)
	return out.String() + errOut.String(), err
}

// Must is Run, where an error ends the test naming the tool and its arguments.
func (m Main) Must(t testing.TB, tool string, args ...string) string {
	t.Helper()
	out, err := m.Run(args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
	return out
}
