// Package hub resolves Hugging Face model ids ("Qwen/Qwen2.5-0.5B-Instruct") to model
// directories: from the Hugging Face cache when the model is there, otherwise downloaded from
// the Hub into that cache, laid out exactly as huggingface_hub lays it out so that Python
// tools and this package share one cache:
//
//	$HF_HUB_CACHE/models--ORG--NAME/
//	    blobs/<etag>                      file contents: sha256 for LFS files, git sha1 otherwise
//	    blobs/<etag>.incomplete           a download in progress, resumed with a Range request
//	    refs/<revision>                   the commit a branch or tag pointed at
//	    snapshots/<commit>/<file>         relative symlinks to ../../blobs/<etag>
//	$HF_HUB_CACHE/.locks/models--ORG--NAME/<etag>.lock
//
// The environment is huggingface_hub's: HF_HUB_CACHE (or HF_HOME/hub, or
// ~/.cache/huggingface/hub), HF_ENDPOINT, HF_TOKEN (or the HF_HOME/token file) and
// HF_HUB_OFFLINE. Large (LFS) files are checked against their sha256 before they enter the
// cache; a download cut off midway is resumed, in the same call or the next one.
package hub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/sys/unix"
)

// DefaultEndpoint is the Hub's address; HF_ENDPOINT replaces it (a mirror, or a test server).
const DefaultEndpoint = "https://huggingface.co"

// DefaultPatterns are the files of a model repository that Download fetches: the configs,
// the safetensors weights (and their index), the tokenizer and chat template. Weights in other
// formats (.bin, .pth, .gguf, ONNX) are left on the Hub.
var DefaultPatterns = []string{"*.json", "*.safetensors", "merges.txt", "vocab.txt", "tokenizer.model", "*.jinja"}

// Options say where the cache is, where the Hub is and how to reach it.
type Options struct {
	// CacheDir is the hub cache directory (see CacheDir for the default).
	CacheDir string
	// Endpoint is the Hub's base URL (DefaultEndpoint when empty).
	Endpoint string
	// Token is sent as "Authorization: Bearer TOKEN" (gated and private repositories).
	Token string
	// Revision is a branch, tag or commit ("main" when empty); an id's "@REV" suffix wins.
	Revision string
	// Offline resolves from the cache only, never touching the network (HF_HUB_OFFLINE=1).
	Offline bool
	// Patterns select the repository's files to fetch (path.Match on the file name;
	// DefaultPatterns when nil).
	Patterns []string
	// Progress receives a progress bar per downloaded file (nil: none).
	Progress io.Writer
	// Client makes the requests (http.DefaultClient when nil).
	Client *http.Client
	// Retries is how many times a cut-off download is resumed within one call (3 when 0).
	Retries int
}

// FromEnv returns the Options huggingface_hub would use in this environment, with the
// progress bar on progress.
func FromEnv(progress io.Writer) Options {
	return Options{CacheDir: CacheDir(), Endpoint: strings.TrimRight(os.Getenv("HF_ENDPOINT"), "/"),
		Token: token(), Offline: truthy(os.Getenv("HF_HUB_OFFLINE")), Progress: progress}
}

// CacheDir is huggingface_hub's cache directory: $HF_HUB_CACHE, else $HF_HOME/hub, else
// $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
func CacheDir() string {
	if d := os.Getenv("HF_HUB_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("HUGGINGFACE_HUB_CACHE"); d != "" {
		return d
	}
	return filepath.Join(hfHome(), "hub")
}

func hfHome() string {
	if d := os.Getenv("HF_HOME"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "huggingface")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "huggingface")
}

// token is $HF_TOKEN, else the contents of $HF_TOKEN_PATH or $HF_HOME/token (what
// `huggingface-cli login` writes).
func token() string {
	if t := strings.TrimSpace(os.Getenv("HF_TOKEN")); t != "" {
		return t
	}
	p := os.Getenv("HF_TOKEN_PATH")
	if p == "" {
		p = filepath.Join(hfHome(), "token")
	}
	b, _ := os.ReadFile(p)
	return strings.TrimSpace(string(b))
}

