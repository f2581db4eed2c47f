package hub

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeHub answers like huggingface.co for a few repositories: the revision API, resolve URLs
// (small files with ETag = git blob sha1; LFS files with a 302 to a storage URL and
// X-Linked-Etag = sha256, X-Linked-Size), X-Repo-Commit, Range requests, and 401 for a gated
// repository without its token.
type fakeHub struct {
	srv   *httptest.Server
	repos map[string]*fakeRepo
	mu    sync.Mutex
	log   []string // "METHOD path range"
	// cutAfter, when positive, makes the next storage GET stop after that many bytes.
	cutAfter int
	// wrongSHA makes the announced sha256 of LFS files wrong.
	wrongSHA bool
}

type fakeRepo struct {
	commits map[string]string // revision -> commit
	files   map[string][]byte
	lfs     map[string]bool
	gated   bool
}

const testToken = "hf_secret"

func newFakeHub(t *testing.T) *fakeHub {
	h := &fakeHub{repos: map[string]*fakeRepo{}}
	weights := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	commit := strings.Repeat("ab", 20)
	h.repos["org/tiny"] = &fakeRepo{
		commits: map[string]string{"main": commit, "v1": strings.Repeat("cd", 20), commit: commit},
		files: map[string][]byte{"config.json": []byte(`{"model_type":"qwen2"}`), "model.safetensors": weights,
			"README.md": []byte("# tiny"), "pytorch_model.bin": []byte("not wanted")},
		lfs: map[string]bool{"model.safetensors": true, "pytorch_model.bin": true},
	}
	h.repos["org/tiny"].commits[strings.Repeat("cd", 20)] = strings.Repeat("cd", 20)
	h.repos["org/gated"] = &fakeRepo{commits: map[string]string{"main": strings.Repeat("ef", 20), strings.Repeat("ef", 20): strings.Repeat("ef", 20)},
		files: map[string][]byte{"config.json": []byte(`{}`)}, gated: true}
	h.srv = httptest.NewServer(http.HandlerFunc(h.serve))
	t.Cleanup(h.srv.Close)
	return h
}

