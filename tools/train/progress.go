package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress follows long work: a progress bar on a terminal, else (stderr redirected to a file)
// a plain log line every tenth of the work and at least every plainEvery, so that a log file
// holds a readable line per period rather than a bar's redraw frames. --quiet shows neither.
//
// The count is of the whole work, n, of which start units were done before (a resumed run's
// steps): "GRPO 41/50". A bar that starts part-way says its own estimate of the time left,
// from this session's pace (the bar's own would count the units done before as done now).
type progress struct {
	bar        *progressbar.ProgressBar // nil: plain lines (or quiet)
	quiet      bool
	what       string
	start      int // units done before this session
	n, done    int // done counts from 0, start included
	every      int
	began      time.Time
	lastLogged time.Time
}

// plainEvery is the longest time between two plain progress lines.
const plainEvery = 30 * time.Second

// newProgress follows n units of work, start of which are done already, on stderr.
func newProgress(o options, start, n int, what string) *progress {
	return newProgressTo(os.Stderr, o, start, n, what)
}

// newProgressTo is newProgress drawing its bar on w.
func newProgressTo(w io.Writer, o options, start, n int, what string) *progress {
	now := time.Now()
	p := &progress{what: what, start: start, n: n, done: start, every: max(1, n/10), quiet: o.Quiet, began: now, lastLogged: now}
	if o.Quiet || !o.terminal {
		return p
	}
	p.bar = progressbar.NewOptions(n, progressbar.OptionSetDescription(what), progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(30), progressbar.OptionSetWriter(w), progressbar.OptionClearOnFinish(),
		progressbar.OptionShowElapsedTimeOnFinish(), progressbar.OptionSetPredictTime(start == 0),
		progressbar.OptionSetElapsedTime(true))
	if start > 0 {
		p.bar.Set(start)
	}
	return p
}

// Step counts one unit of work done; desc says how it stands ("reward 0.41").
func (p *progress) Step(desc string) {
	p.done++
	switch {
	case p.quiet:
	case p.bar != nil:
		text := p.what + " " + desc
		if p.start > 0 && p.done < p.n {
			perUnit := time.Since(p.began) / time.Duration(p.done-p.start)
			text += fmt.Sprintf(" (%s left)", (perUnit * time.Duration(p.n-p.done)).Round(time.Second))
		}
		p.bar.Describe(text)
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
