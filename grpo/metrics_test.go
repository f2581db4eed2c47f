package grpo

import (
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"reflect"
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

// TestReadMetricsLegacyNames: a metrics.jsonl line of a run logged before the names became
// verl's (every name that changed, as that version wrote them) reads into the same fields as
// the current names; its pg_clipfrac, not logged then, is the sum of its two parts.
func TestReadMetricsLegacyNames(t *testing.T) {
	old := `{"step":7,"reward_mean":0.5,"accuracy":0.25,"reward_by_kind":{"math":0.5},"response_len_mean":12.5,` +
		`"response_len_max":24,"truncated_frac":0.125,"groups_kept":16,"groups_dropped":2,"sampling_rounds":2,` +
		`"loss":-0.01,"pg_loss":-0.02,"kl":0.003,"entropy":0.9,"clip_frac_low":0.01,"clip_frac_high":0.02,` +
		`"approx_kl":0.0004,"grad_norm":0.7,"lr":5e-05,"rollout_s":3.5,"train_s":2.5,"rollout_tok_per_s":100,` +
		`"train_tokens":4000,"train_tok_per_s":1600,"optimizer_updates":2,"eval":{"accuracy":0.5}}`
	want := Metrics{Step: 7, RewardMean: 0.5, Accuracy: 0.25, RewardByKind: map[string]float64{"math": 0.5},
		ResponseLenMean: 12.5, ResponseLenMax: 24, TruncatedFrac: 0.125, GroupsKept: 16, GroupsDropped: 2,
		SamplingRounds: 2, Loss: -0.01, PGLoss: -0.02, KL: 0.003, Entropy: 0.9, ClipFrac: 0.01 + 0.02,
		ClipFracLow: 0.01, ClipFracHigh: 0.02, ApproxKL: 0.0004, GradNorm: 0.7, LR: 5e-5, RolloutSeconds: 3.5,
		TrainSeconds: 2.5, RolloutTokensPS: 100, TrainTokens: 4000, TrainTokensPS: 1600, OptimizerUpdates: 2}
	path := filepath.Join(t.TempDir(), "metrics.jsonl")
	if err := os.WriteFile(path, []byte(`{"step":0,"eval":{"accuracy":0.25}}`+"\n"+old+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	recs, err := ReadMetrics(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || !reflect.DeepEqual(*recs[1].Metrics, want) || recs[1].Eval.Accuracy != 0.5 || recs[0].Eval.Accuracy != 0.25 {
		t.Errorf("legacy line read as\n%+v\nwant\n%+v", *recs[1].Metrics, want)
	}
}

// TestMetricsRoundTrip: every field of Metrics, each set to its own value, comes back from
// metrics.jsonl as written (no two fields share a JSON name, none is lost).
func TestMetricsRoundTrip(t *testing.T) {
	var m Metrics
	v := reflect.ValueOf(&m).Elem()
	for i := range v.NumField() {
		switch f := v.Field(i); f.Kind() {
		case reflect.Float64:
			f.SetFloat(float64(i) + 0.5)
		case reflect.Int:
			f.SetInt(int64(i) + 1)
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Map:
			f.Set(reflect.ValueOf(map[string]float64{"k": float64(i)}))
		default:
			t.Fatalf("field %s of kind %s: extend the test", v.Type().Field(i).Name, f.Kind())
		}
	}
	path := filepath.Join(t.TempDir(), "metrics.jsonl")
	l, err := OpenMetricsLog(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(l.Append(Record{Metrics: &m}), l.Close()); err != nil {
		t.Fatal(err)
	}
	recs, err := ReadMetrics(path)
	if err != nil || len(recs) != 1 || !reflect.DeepEqual(*recs[0].Metrics, m) {
		t.Errorf("read back %+v (%v), wrote %+v", recs, err, m)
	}
}
