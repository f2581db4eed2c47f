package outdir

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
)

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	os.MkdirAll(filepath.Join(in, "sub"), 0o755)
	os.WriteFile(filepath.Join(in, "model.onnx"), []byte("x"), 0o644)
	os.MkdirAll(filepath.Join(dir, "empty"), 0o755)
	full := filepath.Join(dir, "full")
	os.MkdirAll(full, 0o755)
	os.WriteFile(filepath.Join(full, "a"), []byte("x"), 0o644)
	for _, tc := range []struct {
		name, in, out string
		force         bool
		want          string // "" for no error
	}{
		{"new", in, filepath.Join(dir, "new"), false, ""},
		{"new in a new parent", in, filepath.Join(dir, "a", "b"), false, ""},
		{"empty", in, filepath.Join(dir, "empty"), false, ""},
		{"full", in, full, false, full + " exists and is not empty"},
		{"full --force", in, full, true, ""},
		{"a file", in, filepath.Join(in, "model.onnx"), true, "-o " + filepath.Join(in, "model.onnx") + " exists and is not a directory"},
		{"the input --force", in, in, true, "-o " + in + " holds the input " + in},
		{"the input's parent --force", filepath.Join(in, "model.onnx"), dir, true, "holds the input"},
		{"the input, spelt otherwise", in, in + "/sub/..", true, "holds the input"},
		{"inside the input --force", in, filepath.Join(in, "sub"), false, ""},
		{"a sibling whose name extends the input's", in, in + "2", true, ""},
		{"a sibling named ..x", filepath.Join(dir, "..x"), filepath.Join(dir, "empty"), true, ""},
	} {
		err := Check(tc.in, tc.out, tc.force)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: Check(%s, %s, %v) = %v, want %q", tc.name, tc.in, tc.out, tc.force, err, tc.want)
		}
	}
}

// umaskModes are the modes a new directory and a new file get here.
func umaskModes(t *testing.T) (dir, file os.FileMode) {
	p := filepath.Join(t.TempDir(), "probe")
	if err := os.Mkdir(p, 0o777); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(p, "f"), os.O_CREATE|os.O_WRONLY, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	d, _ := os.Stat(p)
	st, _ := os.Stat(filepath.Join(p, "f"))
	return d.Mode().Perm(), st.Mode().Perm()
}

func TestShareable(t *testing.T) {
	wantDir, wantFile := umaskModes(t)
	tmp, err := os.MkdirTemp(t.TempDir(), ".out.tmp-")
	if err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(tmp, "sub"), 0o700)
	os.WriteFile(filepath.Join(tmp, "model.onnx"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(tmp, "sub", "f"), []byte("x"), 0o600)
	if err := Shareable(tmp); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{tmp: wantDir, tmp + "/sub": wantDir, tmp + "/model.onnx": wantFile, tmp + "/sub/f": wantFile} {
		if st, _ := os.Stat(path); st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), want)
		}
	}
	if _, err := os.Stat(filepath.Join(tmp, ".mode-probe")); !os.IsNotExist(err) {
		t.Error("the probe directory stayed")
	}
}

// names lists dir's entries.
func names(dir string) string {
	entries, _ := os.ReadDir(dir)
	var n []string
	for _, e := range entries {
		n = append(n, e.Name())
	}
	return strings.Join(n, " ")
}

func TestRemoveTemp(t *testing.T) {
	parent := t.TempDir()
	prefix := filepath.Join(parent, ".out.tmp-123-")
	for _, d := range []string{prefix + "9/a", prefix + "9.tmp-456/b", prefix + "9.tmp-456.old"} {
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "f"), []byte("x"), 0o644)
	}
	os.MkdirAll(filepath.Join(parent, ".out.tmp-1234-9"), 0o755) // another run's
	os.MkdirAll(filepath.Join(parent, "out"), 0o755)
	if !removeTemp(prefix) {
		t.Error("removeTemp says there was nothing to remove")
	}
	if got := names(parent); got != ".out.tmp-1234-9 out" {
		t.Errorf("left %q, want only another run's temporary and out", got)
	}
	if removeTemp(prefix) {
		t.Error("removeTemp says it removed something the second time")
	}
}

