package modelio

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// setupORTLib is where scripts/setup-ort.sh puts ONNX Runtime's library (and where the tools
// look without ONNXRUNTIME_LIB).
func setupORTLib() string {
	cache := os.Getenv("PROLONG_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "prolong")
	}
	return filepath.Join(cache, "ort-1.24.1", "package", "bin", "napi-v6", "linux", "x64", "libonnxruntime.so.1")
}

// TestGuidesSetUpORT: docs/export.md and docs/convert.md give ORTSetup in a ```sh block before
// their first --verify command (which DocCommands hands to the tools' TestDocs), say what it
// needs, and the line works: run from the repository root by sh, it leaves ONNXRUNTIME_LIB
// naming the library scripts/setup-ort.sh fetched. The line runs only where the library is
// already in place (setup-ort.sh would otherwise download it); its absence fails under
// PROLONG_REQUIRE_ORT=1 and skips, saying so, otherwise.
func TestGuidesSetUpORT(t *testing.T) {
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ page, tool string }{{"docs/export.md", "export"}, {"docs/convert.md", "convert"}} {
		b, err := os.ReadFile(filepath.Join(root, tc.page))
		if err != nil {
			t.Fatal(err)
		}
		page := string(b)
		setup := strings.Index(page, "```sh\n"+ORTSetup+"\n")
		verify := strings.Index(page, "--verify\n")
		if setup < 0 || verify < 0 || setup > verify {
			t.Errorf("%s: %q at offset %d (want it opening a ```sh block), the first --verify command at %d: want the setup first", tc.page, ORTSetup, setup, verify)
		}
		prose := page[:max(setup, 0)]
		for _, want := range []string{"scripts/setup-ort.sh", "ONNXRUNTIME_LIB", "1.24", "cgo"} {
			if !strings.Contains(prose, want) {
				t.Errorf("%s: the text before the setup line does not mention %s", tc.page, want)
			}
		}
		cmds, others := DocCommands(page, tc.tool, t.TempDir())
		if len(others) > 0 || len(cmds) == 0 {
			t.Errorf("%s: DocCommands gives %d commands and others %q", tc.page, len(cmds), others)
		}
	}
	lib := setupORTLib()
	if _, err := os.Stat(lib); err != nil {
		if os.Getenv("PROLONG_REQUIRE_ORT") == "1" {
			t.Fatalf("PROLONG_REQUIRE_ORT=1 but scripts/setup-ort.sh has not fetched ONNX Runtime: %v", err)
		}
		t.Skipf("skipping the run of %q: %s is not there (scripts/setup-ort.sh would download it)", ORTSetup, lib)
	}
	cmd := exec.Command("sh", "-c", ORTSetup+` && printf '%s' "$ONNXRUNTIME_LIB"`)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "ONNXRUNTIME_LIB=")
	out, err := cmd.Output()
	if err != nil || string(out) != lib {
		t.Fatalf("sh -c %q: ONNXRUNTIME_LIB=%q (%v), want %s", ORTSetup, out, err, lib)
	}
}
