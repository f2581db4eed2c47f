// Command prolongedplot draws the seed-spread plots of docs/prolonged.md from the runs of
// scripts/prolonged.py: for each held-out set, pass@1 and pass@k (k the largest evaluated)
// against the step; the policy entropy against the step; and for each training family (prompt
// kind), its entropy, its KL to the reference (where a configuration has a reference) and its
// mean response length against the step. Each plot has one curve per configuration (the mean
// over its seeds) with the band from the lowest to the highest seed drawn around it; with
// -smooth H, each seed's training curve is first averaged over the steps within H of each step.
//
//	go run ./scripts/prolongedplot -out DIR [-smooth 5] -run 'plain GRPO=runs/a/seed1,runs/a/seed2' -run ...
//
// It writes DIR/passk_<set>_at<k>.png, DIR/entropy.png and DIR/{entropy,kl,length}_<family>.png
// (a plot without any value is left out) and prints each file's path. -plots chooses the groups
// of plots drawn: passk, entropy and family (the default, for scripts/prolonged.py), timing (the
// step's wall time, DIR/step_time.png) and mismatch (the rollout/trainer mismatch KL,
// DIR/rollout_kl.png), which scripts/ablation.py draws for its rollout-server runs.
package main

import (
	"errors"
	"flag"
	"fmt"
	"image/color"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/prolong-rl/prolong/grpo"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// config is one configuration of the grid: its name and its seeds' metrics.
type config struct {
	name string
	runs [][]grpo.Record
}

// runFlags collects -run NAME=DIR,DIR,...
type runFlags []string

func (r *runFlags) String() string     { return strings.Join(*r, " ") }
func (r *runFlags) Set(v string) error { *r = append(*r, v); return nil }

func main() {
	var runs runFlags
	out := flag.String("out", ".", "directory for the PNG files")
	smooth := flag.Int("smooth", 0, "average each seed's training curves over the steps within this many steps of each step (0: none)")
	groups := flag.String("plots", "passk,entropy,family", "groups of plots to draw, comma-separated: "+strings.Join(plotGroups, ", "))
	flag.Var(&runs, "run", "a configuration: NAME=RUNDIR,RUNDIR,... (one run directory per seed, each with metrics.jsonl); repeat per configuration")
	flag.Parse()
	if err := run(runs, *out, *smooth, strings.Split(*groups, ",")); err != nil {
		slog.Error("prolongedplot", "err", err)
		os.Exit(1)
	}
}

// plotGroups are the groups of plots -plots chooses from.
var plotGroups = []string{"passk", "entropy", "family", "timing", "mismatch"}

func run(runs []string, out string, smooth int, groups []string) error {
	if len(runs) == 0 {
		return errors.New("no -run given")
	}
	for _, g := range groups {
		if !slices.Contains(plotGroups, g) {
			return fmt.Errorf("-plots: no group %q (want some of %s)", g, strings.Join(plotGroups, ", "))
		}
	}
	if smooth < 0 {
		return fmt.Errorf("-smooth %d: want 0 or more steps", smooth)
	}
	var cfgs []config
	for _, r := range runs {
		c, err := load(r)
		if err != nil {
			return err
		}
		cfgs = append(cfgs, c)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	files, err := drawAll(cfgs, out, smooth, groups)
	for _, f := range files {
		fmt.Println(f)
	}
	return err
}

// load reads one -run value's metrics.
func load(spec string) (config, error) {
	name, dirs, ok := strings.Cut(spec, "=")
	if !ok || name == "" || dirs == "" {
		return config{}, fmt.Errorf("-run %q: want NAME=RUNDIR,RUNDIR,...", spec)
	}
	c := config{name: name}
	for _, d := range strings.Split(dirs, ",") {
		recs, err := grpo.ReadMetrics(filepath.Join(d, grpo.MetricsFile))
		if err != nil {
			return c, fmt.Errorf("-run %s: %w", name, err)
		}
		c.runs = append(c.runs, recs)
	}
	return c, nil
}

// metric reads one value of a record; ok is false where the record has none.
type metric func(grpo.Record) (float64, bool)

// plotSpec is one plot: its group (of plotGroups), file name, title, y-axis label, metric, the
// half-width of the moving average over steps (0: none), and whether it is a fraction (its axis
// starts at 0).
type plotSpec struct {
	group, file, title, ylabel string
	m                          metric
	smooth                     int
	fraction                   bool
}

// drawAll draws every plot of the groups given that has a value and returns the files written.
func drawAll(cfgs []config, out string, smooth int, groups []string) ([]string, error) {
	var files []string
	for _, ps := range plotSpecs(cfgs, smooth) {
		if !slices.Contains(groups, ps.group) || !hasValue(cfgs, ps.m) {
			continue
		}
		path := filepath.Join(out, ps.file)
		if err := drawPlot(cfgs, ps, path); err != nil {
			return files, err
		}
		files = append(files, path)
	}
	return files, nil
}

// plotSpecs lists the plots: pass@1 and pass@k per held-out set, the entropy, per training
// family its entropy, KL to the reference and response length, the step's wall time and the
// rollout/trainer mismatch.
func plotSpecs(cfgs []config, smooth int) []plotSpec {
	sets, maxK := heldSets(cfgs)
	var specs []plotSpec
	for _, set := range sets {
		for _, k := range slices.Compact([]int{1, maxK}) {
			specs = append(specs, plotSpec{group: "passk", file: fmt.Sprintf("passk_%s_at%d.png", fileName(set), k),
				title: fmt.Sprintf("Held-out %s: pass@%d", set, k), ylabel: fmt.Sprintf("pass@%d", k), m: passAt(set, k), fraction: true})
		}
	}
	entropy := func(r grpo.Record) (float64, bool) {
		return r.Entropy, r.Metrics != nil && r.Step > 0 && !r.SkippedNoSignal
	}
	specs = append(specs, plotSpec{group: "entropy", file: "entropy.png", title: "Policy entropy (per token)", ylabel: "nats", m: entropy, smooth: smooth})
	for _, fam := range families(cfgs) {
		specs = append(specs,
			plotSpec{group: "family", file: "entropy_" + fileName(fam) + ".png", title: fam + ": policy entropy (per token)", ylabel: "nats",
				m: byKind(func(m *grpo.Metrics) map[string]float64 { return m.EntropyByKind }, fam), smooth: smooth},
			plotSpec{group: "family", file: "kl_" + fileName(fam) + ".png", title: fam + ": KL to the reference (per token)", ylabel: "KL estimate",
				m: byKind(func(m *grpo.Metrics) map[string]float64 { return m.KLByKind }, fam), smooth: smooth},
			plotSpec{group: "family", file: "length_" + fileName(fam) + ".png", title: fam + ": mean response length (training samples)", ylabel: "tokens",
				m: byKind(func(m *grpo.Metrics) map[string]float64 { return m.ResponseLenByKind }, fam), smooth: smooth})
	}
	trained := func(get func(*grpo.Metrics) float64) metric {
		return func(r grpo.Record) (float64, bool) {
			if r.Metrics == nil || r.Step == 0 {
				return 0, false
			}
			return get(r.Metrics), true
		}
	}
	specs = append(specs,
		plotSpec{group: "timing", file: "step_time.png", title: "Step wall time (timing_s/step: rollouts, update, weights out)", ylabel: "seconds",
			m: trained(func(m *grpo.Metrics) float64 { return m.StepSeconds }), smooth: smooth},
		plotSpec{group: "mismatch", file: "rollout_kl.png", title: "Rollout/trainer mismatch (rollout_corr/kl)", ylabel: "KL estimate",
			m: trained(func(m *grpo.Metrics) float64 { return m.RolloutKL }), smooth: smooth})
	return specs
}

// fileName makes a prompt kind ("arith/in") part of a file name ("arith_in").
func fileName(kind string) string { return strings.ReplaceAll(kind, "/", "_") }

// hasValue reports whether any run of any configuration has a value of m.
func hasValue(cfgs []config, m metric) bool {
	for _, c := range cfgs {
		for _, recs := range c.runs {
			for _, r := range recs {
				if _, ok := m(r); ok {
					return true
				}
			}
		}
	}
	return false
}

// families lists the training prompt kinds that any step's per-kind metrics name.
func families(cfgs []config) []string {
	kinds := map[string]bool{}
	for _, c := range cfgs {
		for _, recs := range c.runs {
			for _, r := range recs {
				if r.Metrics == nil {
					continue
				}
				for _, byKind := range []map[string]float64{r.EntropyByKind, r.KLByKind, r.ResponseLenByKind} {
					for k := range byKind {
						kinds[k] = true
					}
				}
			}
		}
	}
	return slices.Sorted(maps.Keys(kinds))
}

// byKind reads one kind's value of a per-kind training metric (absent at step 0, the
// evaluation before training).
func byKind(get func(*grpo.Metrics) map[string]float64, kind string) metric {
	return func(r grpo.Record) (float64, bool) {
		if r.Metrics == nil || r.Step == 0 {
			return 0, false
		}
		v, ok := get(r.Metrics)[kind]
		return v, ok
	}
}

// heldSets lists the held-out sets (prompt kinds) evaluated in any run, and the largest k.
func heldSets(cfgs []config) ([]string, int) {
	sets := map[string]bool{}
	maxK := 1
	for _, c := range cfgs {
		for _, recs := range c.runs {
			for _, r := range recs {
				if r.Eval == nil {
					continue
				}
				for set, byK := range r.Eval.PassAtKByKind {
					sets[set] = true
					maxK = max(maxK, slices.Max(slices.Collect(maps.Keys(byK))))
				}
			}
		}
	}
	return slices.Sorted(maps.Keys(sets)), maxK
}

// passAt reads pass@k of one held-out set.
func passAt(set string, k int) metric {
	return func(r grpo.Record) (float64, bool) {
		if r.Eval == nil {
			return 0, false
		}
		v, ok := r.Eval.PassAtKByKind[set][k]
		return v, ok
	}
}

// maxMarked is the most points of a curve drawn with a marker each (the evaluations; a
// curve of every training step is a line alone).
const maxMarked = 30

// spread is a configuration's curve: per step, the mean over seeds and the lowest and highest.
type spread struct {
	mean, lo, hi plotter.XYs
}

// point is one value of a metric at a step.
type point struct {
	step int
	v    float64
}

// seedSpread gathers m over a configuration's seeds, at the steps where any seed has it, each
// seed's values first averaged over the steps within half of each step.
func seedSpread(c config, m metric, half int) spread {
	byStep := map[int][]float64{}
	for _, recs := range c.runs {
		var pts []point
		for _, r := range recs {
			if v, ok := m(r); ok {
				pts = append(pts, point{r.Step, v})
			}
		}
		for _, p := range movingAverage(pts, half) {
			byStep[p.step] = append(byStep[p.step], p.v)
		}
	}
	var s spread
	for _, step := range slices.Sorted(maps.Keys(byStep)) {
		vs := byStep[step]
		sum := 0.0
		for _, v := range vs {
			sum += v
		}
		x := float64(step)
		s.mean = append(s.mean, plotter.XY{X: x, Y: sum / float64(len(vs))})
		s.lo = append(s.lo, plotter.XY{X: x, Y: slices.Min(vs)})
		s.hi = append(s.hi, plotter.XY{X: x, Y: slices.Max(vs)})
	}
	return s
}

// movingAverage replaces each point's value by the mean of the values at the steps within half
// of its step (pts in step order; half 0 leaves them as they are).
func movingAverage(pts []point, half int) []point {
	out := make([]point, len(pts))
	lo, hi, sum := 0, 0, 0.0 // pts[lo:hi] is the window, sum its values' sum
	for i, p := range pts {
		for hi < len(pts) && pts[hi].step <= p.step+half {
			sum += pts[hi].v
			hi++
		}
		for pts[lo].step < p.step-half {
			sum -= pts[lo].v
			lo++
		}
		out[i] = point{p.step, sum / float64(hi-lo)}
	}
	return out
}

// drawPlot plots ps for every configuration: the seed mean as a line, the seed range as a band,
// with the legend in two columns below the plot.
func drawPlot(cfgs []config, ps plotSpec, path string) error {
	p := plot.New()
	p.Title.Text = ps.title + " — mean over seeds, band: lowest to highest seed"
	if ps.smooth > 0 {
		p.Title.Text += fmt.Sprintf("\neach seed averaged over ±%d steps", ps.smooth)
	}
	p.Title.Padding = vg.Points(6)
	p.X.Label.Text = "step"
	p.Y.Label.Text = ps.ylabel
	p.X.Tick.Marker, p.Y.Tick.Marker = fourDigits{}, fourDigits{}
	p.Add(plotter.NewGrid())
	legends := [2]plot.Legend{plot.NewLegend(), plot.NewLegend()}
	for i, c := range cfgs {
		s := seedSpread(c, ps.m, ps.smooth)
		if len(s.mean) == 0 {
			continue
		}
		thumbs, err := curve(p, s, plotutil.Color(i))
		if err != nil {
			return fmt.Errorf("%s: %s: %w", path, c.name, err)
		}
		legends[2*i/len(cfgs)].Add(c.name, thumbs...)
	}
	if ps.fraction {
		p.Y.Min, p.Y.Max = 0, max(p.Y.Max, 0.1)
	}
	return save(p, legends, path)
}

// curve adds a configuration's spread to p in colour col: the band (where it has more than one
// step) and the mean, marked at each step where there are few; it returns the legend's thumbnails.
func curve(p *plot.Plot, s spread, col color.Color) ([]plot.Thumbnailer, error) {
	var thumbs []plot.Thumbnailer
	if len(s.mean) > 1 {
		poly, err := plotter.NewPolygon(append(slices.Clone(s.hi), reversed(s.lo)...))
		if err != nil {
			return nil, err
		}
		r, g, b, _ := col.RGBA()
		poly.Color = color.NRGBA{R: uint8(r >> 8), G: uint8(g >> 8), B: uint8(b >> 8), A: 60}
		poly.LineStyle.Width = 0
		p.Add(poly)
		thumbs = append(thumbs, poly)
	}
	line, err := plotter.NewLine(s.mean)
	if err != nil {
		return nil, err
	}
	line.Color = col
	line.Width = vg.Points(1.5)
	p.Add(line)
	if len(s.mean) <= maxMarked {
		points, err := plotter.NewScatter(s.mean)
		if err != nil {
			return nil, err
		}
		points.Color = col
		p.Add(points)
	}
	return append(thumbs, line), nil
}

// save writes p as a PNG at path with legends side by side in a strip below it.
func save(p *plot.Plot, legends [2]plot.Legend, path string) error {
	w, h := 8*vg.Inch, 5*vg.Inch
	c := vgimg.New(w, h)
	dc := draw.New(c)
	strip := legends[0].Rectangle(dc).Size().Y + vg.Points(12)
	p.Draw(draw.Crop(dc, 0, 0, strip, 0))
	for i, l := range legends {
		l.Top, l.Left = true, true
		l.Draw(draw.Crop(dc, vg.Length(i)*w/2+vg.Points(40), -(vg.Length(1-i) * w / 2), 0, -(h - strip + vg.Points(4))))
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: c}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}

// fourDigits labels gonum's default ticks with up to four significant digits (its own labels
// can repeat, "3.1 3.1 3.1", on a narrow range such as an entropy's).
type fourDigits struct{}

// Ticks implements plot.Ticker.
func (fourDigits) Ticks(min, max float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(min, max)
	for i, t := range ticks {
		if t.Label != "" {
			ticks[i].Label = strconv.FormatFloat(t.Value, 'g', 4, 64)
		}
	}
	return ticks
}

func reversed(xy plotter.XYs) plotter.XYs {
	out := slices.Clone(xy)
	slices.Reverse(out)
	return out
}
