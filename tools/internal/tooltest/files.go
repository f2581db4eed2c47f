package tooltest

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
)

// SameFile fails t unless files a and b hold the same bytes.
func SameFile(t testing.TB, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		t.Errorf("%s and %s differ (%d and %d bytes)", a, b, len(x), len(y))
	}
}

// ThroughEngine loads the Hugging Face directory dir, builds its model on the CPU backend,
// and saves the model's weights back into a new directory under work, whose path it returns:
// what a tool wrote must come back byte for byte through the engine.
func ThroughEngine(t testing.TB, dir, work string) string {
	t.Helper()
	cfg, m := LoadModel(t, dir)
	hw, err := m.HostWeights()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(work, "engine")
	if err := checkpoints.Save(out, cfg, hw, checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	return out
}
