// Command prolongedplot draws the seed-spread plots of docs/prolonged.md from the runs of
// scripts/prolonged.py: for each held-out set, pass@1 and pass@k (k the largest evaluated)
// against the step, and the policy entropy against the step, one curve per configuration (the
// mean over its seeds) with the band from the lowest to the highest seed drawn around it.
//
//	go run ./scripts/prolongedplot -out DIR -run 'plain GRPO=runs/a/seed1,runs/a/seed2' -run ...
//
// It writes DIR/passk_<set>_at<k>.png and DIR/entropy.png and prints each file's path.
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
	"strings"

	"github.com/prolong-rl/prolong/grpo"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
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
	flag.Var(&runs, "run", "a configuration: NAME=RUNDIR,RUNDIR,... (one run directory per seed, each with metrics.jsonl); repeat per configuration")
	flag.Parse()
	if err := run(runs, *out); err != nil {
		slog.Error("prolongedplot", "err", err)
		os.Exit(1)
	}
}

func run(runs []string, out string) error {
	if len(runs) == 0 {
		return errors.New("no -run given")
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
	files, err := drawAll(cfgs, out)
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

// drawAll draws every plot and returns the files written.
func drawAll(cfgs []config, out string) ([]string, error) {
	sets, maxK := heldSets(cfgs)
	var files []string
	for _, set := range sets {
		for _, k := range slices.Compact([]int{1, maxK}) {
			path := filepath.Join(out, fmt.Sprintf("passk_%s_at%d.png", strings.ReplaceAll(set, "/", "_"), k))
			title := fmt.Sprintf("Held-out %s: pass@%d", set, k)
			if err := draw(cfgs, passAt(set, k), title, fmt.Sprintf("pass@%d", k), path); err != nil {
				return files, err
			}
			files = append(files, path)
		}
	}
	entropy := func(r grpo.Record) (float64, bool) {
		return r.Entropy, r.Metrics != nil && r.Step > 0 && !r.SkippedNoSignal
	}
	path := filepath.Join(out, "entropy.png")
	if err := draw(cfgs, entropy, "Policy entropy (per token)", "nats", path); err != nil {
		return files, err
	}
	return append(files, path), nil
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

// spread is a configuration's curve: per step, the mean over seeds and the lowest and highest.
type spread struct {
	mean, lo, hi plotter.XYs
}

// seedSpread gathers m over a configuration's seeds, at the steps where any seed has it.
func seedSpread(c config, m metric) spread {
	byStep := map[int][]float64{}
	for _, recs := range c.runs {
		for _, r := range recs {
			if v, ok := m(r); ok {
				byStep[r.Step] = append(byStep[r.Step], v)
			}
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

// draw plots m for every configuration: the seed mean as a line, the seed range as a band.
func draw(cfgs []config, m metric, title, ylabel, path string) error {
	p := plot.New()
	p.Title.Text = title + " — mean over seeds, band: lowest to highest seed"
	p.X.Label.Text = "step"
	p.Y.Label.Text = ylabel
	p.Add(plotter.NewGrid())
	for i, c := range cfgs {
		s := seedSpread(c, m)
		if len(s.mean) == 0 {
			continue
		}
		col := plotutil.Color(i)
		if len(s.mean) > 1 {
			band := append(slices.Clone(s.hi), reversed(s.lo)...)
			poly, err := plotter.NewPolygon(band)
			if err != nil {
				return fmt.Errorf("%s: %s: %w", path, c.name, err)
			}
			r, g, b, _ := col.RGBA()
			poly.Color = color.NRGBA{R: uint8(r >> 8), G: uint8(g >> 8), B: uint8(b >> 8), A: 60}
			poly.LineStyle.Width = 0
			p.Add(poly)
		}
		line, points, err := plotter.NewLinePoints(s.mean)
		if err != nil {
			return fmt.Errorf("%s: %s: %w", path, c.name, err)
		}
		line.Color, points.Color = col, col
		line.Width = vg.Points(1.5)
		p.Add(line, points)
		p.Legend.Add(c.name, line)
	}
	p.Legend.Top = true
	return p.Save(8*vg.Inch, 4.5*vg.Inch, path)
}

func reversed(xy plotter.XYs) plotter.XYs {
	out := slices.Clone(xy)
	slices.Reverse(out)
	return out
}