func truthy(s string) bool {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "1", "ON", "YES", "TRUE":
		return true
	}
	return false
}

var (
	idRe     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$`)
	commitRe = regexp.MustCompile(`^[0-9a-f]{40}$`)
	sha256Re = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ParseID splits "ORG/NAME" or "ORG/NAME@REVISION" into the repository id and the revision
// ("" when none); ok is false for anything else (a path such as ./dir, /abs/dir or a/b/c).
func ParseID(s string) (repo, revision string, ok bool) {
	repo, revision, _ = strings.Cut(s, "@")
	if !idRe.MatchString(repo) || strings.Contains(repo, "..") || strings.HasSuffix(repo, ".onnx") {
		return "", "", false
	}
	if strings.ContainsAny(revision, `\`) || strings.Contains(revision, "..") {
		return "", "", false
	}
	return repo, revision, true
}

// RepoDir is the cache folder of a model repository: models--ORG--NAME.
func RepoDir(cache, repo string) string {
	return filepath.Join(cache, "models--"+strings.ReplaceAll(repo, "/", "--"))
}

// Download returns the snapshot directory of the model id ("ORG/NAME[@REVISION]") in the
// cache, downloading the files that Patterns select when they are not cached. Offline, or
// when the Hub cannot be reached, the cached snapshot of the revision is used if there is
// one. Errors name the repository, the file and the HTTP status; a 401 or 403 says the
// repository is gated or private and that HF_TOKEN is needed.
func Download(ctx context.Context, id string, opts Options) (string, error) {
	repo, rev, ok := ParseID(id)
	if !ok {
		return "", fmt.Errorf("%q is not a Hugging Face model id (ORG/NAME or ORG/NAME@REVISION)", id)
	}
	if rev == "" {
		rev = opts.Revision
	}
	if rev == "" {
		rev = "main"
	}
	if opts.CacheDir == "" {
		opts.CacheDir = CacheDir()
	}
	if opts.Endpoint == "" {
		opts.Endpoint = DefaultEndpoint
	}
	if opts.Patterns == nil {
		opts.Patterns = DefaultPatterns
	}
	if opts.Client == nil {
		opts.Client = http.DefaultClient
	}
	if opts.Retries == 0 {
		opts.Retries = 3
	}
	d := &downloader{opts: opts, repo: repo, rev: rev, dir: RepoDir(opts.CacheDir, repo)}
	if opts.Offline {
		snap, err := d.cached()
		if err != nil {
			return "", fmt.Errorf("%s: offline (HF_HUB_OFFLINE): %w", id, err)
		}
		return snap, nil
	}
	info, err := d.revisionInfo(ctx)
	var netErr *networkError
	if errors.As(err, &netErr) {
		if snap, cerr := d.cached(); cerr == nil {
			fmt.Fprintf(progressOr(opts.Progress), "hub: %s unreachable (%v); using the cached snapshot %s\n", opts.Endpoint, netErr.err, snap)
			return snap, nil
		}
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", id, err)
	}
	snap := filepath.Join(d.dir, "snapshots", info.SHA)
	for _, file := range info.files(opts.Patterns) {
		if err := d.fetch(ctx, info.SHA, file, snap); err != nil {
			return "", fmt.Errorf("%s: %s: %w", id, file, err)
		}
	}
	if rev != info.SHA {
		if err := writeRef(filepath.Join(d.dir, "refs", filepath.FromSlash(rev)), info.SHA); err != nil {
			return "", fmt.Errorf("%s: %w", id, err)
		}
	}
	if err := os.MkdirAll(snap, 0o755); err != nil {
		return "", err
	}
	return snap, nil
}

func progressOr(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

type downloader struct {
	opts      Options
	repo, rev string
	dir       string // models--ORG--NAME
}

// networkError is a failure to reach the Hub at all (as opposed to an HTTP error status).
type networkError struct{ err error }

func (e *networkError) Error() string { return e.err.Error() }
func (e *networkError) Unwrap() error { return e.err }

// cached returns the snapshot of the revision in the cache.
func (d *downloader) cached() (string, error) {
	commit := d.rev
	if !commitRe.MatchString(commit) {
		b, err := os.ReadFile(filepath.Join(d.dir, "refs", filepath.FromSlash(d.rev)))
		if err != nil {
			return "", fmt.Errorf("revision %q of %s is not in the cache %s", d.rev, d.repo, d.opts.CacheDir)
		}
		commit = strings.TrimSpace(string(b))
	}
	snap := filepath.Join(d.dir, "snapshots", commit)
	if st, err := os.Stat(snap); err != nil || !st.IsDir() {
		return "", fmt.Errorf("snapshot %s of %s is not in the cache %s", commit, d.repo, d.opts.CacheDir)
	}
	return snap, nil
}

// repoInfo is the part of GET /api/models/REPO/revision/REV that Download reads.
type repoInfo struct {
	SHA      string `json:"sha"`
	Siblings []struct {
		Name string `json:"rfilename"`
	} `json:"siblings"`
}

// files lists the repository's top-level files that match one of patterns.
func (r *repoInfo) files(patterns []string) []string {
	var out []string
	for _, s := range r.Siblings {
		if strings.Contains(s.Name, "/") || s.Name == "" || s.Name == "." || s.Name == ".." {
			continue
		}
		for _, p := range patterns {
			if ok, _ := path.Match(p, s.Name); ok {
				out = append(out, s.Name)
				break
			}
		}
	}
	return out
}

func (d *downloader) request(ctx context.Context, method, u string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "prolong-hub/1")
	if d.opts.Token != "" {
		req.Header.Set("Authorization", "Bearer "+d.opts.Token)
	}
	return req, nil
}

// statusError explains an HTTP error status of the Hub.
func (d *downloader) statusError(resp *http.Response, what string) error {
	msg := ""
	if resp.Header.Get("X-Error-Message") != "" {
		msg = ": " + resp.Header.Get("X-Error-Message")
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		hint := "set HF_TOKEN to a token with access (and accept the model's terms on its Hub page)"
		if d.opts.Token != "" {
			hint = "the token in HF_TOKEN has no access to it (accept the model's terms on its Hub page)"
		}
		return fmt.Errorf("%s: %s (%s%s): the repository is gated or private: %s", what, resp.Status, d.opts.Endpoint, msg, hint)
	case http.StatusNotFound:
		return fmt.Errorf("%s: %s%s: no such repository, revision %q or file", what, resp.Status, msg, d.rev)
	}
	return fmt.Errorf("%s: %s%s", what, resp.Status, msg)
}

func (d *downloader) revisionInfo(ctx context.Context) (*repoInfo, error) {
	u := fmt.Sprintf("%s/api/models/%s/revision/%s", d.opts.Endpoint, d.repo, url.PathEscape(d.rev))
	req, err := d.request(ctx, http.MethodGet, u)
	if err != nil {
		return nil, err
	}
	resp, err := d.opts.Client.Do(req)
	if err != nil {
		return nil, &networkError{err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, d.statusError(resp, "GET "+u)
	}
	var info repoInfo
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&info); err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if !commitRe.MatchString(info.SHA) {
		return nil, fmt.Errorf("GET %s: the answer has no commit sha (got %q)", u, info.SHA)
	}
	return &info, nil
}

// fileMeta is what a HEAD of a resolve URL tells about a file.
type fileMeta struct {
	etag     string // sha256 of an LFS file, git blob sha1 otherwise
	size     int64  // -1 when unknown
	location string // where to GET it
}

// head asks for a file's metadata as huggingface_hub does: HEAD on the resolve URL, following
// only redirects within the Hub (a renamed repository), reading X-Linked-Etag and
// X-Linked-Size (LFS files, answered with a redirect to the storage) or ETag and
// Content-Length.
func (d *downloader) head(ctx context.Context, commit, file string) (*fileMeta, error) {
	u := fmt.Sprintf("%s/%s/resolve/%s/%s", d.opts.Endpoint, d.repo, commit, escapePath(file))
	client := *d.opts.Client
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for range 10 {
		req, err := d.request(ctx, http.MethodHead, u)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept-Encoding", "identity")
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		resp.Body.Close()
		loc := resp.Header.Get("Location")
		if resp.StatusCode >= 300 && resp.StatusCode < 400 && loc != "" && resp.Header.Get("X-Linked-Etag") == "" {
			next, err := resp.Request.URL.Parse(loc)
			if err != nil {
				return nil, err
			}
			base, _ := url.Parse(d.opts.Endpoint)
			if next.Host == base.Host {
				u = next.String()
				continue
			}
		}
		if resp.StatusCode >= 400 {
			return nil, d.statusError(resp, "HEAD "+u)
		}
		m := &fileMeta{etag: resp.Header.Get("X-Linked-Etag"), size: -1, location: u}
		if m.etag == "" {
			m.etag = resp.Header.Get("ETag")
		}
		sz := resp.Header.Get("X-Linked-Size")
		if sz == "" && resp.StatusCode < 300 {
			sz = resp.Header.Get("Content-Length")
		}
		if n, err := strconv.ParseInt(sz, 10, 64); err == nil && n >= 0 {
			m.size = n
		}
		if loc != "" && resp.StatusCode >= 300 {
			next, err := resp.Request.URL.Parse(loc)
			if err != nil {
				return nil, err
			}
			m.location = next.String()
		}
		m.etag = strings.Trim(strings.TrimPrefix(m.etag, "W/"), `"`)
		if m.etag == "" || strings.ContainsAny(m.etag, `/\`) || m.etag == "." || m.etag == ".." {
			return nil, fmt.Errorf("HEAD %s: no usable ETag (got %q)", u, m.etag)
		}
		return m, nil
	}
	return nil, fmt.Errorf("HEAD %s: too many redirects", u)
}

func escapePath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}

// fetch puts file of commit into the snapshot snap: a symlink to its blob, downloaded (or
// resumed) unless the blob is cached already.
func (d *downloader) fetch(ctx context.Context, commit, file, snap string) error {
	link := filepath.Join(snap, filepath.FromSlash(file))
	if _, err := os.Stat(link); err == nil {
		return nil // cached: the link resolves
	}
	m, err := d.head(ctx, commit, file)
	if err != nil {
		return err
	}
	blob := filepath.Join(d.dir, "blobs", m.etag)
	if err := os.MkdirAll(filepath.Dir(blob), 0o755); err != nil {
		return err
	}
	if _, err := os.Stat(blob); err != nil {
		unlock, err := lock(filepath.Join(d.opts.CacheDir, ".locks", filepath.Base(d.dir), m.etag+".lock"))
		if err != nil {
			return err
		}
		defer unlock()
		if _, err := os.Stat(blob); err != nil { // another process may have finished it
			if err := d.download(ctx, file, m, blob); err != nil {
				return err
			}
		}
	}
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return err
	}
	rel, err := filepath.Rel(filepath.Dir(link), blob)
	if err != nil {
		return err
	}
	os.Remove(link) // a dangling link of an earlier, removed blob
	return os.Symlink(rel, link)
}

// lock takes huggingface_hub's lock file of a blob (an flock, as its filelock does).
func lock(p string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

// download writes the file into blob.incomplete, resuming what is there with a Range request
// (and again when the connection drops, up to Retries times), checks its size and, for an LFS
// file, its sha256, then renames it to blob.
func (d *downloader) download(ctx context.Context, file string, m *fileMeta, blob string) error {
	tmp := blob + ".incomplete"
	var bar *progressbar.ProgressBar
	if d.opts.Progress != nil {
		bar = progressbar.NewOptions64(m.size, progressbar.OptionSetWriter(d.opts.Progress),
			progressbar.OptionSetDescription("downloading "+file), progressbar.OptionShowBytes(true),
			progressbar.OptionShowCount(), progressbar.OptionUseIECUnits(true), progressbar.OptionSetWidth(20),
			progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish(),
			progressbar.OptionSetRenderBlankState(true))
		defer bar.Finish()
	}
	var lastErr error
	for attempt := 0; attempt <= d.opts.Retries; attempt++ {
		done, err := d.downloadOnce(ctx, m, tmp, bar)
		if err == nil && done {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var se *statusErr
		if errors.As(err, &se) {
			return se.err
		}
		lastErr = err
		if attempt == d.opts.Retries {
			return fmt.Errorf("download cut off %d times (the part is kept in %s and resumed next time): %w", attempt+1, tmp, lastErr)
		}
	}
	st, err := os.Stat(tmp)
	if err != nil {
		return err
	}
	if m.size >= 0 && st.Size() != m.size {
		os.Remove(tmp)
		return fmt.Errorf("downloaded %d bytes, the Hub announced %d (X-Linked-Size)", st.Size(), m.size)
	}
	if sha256Re.MatchString(m.etag) {
		got, err := fileSHA256(tmp)
		if err != nil {
			return err
		}
		if got != m.etag {
			os.Remove(tmp)
			return fmt.Errorf("sha256 mismatch: downloaded %s, the Hub announced %s (the file was discarded)", got, m.etag)
		}
	}
	return os.Rename(tmp, blob)
}

// statusErr marks an HTTP error status: not retried.
type statusErr struct{ err error }

func (e *statusErr) Error() string { return e.err.Error() }

// downloadOnce appends to tmp from its current size; done reports that the file is complete.
func (d *downloader) downloadOnce(ctx context.Context, m *fileMeta, tmp string, bar *progressbar.ProgressBar) (bool, error) {
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, err
	}
	have := st.Size()
	if m.size >= 0 && have > m.size { // not a prefix of this file
		if err := f.Truncate(0); err != nil {
			return false, err
		}
		have = 0
	}
	if bar != nil {
		bar.Reset()
		bar.Add64(have)
	}
	if m.size >= 0 && have == m.size {
		return true, nil
	}
	req, err := d.request(ctx, http.MethodGet, m.location)
	if err != nil {
		return false, err
	}
	if base, err := url.Parse(d.opts.Endpoint); err != nil || req.URL.Host != base.Host {
		req.Header.Del("Authorization") // the storage URL is signed: the token stays with the Hub
	}
	req.Header.Set("Accept-Encoding", "identity")
	if have > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
	}
	resp, err := d.opts.Client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
	case resp.StatusCode == http.StatusOK:
		if have > 0 { // the server ignored the Range: start over
			if err := f.Truncate(0); err != nil {
				return false, err
			}
			if bar != nil {
				bar.Reset()
			}
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		return false, f.Truncate(0)
	default:
		return false, &statusErr{d.statusError(resp, "GET "+m.location)}
	}
	var w io.Writer = f
	if bar != nil {
		w = io.MultiWriter(f, bar)
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return false, err
	}
	if err := f.Sync(); err != nil {
		return false, err
	}
	st, err = f.Stat()
	if err != nil {
		return false, err
	}
	if m.size >= 0 && st.Size() < m.size {
		return false, fmt.Errorf("the connection ended after %d of %d bytes", st.Size(), m.size)
	}
	return true, nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeRef records the commit a branch or tag resolved to, as huggingface_hub does.
func writeRef(p, commit string) error {
	if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == commit {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(commit), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}
