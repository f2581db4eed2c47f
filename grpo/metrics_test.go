package grpo

import (
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMetricsLogAndPlots: records round-trip through metrics.jsonl, a malformed line is an
// error naming it, and every curve becomes a decodable PNG.
func TestMetricsLogAndPlots(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "metrics.jsonl")
	l, err := OpenMetricsLog(path)
	if err != nil {
		t.Fatal(err)
	}
	for s := 1; s <= 12; s++ {
		r := Record{Metrics: &Metrics{Step: s, RewardMean: float64(s) / 12, Entropy: 1 / float64(s), KL: 0.01 * float64(s%5),
			ResponseLenMean: 10 + float64(s), RefReset: s == 5}}
		if s%4 == 0 {
			r.Eval = &EvalResult{Accuracy: float64(s) / 20}
		}
		if err := l.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	recs, err := ReadMetrics(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 12 || recs[3].Eval == nil || recs[3].Eval.Accuracy != 0.2 || !recs[4].RefReset || recs[11].RewardMean != 1 {
		t.Fatalf("read back %d records: %+v", len(recs), recs[3])
	}
	files, err := PlotMetrics(recs, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 5 {
		t.Fatalf("plots %v, want 5", files)
	}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(fh)
		fh.Close()
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if b := img.Bounds(); b.Dx() < 300 || b.Dy() < 150 {
			t.Fatalf("%s: %v", f, b)
		}
	}
	os.WriteFile(path, []byte("{\"step\":1}\nnot json\n"), 0o644)
	if _, err := ReadMetrics(path); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("malformed line: %v", err)
	}
}
