package grpo

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/grpo/tbevents"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Record is one line of metrics.jsonl: a training step's metrics, and the held-out
// evaluation when one ran at that step.
type Record struct {
	*Metrics
	Eval *EvalResult `json:"eval,omitempty"`
}

// MetricsLog appends records to a JSON-lines file, one fsynced line per record, so a killed
// run loses at most the line being written; opened by OpenRunLog, it also writes each record's
// numbers to a TensorBoard event file.
type MetricsLog struct {
	f      *os.File
	events *tbevents.Writer // nil: no event file
}

// OpenMetricsLog opens (creating or appending to) path.
func OpenMetricsLog(path string) (*MetricsLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("metrics log: %w", err)
	}
	return &MetricsLog{f: f}, nil
}

// OpenRunLog opens the metrics log of the run directory dir (metrics.jsonl, appended to) and
// starts a new TensorBoard event file in dir for this session, whose first training step is
// first (TensorBoard then drops what a killed session logged for step first and later).
func OpenRunLog(dir string, first int) (*MetricsLog, error) {
	l, err := OpenMetricsLog(filepath.Join(dir, MetricsFile))
	if err != nil {
		return nil, err
	}
	if l.events, err = tbevents.Create(dir, int64(first)); err != nil {
		l.f.Close()
		return nil, fmt.Errorf("metrics log: %w", err)
	}
	return l, nil
}

// removeRunLog removes the metrics log of the run directory dir and its TensorBoard event files.
func removeRunLog(dir string) error {
	files, err := filepath.Glob(filepath.Join(dir, "events.out.tfevents.*"))
	files = append(files, filepath.Join(dir, MetricsFile))
	for _, f := range files {
		err = errors.Join(err, os.Remove(f))
	}
	return err
}

// Append writes one record, and its scalars to the event file (tensorBoardScalars).
func (l *MetricsLog) Append(r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("metrics log %s: %w", l.f.Name(), err)
	}
	if _, err := l.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("metrics log %s: %w", l.f.Name(), err)
	}
	if err := l.f.Sync(); err != nil || l.events == nil {
		return err
	}
	scalars, err := tensorBoardScalars(b)
	if err == nil {
		err = l.events.WriteScalars(int64(r.Step), scalars)
	}
	if err != nil {
		return fmt.Errorf("metrics log: step %d: %w", r.Step, err)
	}
	return nil
}

// Close closes the files.
func (l *MetricsLog) Close() error {
	err := l.f.Close()
	if l.events != nil {
		err = errors.Join(err, l.events.Close())
	}
	return err
}

// tensorBoardScalars are the numbers of a metrics.jsonl line, as TensorBoard scalars: every
// number (and boolean, as 1 or 0) in the JSON object but the step, tagged with its path, in key
// order: train/<key> for the step's metrics (train/reward_by_kind/<kind> inside a map),
// eval/<key> for the held-out evaluation (eval/pass_at_k/<k>). The step-0 line (the starting
// model's evaluation, no training step) gives only its eval/ scalars.
func tensorBoardScalars(line []byte) ([]tbevents.Scalar, error) {
	var row map[string]any
	if err := json.Unmarshal(line, &row); err != nil {
		return nil, err
	}
	ev, _ := row["eval"].(map[string]any)
	var out []tbevents.Scalar
	if step, _ := row["step"].(float64); step > 0 {
		delete(row, "step")
		delete(row, "eval")
		out = appendScalars(out, "train", row)
	}
	return appendScalars(out, "eval", ev), nil
}

// boolValue is 1 for true, 0 for false.
func boolValue(b bool) int {
	if b {
		return 1
	}
	return 0
}

// appendScalars appends the numeric leaves of v, tagged with their paths under tag.
func appendScalars(out []tbevents.Scalar, tag string, v any) []tbevents.Scalar {
	switch v := v.(type) {
	case float64:
		out = append(out, tbevents.Scalar{Tag: tag, Value: float32(v)})
	case bool:
		out = append(out, tbevents.Scalar{Tag: tag, Value: float32(boolValue(v))})
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			out = appendScalars(out, tag+"/"+k, v[k])
		}
	}
	return out
}

// legacyMetricNames maps the metrics.jsonl names of runs logged before the names became
// verl's to the current ones; ReadMetrics reads both.
var legacyMetricNames = map[string]string{
	"reward_mean":       "critic/score/mean",
	"response_len_mean": "response_length/mean",
	"response_len_max":  "response_length/max",
	"truncated_frac":    "response_length/clip_ratio",
	"pg_loss":           "actor/pg_loss",
	"kl":                "actor/kl_loss",
	"entropy":           "actor/entropy",
	"clip_frac_low":     "actor/pg_clipfrac_clip_low",
	"clip_frac_high":    "actor/pg_clipfrac_clip_high",
	"approx_kl":         "actor/ppo_kl",
	"grad_norm":         "actor/grad_norm",
	"lr":                "actor/lr",
	"rollout_s":         "timing_s/gen",
}

