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

// TestPlotSeriesSkipEvalOnlyRow: the step-0 row (the starting model's evaluation, no training
// step) is no point of the reward, entropy, KL and length curves, and is one of the held-out
// accuracy curve.
func TestPlotSeriesSkipEvalOnlyRow(t *testing.T) {
	recs := []Record{{Metrics: &Metrics{Step: 0}, Eval: &EvalResult{Accuracy: 0.25}}}
	for s := 1; s <= 4; s++ {
		r := Record{Metrics: &Metrics{Step: s, RewardMean: 0.5, Entropy: 0.7, KL: 0.01, ResponseLenMean: 30}}
		if s == 4 {
			r.Eval = &EvalResult{Accuracy: 0.5}
		}
		recs = append(recs, r)
	}
	for _, s := range plotSeries {
		pts := seriesPoints(recs, s)
		if s.file == "heldout_accuracy.png" {
			if len(pts) != 2 || pts[0].X != 0 || pts[0].Y != 0.25 || pts[1].X != 4 {
				t.Errorf("%s: %v, want steps 0 and 4", s.file, pts)
			}
			continue
		}
		if len(pts) != 4 {
			t.Errorf("%s: %d points %v, want 4 (steps 1-4)", s.file, len(pts), pts)
		}
		for _, p := range pts {
			if p.X == 0 {
				t.Errorf("%s: a point at step 0 (%v), the evaluation-only row", s.file, p.Y)
			}
		}
	}
}
