package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestHelp: --help describes the program on stdout, names the command as a user runs it (not
// a temporary build path), and exits 0.
func TestHelp(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "bench")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "--help")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, stderr.String())
	}
	s := string(out)
	for _, want := range []string{"bench prints the engine's speed", "go run ./tools/bench", "--device"} {
		if !strings.Contains(s, want) {
			t.Errorf("--help output lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, bin) || strings.Contains(s, "go-build") || stderr.Len() > 0 {
		t.Errorf("--help names a build path or writes to stderr:\n%s\nstderr: %s", s, stderr.String())
	}
}
