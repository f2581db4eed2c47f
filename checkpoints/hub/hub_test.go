package hub

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints/hub/hubtest"
)

func opts(h *hubtest.Server, cache string) Options {
	return Options{CacheDir: cache, Endpoint: h.URL}
}

var gitSHA1, sha = hubtest.GitSHA1, hubtest.SHA256

// TestDownloadLayout downloads a model into an empty cache: the selected files only, in
// huggingface_hub's layout (blobs by etag, refs/main, snapshots of relative symlinks); a
// second call downloads nothing.
func TestDownloadLayout(t *testing.T) {
	h := hubtest.New(t)
	cache := t.TempDir()
	var bar bytes.Buffer
	o := opts(h, cache)
	o.Progress = &bar
	snap, err := Download(context.Background(), "org/tiny", o)
	if err != nil {
		t.Fatal(err)
	}
	repo := filepath.Join(cache, "models--org--tiny")
	commit := strings.Repeat("ab", 20)
	if snap != filepath.Join(repo, "snapshots", commit) {
		t.Errorf("snapshot %s", snap)
	}
	if b, _ := os.ReadFile(filepath.Join(repo, "refs", "main")); string(b) != commit {
		t.Errorf("refs/main = %q, want %s", b, commit)
	}
	fr := h.Repo("org/tiny")
	for file, etag := range map[string]string{"config.json": gitSHA1(fr.Files["config.json"]), "model.safetensors": sha(fr.Files["model.safetensors"])} {
		link, err := os.Readlink(filepath.Join(snap, file))
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join("..", "..", "blobs", etag); link != want {
			t.Errorf("%s -> %s, want %s", file, link, want)
		}
		if b, _ := os.ReadFile(filepath.Join(snap, file)); !bytes.Equal(b, fr.Files[file]) {
			t.Errorf("%s: content differs", file)
		}
	}
	for _, file := range []string{"README.md", "pytorch_model.bin"} {
		if _, err := os.Lstat(filepath.Join(snap, file)); err == nil {
			t.Errorf("%s was downloaded", file)
		}
	}
	if !strings.Contains(bar.String(), "downloading model.safetensors") {
		t.Errorf("no progress bar: %q", bar.String())
	}
	if got := h.Requests("GET /storage/"); len(got) != 1 {
		t.Errorf("storage GETs %v", got)
	}
	if _, err := Download(context.Background(), "org/tiny", opts(h, cache)); err != nil {
		t.Fatal(err)
	}
	if got := h.Requests("GET /storage/"); len(got) != 1 {
		t.Errorf("the cached model was downloaded again: %v", got)
	}
	// A tag resolves to its own commit and ref.
	snap, err = Download(context.Background(), "org/tiny@v1", opts(h, cache))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(snap) != strings.Repeat("cd", 20) {
		t.Errorf("v1 snapshot %s", snap)
	}
	if b, _ := os.ReadFile(filepath.Join(repo, "refs", "v1")); string(b) != strings.Repeat("cd", 20) {
		t.Errorf("refs/v1 = %q", b)
	}
	if got := h.Requests("GET /storage/"); len(got) != 1 {
		t.Errorf("a blob already cached was downloaded again for v1: %v", got)
	}
}

// TestResume: a download cut off midway resumes with a Range request, in the same call and
// from a part left by an earlier (killed) process.
func TestResume(t *testing.T) {
	h := hubtest.New(t)
	cache := t.TempDir()
	h.CutNext(10000)
	snap, err := Download(context.Background(), "org/tiny", opts(h, cache))
	if err != nil {
		t.Fatal(err)
	}
	want := h.Repo("org/tiny").Files["model.safetensors"]
	if b, _ := os.ReadFile(filepath.Join(snap, "model.safetensors")); !bytes.Equal(b, want) {
		t.Fatal("resumed file differs")
	}
	if got := h.Requests("GET /storage/org/tiny@model.safetensors bytes=10000-"); len(got) != 1 {
		t.Errorf("no resume from byte 10000: %v", h.Requests("GET /storage/"))
	}

	cache2 := t.TempDir()
	blobs := filepath.Join(cache2, "models--org--tiny", "blobs")
	os.MkdirAll(blobs, 0o755)
	os.WriteFile(filepath.Join(blobs, sha(want)+".incomplete"), want[:30000], 0o644)
	if _, err := Download(context.Background(), "org/tiny", opts(h, cache2)); err != nil {
		t.Fatal(err)
	}
	if got := h.Requests("GET /storage/org/tiny@model.safetensors bytes=30000-"); len(got) != 1 {
		t.Errorf("the earlier part was not resumed: %v", h.Requests("GET /storage/"))
	}
	if _, err := os.Stat(filepath.Join(blobs, sha(want)+".incomplete")); err == nil {
		t.Error("the .incomplete file is left")
	}
}

