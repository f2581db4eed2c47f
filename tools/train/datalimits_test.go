package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/grpo/data"
	"github.com/prolong-rl/prolong/grpo/reward"
	"github.com/prolong-rl/prolong/tools/internal/clilog"
)

// TestHugeDataLines (issue 30): one huge valid line cost the trainer 58 times its size, to be
// dropped by --max-prompt-tokens with a warning that named no line. Now a line over
// --max-line-bytes is skipped unread, tokenizing a prompt stops once it passes
// --max-prompt-tokens, and both warnings name the lines. The file: five rows, a 3 MB prompt
// (line 6, read, its tokenizing stopped), a 2000-token prompt (line 7), a 9 MB line (line 8,
// over the 8 MiB default) and a 30 MB one (line 9).
func TestHugeDataLines(t *testing.T) {
	model := byoModel(t)
	// A line of huge(n) is n+77 bytes: 71 of row() around the prompt "<bos>", n of 1+, "=".
	huge := func(n int) string { return row("arith", "<bos>"+strings.Repeat("1+", n/2)+"=", "1") }
	lines := append(append([]string{}, fiveRows...), huge(3<<20), huge(2000), huge(9<<20), huge(30<<20))
	file := filepath.Join(t.TempDir(), "data.jsonl")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	lines = nil
	o, _, err := parseOptions([]string{"--model", model, "--data", file, "--val-fraction", "0"})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := loadTokenizer(model)
	if err != nil {
		t.Fatal(err)
	}
	reg := reward.NewDefault(reward.Options{})

	var log bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(clilog.New(&log, "train", slog.LevelInfo, false)))
	defer slog.SetDefault(old)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rows, _, err := loadRows(context.Background(), *o)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := toPrompts(*o, reg, tok, rows, file)
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)

	if len(ps) != 5 {
		t.Errorf("%d prompts kept, want the 5 short ones", len(ps))
	}
	for _, want := range []string{
		fmt.Sprintf("WARN  train: data lines longer than --max-line-bytes skipped file=%s skipped=2 at=\"%[1]s:8 (9437261 bytes), %[1]s:9 (31457357 bytes)\" max-line-bytes=8388608", file),
		fmt.Sprintf("WARN  train: prompts longer than --max-prompt-tokens dropped file=%s dropped=2 kept=5 at=\"%[1]s:6, %[1]s:7\"", file),
	} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log\n%s\nwants the line\n%s", log.String(), want)
		}
	}
	// Reading and decoding the 3 MB line costs a few copies of it; tokenizing it nothing
	// much. (Before: tokenizing it alone took 32 bytes a character, reading the 30 MB line
	// a 32 MiB buffer and more.)
	if got := after.TotalAlloc - before.TotalAlloc; got > 40<<20 {
		t.Errorf("loading and tokenizing allocated %.1f MiB, want at most 40", float64(got)/(1<<20))
	} else {
		t.Logf("loading and tokenizing allocated %.1f MiB", float64(got)/(1<<20))
	}
}

// TestConfigByteOrderMark: a --config file saved with a UTF-8 byte-order mark (Windows
// editors write one) reads as without it, YAML or JSON.
func TestConfigByteOrderMark(t *testing.T) {
	for name, text := range map[string]string{"recipe.yaml": "n: 12\nlr: 1e-5\n", "recipe.json": `{"n": 12, "lr": 1e-5}`} {
		cfg := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(cfg, []byte("\xef\xbb\xbf"+text), 0o644); err != nil {
			t.Fatal(err)
		}
		o, _, err := parseOptions([]string{"--config", cfg})
		if err != nil || o.Run.Trainer.SamplesPerPrompt != 12 || o.Run.Optimizer.LR != 1e-5 {
			t.Errorf("%s with a BOM: n %d lr %v, %v", name, o.Run.Trainer.SamplesPerPrompt, o.Run.Optimizer.LR, err)
		}
	}
}

// TestMaxLineBytesDefault: --max-line-bytes defaults to grpo/data's own limit (a tag holds the
// number, so it is checked here).
func TestMaxLineBytesDefault(t *testing.T) {
	if o := newOptions(); o.MaxLineBytes != data.DefaultMaxLineBytes {
		t.Errorf("--max-line-bytes defaults to %d, grpo/data's limit is %d", o.MaxLineBytes, data.DefaultMaxLineBytes)
	}
}