// parseMetricsLine parses one line of metrics.jsonl, written under the current names or the
// legacy ones. A legacy line's pg_clipfrac, which it did not log, is the sum of its parts.
func parseMetricsLine(line []byte) (Record, error) {
	var row map[string]json.RawMessage
	if err := json.Unmarshal(line, &row); err != nil {
		return Record{}, err
	}
	legacy := false
	for old, cur := range legacyMetricNames {
		if v, ok := row[old]; ok {
			if _, ok := row[cur]; !ok {
				row[cur] = v
			}
			delete(row, old)
			legacy = true
		}
	}
	if legacy {
		var err error
		if line, err = json.Marshal(row); err != nil {
			return Record{}, err
		}
	}
	var r Record
	if err := json.Unmarshal(line, &r); err != nil {
		return Record{}, err
	}
	if legacy && r.Metrics != nil {
		r.ClipFrac = r.ClipFracLow + r.ClipFracHigh
	}
	return r, nil
}

// ReadMetrics reads a metrics.jsonl file (of this version or an earlier one: see
// legacyMetricNames); a malformed line is an error naming its number.
func ReadMetrics(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		r, err := parseMetricsLine(sc.Bytes())
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, n, err)
		}
		if r.Metrics == nil {
			return nil, fmt.Errorf("%s line %d: no step metrics", path, n)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

// series is one plotted quantity.
type series struct {
	file, title, ylabel string
	get                 func(Record) (float64, bool)
	evalOnly            bool // drawn from the evaluations, step 0's included
}

var plotSeries = []series{
	{"reward.png", "Training reward (mean over rollouts)", "reward", func(r Record) (float64, bool) { return r.RewardMean, true }, false},
	{"heldout_accuracy.png", "Held-out accuracy (pass@1)", "accuracy", func(r Record) (float64, bool) {
		if r.Eval == nil {
			return 0, false
		}
		return r.Eval.Accuracy, true
	}, true},
	{"entropy.png", "Policy entropy (per token)", "nats", func(r Record) (float64, bool) { return r.Entropy, !r.SkippedNoSignal }, false},
	{"kl.png", "KL to the reference policy (k3)", "KL", func(r Record) (float64, bool) { return r.KL, !r.SkippedNoSignal }, false},
	{"response_length.png", "Response length (tokens, mean)", "tokens", func(r Record) (float64, bool) { return r.ResponseLenMean, true }, false},
}

// seriesPoints are the points of one curve: a (step, value) per record that has the value.
// A row without a training step (step 0, the starting model's evaluation) has only the
// held-out accuracy; the training curves leave it out instead of drawing it as 0.
func seriesPoints(recs []Record, s series) plotter.XYs {
	var pts plotter.XYs
	for _, r := range recs {
		if r.Step == 0 && !s.evalOnly {
			continue
		}
		if v, ok := s.get(r); ok {
			pts = append(pts, plotter.XY{X: float64(r.Step), Y: v})
		}
	}
	return pts
}

// PlotMetrics draws the run's curves (reward, held-out accuracy, entropy, KL, response length)
// as PNG files in dir, with the reference resets marked, and returns their paths.
func PlotMetrics(recs []Record, dir string) ([]string, error) {
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].Step < recs[j].Step })
	var resets []float64
	for _, r := range recs {
		if r.RefReset {
			resets = append(resets, float64(r.Step))
		}
	}
	var files []string
	for _, s := range plotSeries {
		pts := seriesPoints(recs, s)
		lo, hi := 1e300, -1e300
		for _, p := range pts {
			lo, hi = min(lo, p.Y), max(hi, p.Y)
		}
		if len(pts) == 0 {
			continue
		}
		p := plot.New()
		p.Title.Text = s.title
		p.X.Label.Text = "step"
		p.Y.Label.Text = s.ylabel
		line, err := plotter.NewLine(pts)
		if err != nil {
			return nil, fmt.Errorf("plot %s: %w", s.file, err)
		}
		line.Width = vg.Points(1.5)
		p.Add(line, plotter.NewGrid())
		if len(pts) < 40 {
			sc, err := plotter.NewScatter(pts)
			if err == nil {
				p.Add(sc)
			}
		}
		if hi <= lo {
			hi = lo + 1
		}
		for _, x := range resets {
			rl, err := plotter.NewLine(plotter.XYs{{X: x, Y: lo}, {X: x, Y: hi}})
			if err == nil {
				rl.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
				p.Add(rl)
			}
		}
		if len(resets) > 0 {
			p.Title.Text += " — dashed: reference resets"
		}
		path := filepath.Join(dir, s.file)
		err = checkpoints.WriteFileAtomic(path, 0o644, func(w io.Writer) error {
			c, err := p.WriterTo(7*vg.Inch, 4*vg.Inch, strings.TrimPrefix(filepath.Ext(s.file), "."))
			if err != nil {
				return err
			}
			_, err = c.WriteTo(w)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("plot: %w", err) // the error names path
		}
		files = append(files, path)
	}
	return files, nil
}
