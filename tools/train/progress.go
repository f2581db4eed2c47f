package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress follows long work: a progress bar on a terminal, else (stderr redirected to a file)
// a plain log line every tenth of the work and at least every plainEvery, so that a log file
// holds a readable line per period rather than a bar's redraw frames. --quiet shows neither.
type progress struct {
	bar        *progressbar.ProgressBar // nil: plain lines (or quiet)
	quiet      bool
	what       string
	n, done    int
	every      int
	lastLogged time.Time
}

// plainEvery is the longest time between two plain progress lines.
const plainEvery = 30 * time.Second

func newProgress(o options, n int, what string) *progress {
	p := &progress{what: what, n: n, every: max(1, n/10), quiet: o.quiet, lastLogged: time.Now()}
	if o.quiet || !o.terminal {
		return p
	}
	p.bar = progressbar.NewOptions(n, progressbar.OptionSetDescription(what), progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(30), progressbar.OptionSetWriter(os.Stderr), progressbar.OptionClearOnFinish(),
		progressbar.OptionShowElapsedTimeOnFinish(), progressbar.OptionSetPredictTime(true))
	return p
}

// Step counts one unit of work done; desc says how it stands ("reward 0.41").
func (p *progress) Step(desc string) {
	p.done++
	switch {
	case p.quiet:
	case p.bar != nil:
		p.bar.Describe(p.what + " " + desc)
		p.bar.Add(1)
	case p.done%p.every == 0 || p.done == p.n || time.Since(p.lastLogged) >= plainEvery:
		slog.Info(fmt.Sprintf("%s %d/%d %s", p.what, p.done, p.n, desc))
		p.lastLogged = time.Now()
	}
}

// Finish ends the bar.
func (p *progress) Finish() {
	if p.bar != nil {
		p.bar.Finish()
	}
}
