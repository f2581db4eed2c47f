// Package clilog is the programs' one log style: a log/slog handler writing
//
//	15:04:05 WARN  train: prompts longer than --max-prompt-tokens dropped file=data.jsonl dropped=3
//
// to stderr, one line a record: the time, the level, the program, the message and its
// attributes (values quoted where they hold spaces). On a terminal each line first clears the
// line it lands on, so that a progress bar drawn there (redrawn on its next update) is not
// left half-overwritten.
package clilog

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// Handler is the slog.Handler of the programs.
type Handler struct {
	out   *output
	prog  string
	level slog.Leveler
	attrs []slog.Attr
	group string
}

// output is what the handlers derived from one Handler share.
type output struct {
	mu       sync.Mutex
	w        io.Writer
	terminal bool
	now      func() time.Time
}

// New returns a handler writing to w for the program prog at level and above; terminal says
// that w is a terminal a progress bar may be drawn on.
func New(w io.Writer, prog string, level slog.Leveler, terminal bool) *Handler {
	return &Handler{out: &output{w: w, terminal: terminal, now: time.Now}, prog: prog, level: level}
}

// Setup makes a handler on stderr for prog the default logger and returns whether stderr is a
// terminal (where a program draws progress bars; elsewhere it logs plain progress lines).
func Setup(prog string) (terminal bool) {
	terminal = IsTerminal(os.Stderr)
	slog.SetDefault(slog.New(New(os.Stderr, prog, slog.LevelInfo, terminal)))
	return terminal
}

// Logger returns a logger in the programs' style on w for prog (a terminal one when w is a
// terminal): for code that writes to a stderr it was given.
func Logger(w io.Writer, prog string) *slog.Logger {
	f, ok := w.(*os.File)
	return slog.New(New(w, prog, slog.LevelInfo, ok && IsTerminal(f)))
}

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// Enabled implements slog.Handler.
func (h *Handler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	h2 := *h
	for _, a := range as {
		h2.attrs = append(h2.attrs[:len(h2.attrs):len(h2.attrs)], h.qualify(a))
	}
	return &h2
}

// WithGroup implements slog.Handler: the group prefixes later attribute keys ("group.key").
func (h *Handler) WithGroup(name string) slog.Handler {
	h2 := *h
	if h2.group != "" {
		name = h2.group + "." + name
	}
	h2.group = name
	return &h2
}

func (h *Handler) qualify(a slog.Attr) slog.Attr {
	if h.group != "" {
		a.Key = h.group + "." + a.Key
	}
	return a
}

// Handle implements slog.Handler.
func (h *Handler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	if h.out.terminal {
		b.WriteString("\r\x1b[K") // clear a progress bar's line
	}
	t := r.Time
	if t.IsZero() {
		t = h.out.now()
	}
	fmt.Fprintf(&b, "%s %-5s %s: %s", t.Format("15:04:05"), levelName(r.Level), h.prog, r.Message)
	for _, a := range h.attrs {
		writeAttr(&b, "", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		writeAttr(&b, h.group, a)
		return true
	})
	b.WriteByte('\n')
	h.out.mu.Lock()
	defer h.out.mu.Unlock()
	_, err := io.WriteString(h.out.w, b.String())
	return err
}

func levelName(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "ERROR"
	case l >= slog.LevelWarn:
		return "WARN"
	case l >= slog.LevelInfo:
		return "INFO"
	}
	return "DEBUG"
}

// writeAttr writes " key=value", groups flattened to "group.key".
func writeAttr(b *strings.Builder, prefix string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	key := a.Key
	if prefix != "" && key != "" {
		key = prefix + "." + key
	} else if key == "" {
		key = prefix
	}
	if a.Value.Kind() == slog.KindGroup {
		for _, g := range a.Value.Group() {
			writeAttr(b, key, g)
		}
		return
	}
	v := a.Value.String()
	if v == "" || strings.ContainsAny(v, " \t\n\"=") {
		v = strconv.Quote(v)
	}
	fmt.Fprintf(b, " %s=%s", key, v)
}