func gitSHA1(b []byte) string {
	s := sha1.Sum(append([]byte(fmt.Sprintf("blob %d\x00", len(b))), b...))
	return hex.EncodeToString(s[:])
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func (h *fakeHub) requests(prefix string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, l := range h.log {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

func (h *fakeHub) serve(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.log = append(h.log, strings.TrimSpace(r.Method+" "+r.URL.Path+" "+r.Header.Get("Range")))
	cut, wrong := h.cutAfter, h.wrongSHA
	if strings.HasPrefix(r.URL.Path, "/storage/") && r.Method == http.MethodGet {
		h.cutAfter = 0
	}
	h.mu.Unlock()
	if rest, ok := strings.CutPrefix(r.URL.Path, "/storage/"); ok {
		// Signed storage URLs: no Authorization needed (and none must leak there).
		repo, file, _ := strings.Cut(rest, "@")
		b := h.repos[repo].files[file]
		if cut > 0 && r.Header.Get("Range") == "" {
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			w.WriteHeader(http.StatusOK)
			w.Write(b[:cut])
			w.(http.Flusher).Flush()
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		http.ServeContent(w, r, file, time.Time{}, bytes.NewReader(b))
		return
	}
	if rest, ok := strings.CutPrefix(r.URL.Path, "/api/models/"); ok {
		i := strings.Index(rest, "/revision/")
		repo, rev := rest[:i], rest[i+len("/revision/"):]
		fr, ok := h.repos[repo]
		if !h.authorized(w, r, fr, ok) {
			return
		}
		commit, ok := fr.commits[rev]
		if !ok {
			http.Error(w, "Revision Not Found", http.StatusNotFound)
			return
		}
		info := map[string]any{"id": repo, "sha": commit}
		var sib []map[string]string
		for f := range fr.files {
			sib = append(sib, map[string]string{"rfilename": f})
		}
		info["siblings"] = sib
		json.NewEncoder(w).Encode(info)
		return
	}
	// /ORG/NAME/resolve/REV/FILE
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 5)
	if len(parts) != 5 || parts[2] != "resolve" {
		http.NotFound(w, r)
		return
	}
	repo, rev, file := parts[0]+"/"+parts[1], parts[3], parts[4]
	fr, ok := h.repos[repo]
	if !h.authorized(w, r, fr, ok) {
		return
	}
	b, ok := fr.files[file]
	commit, cok := fr.commits[rev]
	if !ok || !cok {
		w.Header().Set("X-Error-Code", "EntryNotFound")
		http.Error(w, "Entry not found", http.StatusNotFound)
		return
	}
	w.Header().Set("X-Repo-Commit", commit)
	if fr.lfs[file] {
		s := sha(b)
		if wrong {
			s = sha([]byte("something else"))
		}
		w.Header().Set("X-Linked-Etag", `"`+s+`"`)
		w.Header().Set("X-Linked-Size", fmt.Sprint(len(b)))
		w.Header().Set("ETag", `"`+gitSHA1([]byte("pointer"))+`"`)
		http.Redirect(w, r, h.srv.URL+"/storage/"+repo+"@"+file, http.StatusFound)
		return
	}
	w.Header().Set("ETag", `"`+gitSHA1(b)+`"`)
	http.ServeContent(w, r, file, time.Time{}, bytes.NewReader(b))
}

func (h *fakeHub) authorized(w http.ResponseWriter, r *http.Request, fr *fakeRepo, ok bool) bool {
	if !ok {
		w.Header().Set("X-Error-Code", "RepoNotFound")
		http.Error(w, "Repository not found", http.StatusNotFound)
		return false
	}
	if fr.gated && r.Header.Get("Authorization") != "Bearer "+testToken {
		w.Header().Set("X-Error-Message", "Access to model "+r.URL.Path+" is restricted. You must have access to it and be authenticated to access it. Please log in.")
		http.Error(w, "gated", http.StatusUnauthorized)
		return false
	}
	return true
}

func (h *fakeHub) opts(cache string) Options {
	return Options{CacheDir: cache, Endpoint: h.srv.URL}
}

// TestDownloadLayout downloads a model into an empty cache: the selected files only, in
// huggingface_hub's layout (blobs by etag, refs/main, snapshots of relative symlinks); a
// second call downloads nothing.
func TestDownloadLayout(t *testing.T) {
	h := newFakeHub(t)
	cache := t.TempDir()
	var bar bytes.Buffer
	o := h.opts(cache)
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
	fr := h.repos["org/tiny"]
	for file, etag := range map[string]string{"config.json": gitSHA1(fr.files["config.json"]), "model.safetensors": sha(fr.files["model.safetensors"])} {
		link, err := os.Readlink(filepath.Join(snap, file))
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join("..", "..", "blobs", etag); link != want {
			t.Errorf("%s -> %s, want %s", file, link, want)
		}
		if b, _ := os.ReadFile(filepath.Join(snap, file)); !bytes.Equal(b, fr.files[file]) {
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
	if got := h.requests("GET /storage/"); len(got) != 1 {
		t.Errorf("storage GETs %v", got)
	}
	if _, err := Download(context.Background(), "org/tiny", h.opts(cache)); err != nil {
		t.Fatal(err)
	}
	if got := h.requests("GET /storage/"); len(got) != 1 {
		t.Errorf("the cached model was downloaded again: %v", got)
	}
	// A tag resolves to its own commit and ref.
	snap, err = Download(context.Background(), "org/tiny@v1", h.opts(cache))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(snap) != strings.Repeat("cd", 20) {
		t.Errorf("v1 snapshot %s", snap)
	}
	if b, _ := os.ReadFile(filepath.Join(repo, "refs", "v1")); string(b) != strings.Repeat("cd", 20) {
		t.Errorf("refs/v1 = %q", b)
	}
	if got := h.requests("GET /storage/"); len(got) != 1 {
		t.Errorf("a blob already cached was downloaded again for v1: %v", got)
	}
}

// TestResume: a download cut off midway resumes with a Range request, in the same call and
// from a part left by an earlier (killed) process.
func TestResume(t *testing.T) {
	h := newFakeHub(t)
	cache := t.TempDir()
	h.cutAfter = 10000
	snap, err := Download(context.Background(), "org/tiny", h.opts(cache))
	if err != nil {
		t.Fatal(err)
	}
	want := h.repos["org/tiny"].files["model.safetensors"]
	if b, _ := os.ReadFile(filepath.Join(snap, "model.safetensors")); !bytes.Equal(b, want) {
		t.Fatal("resumed file differs")
	}
	if got := h.requests("GET /storage/org/tiny@model.safetensors bytes=10000-"); len(got) != 1 {
		t.Errorf("no resume from byte 10000: %v", h.requests("GET /storage/"))
	}

	cache2 := t.TempDir()
	blobs := filepath.Join(cache2, "models--org--tiny", "blobs")
	os.MkdirAll(blobs, 0o755)
	os.WriteFile(filepath.Join(blobs, sha(want)+".incomplete"), want[:30000], 0o644)
	if _, err := Download(context.Background(), "org/tiny", h.opts(cache2)); err != nil {
		t.Fatal(err)
	}
	if got := h.requests("GET /storage/org/tiny@model.safetensors bytes=30000-"); len(got) != 1 {
		t.Errorf("the earlier part was not resumed: %v", h.requests("GET /storage/"))
	}
	if _, err := os.Stat(filepath.Join(blobs, sha(want)+".incomplete")); err == nil {
		t.Error("the .incomplete file is left")
	}
}

// TestSHA256Mismatch: a large file whose content does not hash to the announced sha256 is
// refused and kept out of the cache.
func TestSHA256Mismatch(t *testing.T) {
	h := newFakeHub(t)
	h.wrongSHA = true
	cache := t.TempDir()
	_, err := Download(context.Background(), "org/tiny", h.opts(cache))
	if err == nil || !strings.Contains(err.Error(), "sha256 mismatch") || !strings.Contains(err.Error(), "model.safetensors") {
		t.Fatalf("err = %v, want a sha256 mismatch naming model.safetensors", err)
	}
	blobs, _ := filepath.Glob(filepath.Join(cache, "models--org--tiny", "blobs", "*"))
	for _, b := range blobs {
		if fi, _ := os.Stat(b); fi.Size() == int64(len(h.repos["org/tiny"].files["model.safetensors"])) {
			t.Errorf("the bad file entered the cache as %s", b)
		}
	}
}

// TestOffline: HF_HUB_OFFLINE uses the cache only (no request at all); a model not cached is
// an error that says so. Online with the Hub unreachable, the cached snapshot is used too.
func TestOffline(t *testing.T) {
	h := newFakeHub(t)
	cache := t.TempDir()
	snap, err := Download(context.Background(), "org/tiny", h.opts(cache))
	if err != nil {
		t.Fatal(err)
	}
	n := len(h.requests(""))
	t.Setenv("HF_HUB_CACHE", cache)
	t.Setenv("HF_HUB_OFFLINE", "1")
	t.Setenv("HF_ENDPOINT", h.srv.URL)
	o := FromEnv(nil)
	if !o.Offline || o.CacheDir != cache {
		t.Fatalf("FromEnv: %+v", o)
	}
	got, err := Download(context.Background(), "org/tiny", o)
	if err != nil || got != snap {
		t.Fatalf("offline: %s, %v", got, err)
	}
	if len(h.requests("")) != n {
		t.Errorf("offline mode made requests: %v", h.requests("")[n:])
	}
	if _, err := Download(context.Background(), "org/other", o); err == nil || !strings.Contains(err.Error(), "not in the cache") {
		t.Errorf("uncached model offline: %v", err)
	}
	h.srv.Close()
	o.Offline = false
	if got, err := Download(context.Background(), "org/tiny", o); err != nil || got != snap {
		t.Errorf("Hub unreachable: %s, %v", got, err)
	}
}

// TestGated: a gated repository answers 401 without a token; the error says so and names
// HF_TOKEN; with the token it downloads.
func TestGated(t *testing.T) {
	h := newFakeHub(t)
	cache := t.TempDir()
	_, err := Download(context.Background(), "org/gated", h.opts(cache))
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "HF_TOKEN") || !strings.Contains(err.Error(), "gated") {
		t.Fatalf("err = %v", err)
	}
	o := h.opts(cache)
	o.Token = testToken
	if _, err := Download(context.Background(), "org/gated", o); err != nil {
		t.Fatal(err)
	}
	if _, err := Download(context.Background(), "org/missing", h.opts(cache)); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("missing repo: %v", err)
	}
	if _, err := Download(context.Background(), "org/tiny@nope", h.opts(cache)); err == nil || !strings.Contains(err.Error(), `revision "nope"`) {
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
