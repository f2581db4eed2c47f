package main

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/quickstart"
	"github.com/prolong-rl/prolong/tools/internal/clilog"
)

// The tests of this file follow a new user who brings a model directory and a small JSONL
// file (issue 18): each problem they met has a test here.

// byoModel writes a Hugging Face directory of the default job's shape (a 64-token context,
// the character tokenizer) with random weights.
func byoModel(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	c := quickstart.ModelConfig()
	if err := checkpoints.Save(dir, c, engine.RandomWeights(c, 1, 0.02), checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := quickstartTokenizerFiles(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// byoData writes lines as a JSONL file.
func byoData(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "data.jsonl")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func row(source, prompt, truth string) string {
	return `{"data_source":"` + source + `","prompt":"` + prompt + `","reward_model":{"ground_truth":"` + truth + `"}}`
}

// fiveRows are five default-task prompts in verl's format.
var fiveRows = []string{row("arith", "<bos>1+2=", "3"), row("arith", "<bos>4+4=", "8"), row("arith", "<bos>9-3=", "6"),
	row("arith", "<bos>7+1=", "8"), row("arith", "<bos>5-5=", "0")}

// captured runs the program's flags as main does and returns its stdout and its log.
func captured(t *testing.T, args ...string) (stdout, log string, err error) {
	t.Helper()
	r, w, perr := os.Pipe()
	if perr != nil {
		t.Fatal(perr)
	}
	oldOut, oldLog := os.Stdout, slog.Default()
	var logBuf bytes.Buffer
	os.Stdout = w
	slog.SetDefault(slog.New(clilog.New(&logBuf, "train", slog.LevelInfo, false)))
	done := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); done <- b }()
	err = runArgs(t, args...)
	w.Close()
	os.Stdout, _ = oldOut, 0
	slog.SetDefault(oldLog)
	return string(<-done), logBuf.String(), err
}

// TestResponseBudgetFits: the ProRL default of 8192 response tokens does not fit a 64-token
// model: it is lowered to what the context leaves after the longest prompt, and said so; a
// prompt that fills the context is an error naming --max-prompt-tokens.
func TestResponseBudgetFits(t *testing.T) {
	model, out := byoModel(t), t.TempDir()
	_, log, err := captured(t, "--device", "cpu", "--model", model, "--data", byoData(t, fiveRows...), "--steps", "1",
		"--prompts", "2", "--n", "2", "--out", out)
	if err != nil {
		t.Fatalf("a --model run with the default --max-response: %v", err)
	}
	// <bos>1+2= is 5 tokens: 59 remain of 64.
	if !strings.Contains(log, "--max-response 8192 does not fit") || !strings.Contains(log, "limited to 59 tokens") {
		t.Errorf("the lowered budget is not said: %s", log)
	}
	long := row("arith", "<bos>"+strings.Repeat("1+", 32)+"1=", "33")
	_, _, err = captured(t, "--device", "cpu", "--model", model, "--data", byoData(t, append(fiveRows, long)...), "--steps", "1",
		"--out", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "--max-prompt-tokens") || !strings.Contains(err.Error(), "max_position_embeddings") {
		t.Errorf("a prompt filling the context: %v", err)
	}
}

// TestDataChecks: the rewards each data_source gets are listed with counts; a tiny data set
// warns that there is no held-out split and that rows are reused within a step; a row with a
// data_source without reward or a character the tokenizer lacks is an error naming its line,
// counted from 1.
func TestDataChecks(t *testing.T) {
	model := byoModel(t)
	rows := append([]string{row("openai/gsm8k", "<bos>2+2=", "4")}, fiveRows...)
	stdout, log, err := captured(t, "--device", "cpu", "--model", model, "--data", byoData(t, rows...), "--steps", "1",
		"--prompts", "16", "--n", "2", "--max-response", "8", "--out", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"openai/gsm8k         -> math", "arith                -> logic/arith", `reads the final answer in \boxed{}`} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	for _, want := range []string{"no held-out prompts", "--prompts 16 per step from 6 training prompts: each is used about 3 times per step"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	for _, tc := range []struct {
		line string
		want string
	}{
		{row("nope", "<bos>1+1=", "2"), "data.jsonl:3: no reward for data_source \"nope\""},
		{row("arith", "<bos>What is 1+1=", "2"), "data.jsonl:3: prompt: character 'W'"},
	} {
		data := byoData(t, fiveRows[0], "", tc.line) // a blank line 2: lines are the file's
		_, _, err := captured(t, "--device", "cpu", "--model", model, "--data", data, "--steps", "1", "--out", t.TempDir())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error with %q", err, tc.want)
		}
	}
}

// TestRestartAndResumeErrors: a run directory whose run stopped before its first save starts
// again; --resume says what to do when there is nothing to resume, and names the older run
// states kept when the latest is damaged (--resume-step continues from one).
func TestRestartAndResumeErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "metrics.jsonl"), []byte(`{"step":0}`+"\n"), 0o644)
	if _, _, err := captured(t, "--out", dir, "--resume"); err == nil || !strings.Contains(err.Error(), "start it again without --resume") {
		t.Errorf("resume of a run without a state: %v", err)
	}
	if _, _, err := captured(t, "--out", filepath.Join(dir, "none"), "--resume"); err == nil || !strings.Contains(err.Error(), "start one there without --resume") {
		t.Errorf("resume of no run: %v", err)
	}
	args := append(append([]string{}, shortRun...), "--out", dir, "--save-every", "1", "--keep", "3")
	if _, _, err := captured(t, args...); err != nil {
		t.Fatalf("a new run over one that never saved: %v", err)
	}
	w := filepath.Join(dir, grpo.StateDir, checkpoints.StepDirName(4), checkpoints.WeightsFile)
	b, _ := os.ReadFile(w)
	b[len(b)-1] ^= 1
	os.WriteFile(w, b, 0o644)
	_, _, err := captured(t, "--quiet", "--out", dir, "--resume", "--steps", "5")
	if err == nil || !strings.Contains(err.Error(), "steps 2, 3") || !strings.Contains(err.Error(), "--resume-step 3") {
		t.Fatalf("resume of a damaged latest state: %v", err)
	}
	if _, _, err := captured(t, "--quiet", "--out", dir, "--resume", "--resume-step", "3", "--steps", "5"); err != nil {
		t.Fatalf("--resume-step 3: %v", err)
	}
}