// TestSHA256Mismatch: a large file whose content does not hash to the announced sha256 is
// refused and kept out of the cache.
func TestSHA256Mismatch(t *testing.T) {
	h := hubtest.New(t)
	h.AnnounceWrongSHA256()
	cache := t.TempDir()
	_, err := Download(context.Background(), "org/tiny", opts(h, cache))
	if err == nil || !strings.Contains(err.Error(), "sha256 mismatch") || !strings.Contains(err.Error(), "model.safetensors") {
		t.Fatalf("err = %v, want a sha256 mismatch naming model.safetensors", err)
	}
	blobs, _ := filepath.Glob(filepath.Join(cache, "models--org--tiny", "blobs", "*"))
	for _, b := range blobs {
		if fi, _ := os.Stat(b); fi.Size() == int64(len(h.Repo("org/tiny").Files["model.safetensors"])) {
			t.Errorf("the bad file entered the cache as %s", b)
		}
	}
}

// TestOffline: HF_HUB_OFFLINE uses the cache only (no request at all); a model not cached is
// an error that says so. Online with the Hub unreachable, the cached snapshot is used too.
func TestOffline(t *testing.T) {
	h := hubtest.New(t)
	cache := t.TempDir()
	snap, err := Download(context.Background(), "org/tiny", opts(h, cache))
	if err != nil {
		t.Fatal(err)
	}
	n := len(h.Requests(""))
	t.Setenv("HF_HUB_CACHE", cache)
	t.Setenv("HF_HUB_OFFLINE", "1")
	t.Setenv("HF_ENDPOINT", h.URL)
	o := FromEnv(nil)
	if !o.Offline || o.CacheDir != cache {
		t.Fatalf("FromEnv: %+v", o)
	}
	got, err := Download(context.Background(), "org/tiny", o)
	if err != nil || got != snap {
		t.Fatalf("offline: %s, %v", got, err)
	}
	if len(h.Requests("")) != n {
		t.Errorf("offline mode made requests: %v", h.Requests("")[n:])
	}
	if _, err := Download(context.Background(), "org/other", o); err == nil || !strings.Contains(err.Error(), "not in the cache") {
		t.Errorf("uncached model offline: %v", err)
	}
	h.Close()
	o.Offline = false
	if got, err := Download(context.Background(), "org/tiny", o); err != nil || got != snap {
		t.Errorf("Hub unreachable: %s, %v", got, err)
	}
}

// TestGated: a gated repository answers 401 without a token; the error says so and names
// HF_TOKEN; with the token it downloads.
func TestGated(t *testing.T) {
	h := hubtest.New(t)
	cache := t.TempDir()
	_, err := Download(context.Background(), "org/gated", opts(h, cache))
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "HF_TOKEN") || !strings.Contains(err.Error(), "gated") {
		t.Fatalf("err = %v", err)
	}
	o := opts(h, cache)
	o.Token = hubtest.Token
	if _, err := Download(context.Background(), "org/gated", o); err != nil {
		t.Fatal(err)
	}
	if _, err := Download(context.Background(), "org/missing", opts(h, cache)); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("missing repo: %v", err)
	}
	if _, err := Download(context.Background(), "org/tiny@nope", opts(h, cache)); err == nil || !strings.Contains(err.Error(), `revision "nope"`) {
		t.Errorf("missing revision: %v", err)
	}
}

func TestParseID(t *testing.T) {
	for _, tt := range []struct {
		in, repo, rev string
		ok            bool
	}{
		{"Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "", true},
		{"meta-llama/Llama-3.2-1B@main", "meta-llama/Llama-3.2-1B", "main", true},
		{"./dir/x", "", "", false}, {"/abs/x", "", "", false}, {"a/b/c", "", "", false},
		{"model.onnx", "", "", false}, {"runs/model.onnx", "", "", false}, {"../x", "", "", false},
		{"org/a..b", "", "", false}, {"", "", "", false},
	} {
		repo, rev, ok := ParseID(tt.in)
		if repo != tt.repo || rev != tt.rev || ok != tt.ok {
			t.Errorf("ParseID(%q) = %q, %q, %v", tt.in, repo, rev, ok)
		}
	}
}

func FuzzParseID(f *testing.F) {
	f.Add("Qwen/Qwen2.5-0.5B-Instruct@main")
	f.Add("../../etc")
	f.Fuzz(func(t *testing.T, s string) {
		repo, rev, ok := ParseID(s)
		if !ok {
			return
		}
		dir := RepoDir("/cache", repo)
		if filepath.Dir(dir) != "/cache" || strings.Contains(rev, "..") {
			t.Fatalf("%q escapes the cache: %s, revision %q", s, dir, rev)
		}
	})
}
