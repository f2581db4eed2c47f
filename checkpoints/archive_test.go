package checkpoints

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// treeSnapshot maps every file under dir (recursively, slash paths) to its content.
func treeSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		snap[filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// TestArchiveRoundTrip packs a run directory (two steps, latest pointer) and unpacks it: the
// same files with the same bytes, loadable as a run; packing twice gives the same archive.
func TestArchiveRoundTrip(t *testing.T) {
	tmp := t.TempDir()
	run := filepath.Join(tmp, "run")
	for i, step := range []int64{1, 2} {
		if err := SaveRunState(run, sampleState(step, uint64(i+1)), SaveRunOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(run, "empty.txt"), nil, 0o644)
	arc := filepath.Join(tmp, "run.tar.zst")
	if err := PackArchive(run, arc); err != nil {
		t.Fatal(err)
	}
	arc2 := filepath.Join(tmp, "again.tar.zst")
	if err := PackArchive(run, arc2); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(arc)
	b, _ := os.ReadFile(arc2)
	if !bytes.Equal(a, b) {
		t.Fatal("two archives of the same directory differ")
	}
	out := filepath.Join(tmp, "unpacked", "run")
	if err := UnpackArchive(arc, out); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(treeSnapshot(t, out)) != fmt.Sprint(treeSnapshot(t, run)) {
		t.Fatal("unpacked tree differs from the packed one")
	}
	st, err := LoadRunState(out, Latest)
	if err != nil || st.Step != 2 {
		t.Fatalf("unpacked run: %v", err)
	}
	var raw int64
	for _, c := range treeSnapshot(t, run) {
		raw += int64(len(c))
	}
	t.Logf("archive %d bytes for %d bytes of files", len(a), raw)
	if err := UnpackArchive(arc, out); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("unpacking over an existing directory: %v", err)
	}
}

// buildArchive writes a compressed tar of the given entries (a manifest among them or not).
func buildArchive(t *testing.T, entries []tar.Header, bodies []string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := zstd.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for i, h := range entries {
		h.Size = int64(len(bodies[i]))
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		h.Mode = 0o644
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, bodies[i])
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func manifestOf(files map[string]string, lie map[string]string) string {
	var m manifest
	m.Format, m.Version = archiveFormat, 1
	for _, p := range sortedKeys(files) {
		c := files[p]
		if l, ok := lie[p]; ok {
			c = l
		}
		d := sha256Hex([]byte(c))
		m.Files = append(m.Files, manifestEntry{Path: p, Size: int64(len(files[p])), SHA256: d})
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// TestArchiveBadInput: corrupted, truncated, tampered and hostile archives are refused with an
// error naming the file at fault, and the output directory is not created.
func TestArchiveBadInput(t *testing.T) {
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "a.bin"), bytes.Repeat([]byte("weights "), 4000), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "b.json"), []byte(`{"x":1}`), 0o644)
	good := filepath.Join(tmp, "good.tar.zst")
	if err := PackArchive(src, good); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(good)
	files := map[string]string{"a.bin": "hello", "sub/b.json": "{}"}
	mf := manifestOf(files, nil)
	reg := func(names ...string) []tar.Header {
		var hs []tar.Header
		for _, n := range names {
			hs = append(hs, tar.Header{Name: n})
		}
		return hs
	}
	for _, tc := range []struct {
		name string
		data []byte
		want []string
	}{
		{"truncated", data[:len(data)/2], nil},
		{"flipped byte", func() []byte { d := bytes.Clone(data); d[len(d)/2] ^= 0x40; return d }(), nil},
		{"not zstd", []byte("PK\x03\x04 this is a zip"), nil},
		{"tampered file", buildArchive(t, reg(ManifestName, "a.bin", "sub/b.json"), []string{mf, "hellO", "{}"}), []string{`"a.bin"`, "corrupted"}},
		{"wrong digest", buildArchive(t, reg(ManifestName, "a.bin", "sub/b.json"), []string{manifestOf(files, map[string]string{"sub/b.json": "[]"}), "hello", "{}"}), []string{`"sub/b.json"`, "corrupted"}},
		{"missing file", buildArchive(t, reg(ManifestName, "a.bin"), []string{mf, "hello"}), []string{`"sub/b.json"`, "missing"}},
		{"unlisted file", buildArchive(t, reg(ManifestName, "a.bin", "sub/b.json", "evil.sh"), []string{mf, "hello", "{}", "x"}), []string{`"evil.sh"`, "not listed"}},
		{"no manifest", buildArchive(t, reg("a.bin"), []string{"hello"}), []string{ManifestName}},
		{"traversal", buildArchive(t, reg(ManifestName, "../x"), []string{manifestOf(map[string]string{"../x": "x"}, nil), "x"}), []string{`"../x"`}},
		{"absolute", buildArchive(t, reg(ManifestName, "/etc/x"), []string{manifestOf(map[string]string{"/etc/x": "x"}, nil), "x"}), []string{`"/etc/x"`}},
		{"symlink", buildArchive(t, []tar.Header{{Name: ManifestName}, {Name: "a.bin", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"}}, []string{manifestOf(map[string]string{"a.bin": ""}, nil), ""}), []string{`"a.bin"`, "regular"}},
	} {
		in := filepath.Join(tmp, "bad.tar.zst")
		os.WriteFile(in, tc.data, 0o644)
		out := filepath.Join(tmp, "out")
		err := UnpackArchive(in, out)
		wantErr(t, err, append([]string{in}, tc.want...)...)
		if _, serr := os.Stat(out); serr == nil {
			t.Fatalf("%s: output directory created", tc.name)
		}
		if entries, _ := os.ReadDir(tmp); len(entries) != 3 {
			t.Fatalf("%s: leftovers %v", tc.name, entries)
		}
	}
	// A symbolic link in the source directory is refused when packing.
	os.Symlink("a.bin", filepath.Join(src, "link"))
	wantErr(t, PackArchive(src, filepath.Join(tmp, "x.tar.zst")), "link", "not a regular file")
}

// FuzzParseManifest: arbitrary manifests never panic, and what parses names only clean
// relative paths.
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(manifestOf(map[string]string{"a": "1", "b/c": "2"}, nil)))
	f.Add([]byte(`{"format":"prolong-archive","version":1,"files":[{"path":"../a","size":1,"sha256":""}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseManifest(data)
		if err != nil {
			return
		}
		for _, e := range m.Files {
			if checkArchivePath(e.Path) != nil || strings.HasPrefix(filepath.Clean(filepath.FromSlash(e.Path)), "..") {
				t.Fatalf("manifest accepted %q", e.Path)
			}
		}
	})
}

// FuzzUnpackArchive: arbitrary archive bytes never panic and never leave an output directory
// unless they unpack completely.
func FuzzUnpackArchive(f *testing.F) {
	f.Add(buildArchive(&testing.T{}, []tar.Header{{Name: ManifestName}, {Name: "a"}}, []string{manifestOf(map[string]string{"a": "x"}, nil), "x"}))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Fuzz(func(t *testing.T, data []byte) {
		tmp := t.TempDir()
		in := filepath.Join(tmp, "in.tar.zst")
		os.WriteFile(in, data, 0o644)
		out := filepath.Join(tmp, "out")
		if err := UnpackArchive(in, out); err != nil {
			if _, serr := os.Stat(out); serr == nil {
				t.Fatal("failed unpack left its output directory")
			}
		}
	})
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