// TestModelRecipeDefaults: a --model run gets the recipe's reference resets, as the default job.
func TestModelRecipeDefaults(t *testing.T) {
	o, fs, err := parseOptions([]string{"--model", "m", "--data", "d"})
	if err != nil {
		t.Fatal(err)
	}
	if o.Run.Trainer.RefResetEvery != 100 {
		t.Errorf("--model run: --ref-reset-every %d, want the recipe's 100", o.Run.Trainer.RefResetEvery)
	}
	if fs.Lookup("ref-reset-every").DefValue != "100" {
		t.Errorf("--ref-reset-every default %s", fs.Lookup("ref-reset-every").DefValue)
	}
}

// TestZeroRewardWarning: a run whose first steps earn nothing says so once.
func TestZeroRewardWarning(t *testing.T) {
	var log bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(clilog.New(&log, "train", slog.LevelInfo, false)))
	defer slog.SetDefault(old)
	r := &report{}
	for range 2 * zeroWarnAfter {
		r.noticeZeroRewards(&grpo.Metrics{})
	}
	if n := strings.Count(log.String(), "no response has earned any reward in 5 steps"); n != 1 {
		t.Errorf("warned %d times: %s", n, log.String())
	}
	log.Reset()
	r = &report{}
	r.noticeZeroRewards(&grpo.Metrics{RewardMean: 0.25})
	for range 2 * zeroWarnAfter {
		r.noticeZeroRewards(&grpo.Metrics{})
	}
	if log.Len() != 0 {
		t.Errorf("warned after a rewarded step: %s", log.String())
	}
}

// TestBinaryHelpAndPlainProgress: the built program prints --help on stdout (exit 0, nothing on
// stderr), and with stderr redirected to a file it logs plain progress lines, one style, no
// progress-bar frames.
func TestBinaryHelpAndPlainProgress(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "train")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "--help")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil || stderr.Len() != 0 || !strings.Contains(stdout.String(), "Usage: go run ./tools/train") ||
		!strings.Contains(stdout.String(), "--steps int") {
		t.Errorf("--help: %v\nstdout %q\nstderr %q", err, stdout.String(), stderr.String())
	}
	// A bad flag: one line naming it, exit status 2 as for a flag that does not parse, no run
	// directory.
	runDir := filepath.Join(t.TempDir(), "run")
	stdout.Reset()
	stderr.Reset()
	cmd = exec.Command(bin, "--lr", "-5e-5", "--out", runDir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || stdout.Len() != 0 ||
		!strings.HasSuffix(stderr.String(), " ERROR train: --lr: must be a finite value >= 0, got -5e-05 (see --help)\n") {
		t.Errorf("--lr -5e-5: %v\nstdout %q\nstderr %q", err, stdout.String(), stderr.String())
	}
	if _, err := os.Stat(runDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("--lr -5e-5 created the run directory: %v", err)
	}
	var args []string
	for _, a := range shortRun {
		if a != "--quiet" {
			args = append(args, a)
		}
	}
	logFile := filepath.Join(t.TempDir(), "stderr.log")
	f, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(bin, append(args, "--out", filepath.Join(t.TempDir(), "run"))...)
	cmd.Stderr = f
	out, err := cmd.Output()
	f.Close()
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
	if !bytes.HasPrefix(out, []byte("device: cpu (")) && !bytes.HasPrefix(out, []byte("device: cuda (")) || bytes.Contains(out, []byte("tried")) {
		t.Errorf("the device line: %.200q", out)
	}
	log, _ := os.ReadFile(logFile)
	if bytes.ContainsAny(log, "\r\x1b") {
		t.Errorf("progress-bar frames in a redirected stderr: %q", log)
	}
	for _, want := range []string{"INFO  train: warm start (SFT) 20/20 loss", "INFO  train: GRPO 4/4 reward", "INFO  train: grpo: reference reset step=3"} {
		if !bytes.Contains(log, []byte(want)) {
			t.Errorf("stderr lacks %q:\n%s", want, log)
		}
	}
	for _, l := range strings.Split(strings.TrimSpace(string(log)), "\n") {
		if f := strings.Fields(l); len(f) < 3 || len(f[0]) != 8 || f[2] != "train:" {
			t.Errorf("a log line in another style: %q", l)
		}
	}
}
