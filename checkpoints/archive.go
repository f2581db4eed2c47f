package checkpoints

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// An archive is one file for moving a checkpoint (a model directory, a step directory or a
// whole run directory) between machines: a tar stream compressed with zstd whose first entry,
// ManifestName, lists every file with its size and sha256. UnpackArchive checks each file
// against it, so a corrupted or tampered archive is refused with the name of the file at fault.

// ManifestName is the name of the manifest entry at the start of every archive.
const ManifestName = "MANIFEST.json"

// archiveFormat identifies the manifest.
const archiveFormat = "prolong-archive"

// MaxManifestBytes bounds the manifest entry; a larger one is treated as corruption.
const MaxManifestBytes = 16 << 20

// manifest is the content of MANIFEST.json.
type manifest struct {
	Format  string          `json:"format"`
	Version int             `json:"version"`
	Files   []manifestEntry `json:"files"`
}

// manifestEntry is one file of an archive: its slash-separated path relative to the archived
// directory, its size and its sha256 (hex).
type manifestEntry struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// PackArchive writes the regular files under dir (recursively; directories are implied,
// symbolic links and other special files are refused) to the archive file out, zstd-compressed,
// with a manifest of their sizes and sha256 digests. The archive is written atomically (temp
// file, fsync, rename). Files are stored in lexical order with fixed modes and times, so the
// same directory always gives the same archive.
func PackArchive(dir, out string) error {
	var files []manifestEntry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file (links and special files are not archived)", p)
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		d2, err := digestFile(p)
		if err != nil {
			return err
		}
		files = append(files, manifestEntry{Path: filepath.ToSlash(rel), Size: d2.Size, SHA256: d2.SHA256})
		return nil
	})
	if err != nil {
		return fmt.Errorf("pack archive %s: %w", dir, err)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	mb, err := json.MarshalIndent(manifest{Format: archiveFormat, Version: 1, Files: files}, "", "  ")
	if err != nil {
		return fmt.Errorf("pack archive %s: %w", dir, err)
	}
	return writeAtomic(out, func(w io.Writer) error {
		zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return err
		}
		tw := tar.NewWriter(zw)
		add := func(name string, size int64, body io.Reader) error {
			hdr := &tar.Header{Name: name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
			if err := tw.WriteHeader(hdr); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			n, err := io.Copy(tw, body)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if n != size {
				return fmt.Errorf("%s: changed while being archived (%d bytes, was %d)", name, n, size)
			}
			return nil
		}
		if err := add(ManifestName, int64(len(mb)), bytes.NewReader(mb)); err != nil {
			return err
		}
		for _, f := range files {
			fh, err := os.Open(filepath.Join(dir, filepath.FromSlash(f.Path)))
			if err != nil {
				return err
			}
			err = add(f.Path, f.Size, fh)
			fh.Close()
			if err != nil {
				return err
			}
		}
		if err := tw.Close(); err != nil {
			return err
		}
		return zw.Close()
	})
}

// parseManifest parses and checks a manifest: known format, relative slash-separated paths
// that stay inside the directory, no duplicates, sizes and digests well-formed.
func parseManifest(data []byte) (*manifest, error) {
	var m manifest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("bad JSON: %w", err)
	}
	if m.Format != archiveFormat || m.Version != 1 {
		return nil, fmt.Errorf("format %q version %d is not %q version 1", m.Format, m.Version, archiveFormat)
	}
	seen := map[string]bool{}
	for _, f := range m.Files {
		if err := checkArchivePath(f.Path); err != nil {
			return nil, err
		}
		if seen[f.Path] {
			return nil, fmt.Errorf("file %q is listed twice", f.Path)
		}
		seen[f.Path] = true
		if _, err := hex.DecodeString(f.SHA256); err != nil || len(f.SHA256) != 64 || f.Size < 0 {
			return nil, fmt.Errorf("file %q: bad size %d or sha256 %q", f.Path, f.Size, f.SHA256)
		}
	}
	// A file may not also be a directory of another file ("a" and "a/b").
	for p := range seen {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if seen[d] {
				return nil, fmt.Errorf("%q is both a file and the directory of %q", d, p)
			}
		}
	}
	return &m, nil
}