// TestWriteRemovesStale: Write removes the temporary names of runs whose lock file nobody
// holds (a killed run's), keeps those of a run that holds its lock (here this test, through
// another open file description), those without a lock file, and a dead run's .old while the
// output does not exist (it may be the previous output); a later Write, with the output in
// place, removes that .old too. The build works under a name of its own token, beside its
// lock file, and leaves neither behind.
func TestWriteRemovesStale(t *testing.T) {
	parent := t.TempDir()
	out := filepath.Join(parent, "out")
	mk := func(names ...string) {
		for _, n := range names {
			p := filepath.Join(parent, n)
			if strings.HasSuffix(n, ".lock") {
				os.WriteFile(p, nil, 0o600)
			} else {
				os.MkdirAll(filepath.Join(p, "sub"), 0o755)
			}
		}
	}
	mk(".out.tmp-111.lock", ".out.tmp-111-5", ".out.tmp-111-5.tmp-7", // dead
		".out.tmp-222.lock", ".out.tmp-222-5", ".out.tmp-222-5.tmp-7", // live
		".out.tmp-333",                            // no lock file
		".out.tmp-444.lock", ".out.tmp-444-5.old", // dead, cut off while swapping
		".other.tmp-555.lock", ".other.tmp-555-5") // another output's
	live, err := os.Open(filepath.Join(parent, ".out.tmp-222.lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := unix.Flock(int(live.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	kept := ".other.tmp-555-5 .other.tmp-555.lock .out.tmp-222-5 .out.tmp-222-5.tmp-7 .out.tmp-222.lock .out.tmp-333"
	old := " .out.tmp-444-5.old .out.tmp-444.lock"
	var during string
	build := func(tmp string) error {
		during = names(parent)
		return os.WriteFile(filepath.Join(tmp, "model.onnx"), []byte("x"), 0o644)
	}
	if err := Write(out, false, build); err != nil {
		t.Fatal(err)
	}
	// Sorted, this build's names (.out.tmp-T-N, .out.tmp-T.lock) come among the others.
	m := regexp.MustCompile(`\.out\.tmp-(\d+)-\d+ \.out\.tmp-(\d+)\.lock`).FindStringSubmatchIndex(during)
	if m == nil || during[m[2]:m[3]] != during[m[4]:m[5]] || strings.Join(strings.Fields(during[:m[0]]+during[m[1]:]), " ") != kept+old {
		t.Errorf("while building, %s held %q", parent, during)
	}
	if got := names(parent); got != kept+old+" out" {
		t.Errorf("after the first write, %s holds %q", parent, got)
	}
	if err := Write(out, true, build); err != nil {
		t.Fatal(err)
	}
	if got := names(parent); got != kept+" out" {
		t.Errorf("after the second write, %s holds %q", parent, got)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "model.onnx")); string(b) != "x" {
		t.Errorf("out/model.onnx = %q", b)
	}
}

func TestBytesAndWeightBytes(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, ".o.tmp-1")
	os.MkdirAll(dir+"/sub", 0o755)
	os.MkdirAll(dir+".tmp-2", 0o755)
	os.WriteFile(dir+"/a", make([]byte, 100), 0o644)
	os.WriteFile(dir+"/sub/b", make([]byte, 20), 0o644)
	os.WriteFile(dir+".tmp-2/c", make([]byte, 3), 0o644)
	os.WriteFile(filepath.Join(parent, "unrelated"), make([]byte, 1000), 0o644)
	if got := Bytes(dir); got != 123 {
		t.Errorf("Bytes = %d, want 100+20+3", got)
	}
	w := map[string]engine.HostTensor{"a": {Shape: []int{2, 3}, Data: make([]float32, 6)}, "b": {Shape: []int{5}, Data: make([]float32, 5)}}
	if got := WeightBytes(w, DTypeSize(checkpoints.BF16)); got != 22 {
		t.Errorf("WeightBytes bf16 = %d, want 22", got)
	}
	if got := WeightBytes(w, DTypeSize(checkpoints.F32)); got != 44 {
		t.Errorf("WeightBytes f32 = %d, want 44", got)
	}
}

// syncBuffer is a bytes.Buffer safe for the bar's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestProgress: the tensor count, then the bytes on disk as they grow, then a stage; a quiet
// Progress writes nothing.
func TestProgress(t *testing.T) {
	var out syncBuffer
	p := NewProgress(&out, false)
	p.Tensors(4)
	for range 2 {
		p.Tensor("x")
	}
	time.Sleep(150 * time.Millisecond) // past the bar's throttle, so the next one shows
	p.Tensor("x")
	p.Tensor("x")
	dir := t.TempDir()
	p.Writing(dir, "writing model.safetensors", 4<<20)
	os.WriteFile(filepath.Join(dir, "model.safetensors"), make([]byte, 1<<20), 0o644)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "25%") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	p.Stage("verifying in ONNX Runtime")
	p.Finish()
	got := out.String()
	for _, want := range []string{"checking tensors  75%", "(3/4)", "writing model.safetensors  25%", "1.0/4.0 MiB", "verifying in ONNX Runtime"} {
		if !strings.Contains(got, want) {
			t.Errorf("the bar never showed %q:\n%q", want, got)
		}
	}
	var quiet syncBuffer
	q := NewProgress(&quiet, true)
	q.Tensors(2)
	q.Tensor("x")
	q.Writing(dir, "w", 10)
	q.Stage("s")
	q.Finish()
	if quiet.String() != "" {
		t.Errorf("a quiet Progress wrote %q", quiet.String())
	}
}
