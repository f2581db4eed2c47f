// Package hubtest is a local HTTP server that answers like huggingface.co, for tests of
// model downloads without a network: the revision API, resolve URLs (small files with ETag =
// git blob sha1; LFS files with a 302 to a storage URL, X-Linked-Etag = sha256 and
// X-Linked-Size), X-Repo-Commit, Range requests, and 401 for gated repositories without the
// token. It can cut a download off midway and announce a wrong sha256.
package hubtest

import (
	"bytes"
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

// Server answers like huggingface.co for a few repositories: the revision API, resolve URLs
// (small files with ETag = git blob sha1; LFS files with a 302 to a storage URL and
// X-Linked-Etag = sha256, X-Linked-Size), X-Repo-Commit, Range requests, and 401 for a gated
// repository without its token.
type Server struct {
	// URL is the server's address, the HF_ENDPOINT of a test.
	URL   string
	srv   *httptest.Server
	repos map[string]*Repo
	mu    sync.Mutex
	log   []string // "METHOD path range"
	// cutAfter, when positive, makes the next storage GET stop after that many bytes.
	cutAfter int
	// wrongSHA makes the announced sha256 of LFS files wrong.
	wrongSHA bool
}

// Repo is a model repository of the Server.
type Repo struct {
	// Commits maps revisions (branches, tags, commits themselves) to commits.
	Commits map[string]string
	// Files holds the files by name; those LFS names are served as LFS files.
	Files map[string][]byte
	LFS   map[string]bool
	// Gated repositories answer 401 without "Authorization: Bearer " + Token.
	Gated bool
}

// Token is the access token of gated repositories.
const Token = "hf_secret"

// New starts a Server (closed when the test ends) holding org/tiny (main and tag v1: config.json,
// a 64 KiB LFS model.safetensors, README.md and an LFS pytorch_model.bin) and the gated
// org/gated.
func New(t testing.TB) *Server {
	h := &Server{repos: map[string]*Repo{}}
	weights := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	commit := strings.Repeat("ab", 20)
	h.repos["org/tiny"] = &Repo{
		Commits: map[string]string{"main": commit, "v1": strings.Repeat("cd", 20), commit: commit},
		Files: map[string][]byte{"config.json": []byte(`{"model_type":"qwen2"}`), "model.safetensors": weights,
			"README.md": []byte("# tiny"), "pytorch_model.bin": []byte("not wanted")},
		LFS: map[string]bool{"model.safetensors": true, "pytorch_model.bin": true},
	}
	h.repos["org/tiny"].Commits[strings.Repeat("cd", 20)] = strings.Repeat("cd", 20)
	h.repos["org/gated"] = &Repo{Commits: map[string]string{"main": strings.Repeat("ef", 20), strings.Repeat("ef", 20): strings.Repeat("ef", 20)},
		Files: map[string][]byte{"config.json": []byte(`{}`)}, Gated: true}
	h.srv = httptest.NewServer(h)
	h.URL = h.srv.URL
	t.Cleanup(h.srv.Close)
	return h
}

// GitSHA1 is the git blob id of b: the ETag of a small file.
func GitSHA1(b []byte) string {
	s := sha1.Sum(append([]byte(fmt.Sprintf("blob %d\x00", len(b))), b...))
	return hex.EncodeToString(s[:])
}

// SHA256 is the hex sha256 of b: the ETag of an LFS file.
func SHA256(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// Requests lists the requests so far ("METHOD PATH RANGE") that start with prefix.
func (h *Server) Requests(prefix string) []string {
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

// ServeHTTP answers like huggingface.co.
func (h *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
		b := h.repos[repo].Files[file]
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
		commit, ok := fr.Commits[rev]
		if !ok {
			http.Error(w, "Revision Not Found", http.StatusNotFound)
			return
		}
		info := map[string]any{"id": repo, "sha": commit}
		var sib []map[string]string
		for f := range fr.Files {
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
	b, ok := fr.Files[file]
	commit, cok := fr.Commits[rev]
	if !ok || !cok {
		w.Header().Set("X-Error-Code", "EntryNotFound")
		http.Error(w, "Entry not found", http.StatusNotFound)
		return
	}
	w.Header().Set("X-Repo-Commit", commit)
	if fr.LFS[file] {
		s := SHA256(b)
		if wrong {
			s = SHA256([]byte("something else"))
		}
		w.Header().Set("X-Linked-Etag", `"`+s+`"`)
		w.Header().Set("X-Linked-Size", fmt.Sprint(len(b)))
		w.Header().Set("ETag", `"`+GitSHA1([]byte("pointer"))+`"`)
		http.Redirect(w, r, h.srv.URL+"/storage/"+repo+"@"+file, http.StatusFound)
		return
	}
	w.Header().Set("ETag", `"`+GitSHA1(b)+`"`)
	http.ServeContent(w, r, file, time.Time{}, bytes.NewReader(b))
}

func (h *Server) authorized(w http.ResponseWriter, r *http.Request, fr *Repo, ok bool) bool {
	if !ok {
		w.Header().Set("X-Error-Code", "RepoNotFound")
		http.Error(w, "Repository not found", http.StatusNotFound)
		return false
	}
	if fr.Gated && r.Header.Get("Authorization") != "Bearer "+Token {
		w.Header().Set("X-Error-Message", "Access to model "+r.URL.Path+" is restricted. You must have access to it and be authenticated to access it. Please log in.")
		http.Error(w, "gated", http.StatusUnauthorized)
		return false
	}
	return true
}

// Repo returns a repository of the Server (nil when none).
func (h *Server) Repo(name string) *Repo {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.repos[name]
}

// Add puts a repository on the Server.
func (h *Server) Add(name string, r *Repo) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.repos[name] = r
}

// CutNext makes the next storage download stop after n bytes (the connection is closed).
func (h *Server) CutNext(n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cutAfter = n
}

// AnnounceWrongSHA256 makes the server announce a wrong sha256 for every LFS file.
func (h *Server) AnnounceWrongSHA256() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.wrongSHA = true
}

// Close stops the server (the Hub becomes unreachable).
func (h *Server) Close() { h.srv.Close() }

// RepoFromDir is a repository holding the files of dir (*.safetensors as LFS files) on branch
// main, at a commit derived from their contents.
func RepoFromDir(dir string) (*Repo, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	r := &Repo{Files: map[string][]byte{}, LFS: map[string]bool{}}
	h := sha1.New()
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		r.Files[e.Name()] = b
		r.LFS[e.Name()] = strings.HasSuffix(e.Name(), ".safetensors")
		fmt.Fprintf(h, "%s %s\n", e.Name(), GitSHA1(b))
	}
	commit := hex.EncodeToString(h.Sum(nil))
	r.Commits = map[string]string{"main": commit, commit: commit}
	return r, nil
}
