package clilog

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"
)

// TestFormat: each record is one line "time level program: message key=value", values with
// spaces quoted, groups flattened, and on a terminal the line first clears a progress bar.
func TestFormat(t *testing.T) {
	at := time.Date(2026, 12, 1, 9, 5, 7, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		terminal bool
		log      func(l *slog.Logger)
		want     string
	}{
		{"warn", false, func(l *slog.Logger) { l.Warn("prompts dropped", "file", "a.jsonl", "dropped", 3) },
			"09:05:07 WARN  train: prompts dropped file=a.jsonl dropped=3\n"},
		{"quoted", false, func(l *slog.Logger) { l.Error("train failed", "err", errors.New("no such file")) },
			"09:05:07 ERROR train: train failed err=\"no such file\"\n"},
		{"group", false, func(l *slog.Logger) {
			l.With("run", "r1").WithGroup("step").Info("done", "n", 4, slog.Group("eval", "acc", 0.5))
		},
			"09:05:07 INFO  train: done run=r1 step.n=4 step.eval.acc=0.5\n"},
		{"empty value", false, func(l *slog.Logger) { l.Info("x", "k", "") }, "09:05:07 INFO  train: x k=\"\"\n"},
		{"debug hidden", false, func(l *slog.Logger) { l.Debug("x") }, ""},
		{"terminal", true, func(l *slog.Logger) { l.Info("reset") }, "\r\x1b[K09:05:07 INFO  train: reset\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			h := New(&buf, "train", slog.LevelInfo, tc.terminal)
			h.out.now = func() time.Time { return at }
			tc.log(slog.New(&zeroTime{h}))
			if got := buf.String(); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

// zeroTime drops the record's time so that the handler's clock (fixed in the test) is used.
type zeroTime struct{ *Handler }

func (z *zeroTime) Handle(ctx context.Context, r slog.Record) error {
	r.Time = time.Time{}
	return z.Handler.Handle(ctx, r)
}

func (z *zeroTime) WithAttrs(as []slog.Attr) slog.Handler {
	return &zeroTime{z.Handler.WithAttrs(as).(*Handler)}
}

func (z *zeroTime) WithGroup(name string) slog.Handler {
	return &zeroTime{z.Handler.WithGroup(name).(*Handler)}
}