// checkArchivePath accepts a clean, relative, slash-separated path inside the directory.
func checkArchivePath(p string) error {
	if p == "" || p == ManifestName || path.IsAbs(p) || path.Clean(p) != p || p == "." || strings.HasPrefix(p, "../") ||
		p == ".." || strings.ContainsAny(p, "\\\x00") || filepath.IsAbs(filepath.FromSlash(p)) {
		return fmt.Errorf("file %q is not a clean relative path inside the directory", p)
	}
	return nil
}

// UnpackArchive extracts the archive file in into the directory out, which must not exist.
// Every file is checked against the manifest (listed, size, sha256), and nothing the manifest
// does not list is accepted; on any error, out is not created. Errors name the archive and the
// file at fault.
func UnpackArchive(in, out string) (err error) {
	out = filepath.Clean(out)
	if _, err := os.Lstat(out); err == nil {
		return fmt.Errorf("unpack %s: %s already exists", in, out)
	}
	fh, err := os.Open(in)
	if err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	defer fh.Close()
	err = ReplaceDir(out, "."+filepath.Base(out)+".tmp-", func(tmp string) error { return extract(fh, tmp) })
	if err != nil {
		return fmt.Errorf("unpack %s: %w", in, err)
	}
	return nil
}

// extract reads a compressed archive from r into the existing directory dst, verifying it.
func extract(r io.Reader, dst string) error {
	zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<30))
	if err != nil {
		return err
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	hdr, err := tr.Next()
	if err != nil {
		return fmt.Errorf("reading %s: %w", ManifestName, err)
	}
	if hdr.Name != ManifestName || hdr.Typeflag != tar.TypeReg || hdr.Size > MaxManifestBytes {
		return fmt.Errorf("the first entry is %q (%d bytes), not %s", hdr.Name, hdr.Size, ManifestName)
	}
	mb, err := io.ReadAll(tr)
	if err != nil {
		return fmt.Errorf("reading %s: %w", ManifestName, err)
	}
	m, err := parseManifest(mb)
	if err != nil {
		return fmt.Errorf("%s: %w", ManifestName, err)
	}
	want := map[string]manifestEntry{}
	for _, f := range m.Files {
		want[f.Path] = f
	}
	done := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("after %d of %d files: %w", len(done), len(want), err)
		}
		name := hdr.Name
		f, ok := want[name]
		switch {
		case hdr.Typeflag != tar.TypeReg:
			return fmt.Errorf("file %q: entry type %q is not a regular file", name, hdr.Typeflag)
		case !ok:
			return fmt.Errorf("file %q is not listed in %s", name, ManifestName)
		case done[name]:
			return fmt.Errorf("file %q appears twice", name)
		case hdr.Size != f.Size:
			return fmt.Errorf("file %q: %d bytes, %s says %d", name, hdr.Size, ManifestName, f.Size)
		}
		done[name] = true
		p := filepath.Join(dst, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := writeVerified(p, tr, f); err != nil {
			return err
		}
	}
	for _, f := range m.Files {
		if !done[f.Path] {
			return fmt.Errorf("file %q, listed in %s, is missing (truncated archive?)", f.Path, ManifestName)
		}
	}
	// Make the directories durable too (files were fsynced as they were written).
	return filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return syncDir(p)
	})
}

// writeVerified copies the entry to p, fsynced, and checks its sha256 against the manifest.
func writeVerified(p string, r io.Reader, f manifestEntry) error {
	out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("file %q: %w", f.Path, err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), r)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("file %q: %w", f.Path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != f.Size || got != f.SHA256 {
		return fmt.Errorf("file %q is corrupted: sha256 %s, %s says %s", f.Path, got, ManifestName, f.SHA256)
	}
	return nil
}
