package reward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// python3 finds the Python that runs the test reward programs (CI installs Debian's python3 and
// sets PROLONG_REQUIRE_PYTHON=1).
func python3(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		return "/usr/bin/python3"
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		skipUnlessRequired(t, "no python3 for the reward program tests: %v", err)
	}
	return py
}

// logBuffer collects log lines; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newTextLogger(b *logBuffer) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// testProgram starts testdata/program.py with the given timeout, logging into the returned
// buffer, and closes it at the end of the test.
func testProgram(t *testing.T, timeout time.Duration) (*Program, *logBuffer) {
	t.Helper()
	return testCommand(t, python3(t)+" testdata/program.py", timeout)
}

// testCommand is testProgram with another command line.
func testCommand(t *testing.T, command string, timeout time.Duration) (*Program, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	p, err := NewProgram(ProgramConfig{Command: command, Timeout: timeout,
		Logger: newTextLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p, logs
}

// rows builds requests whose responses are given; the ground truth is "ok", the data_source
// "math" for even rows and "code" for odd ones.
func rows(responses ...string) []Request {
	reqs := make([]Request, len(responses))
	for i, r := range responses {
		ds := "math"
		if i%2 == 1 {
			ds = "code"
		}
		reqs[i] = Request{Kind: ds, Prompt: fmt.Sprintf("prompt %d", i), Response: r, GroundTruth: "ok", Meta: map[string]any{"index": i}}
	}
	return reqs
}

// pidOf is the process id a row's result reports.
func pidOf(t *testing.T, res []Result) float64 {
	t.Helper()
	pid, ok := res[0].Details["pid"].(float64)
	if !ok {
		t.Fatalf("no pid in %+v", res[0])
	}
	return pid
}

func mustScore(t *testing.T, p BatchReward, reqs []Request) []Result {
	t.Helper()
	res, err := p.ScoreBatch(context.Background(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestProgramBatch: a batch is answered row by row in order; the fields the program gets are
// those sent (extra_info {} when nil); extra result fields land in Details.
func TestProgramBatch(t *testing.T) {
	p, _ := testProgram(t, 10*time.Second)
	reqs := rows("ok", "no", "ok", "")
	reqs[3].Meta = nil
	reqs[2].Prompt = "<|im_start|>user\nIs 1 < 2 & 3 > 2? Ünïcödé<|im_end|>"
	res := mustScore(t, p, reqs)
	if res[2].Details["prompt"] != reqs[2].Prompt || res[2].Details["raw_prompt_in_line"] != true {
		t.Errorf("the prompt as the program saw it: %+v", res[2].Details)
	}
	for i, want := range []float64{1, 0, 1, 0} {
		d := res[i].Details
		if res[i].Score != want || d["data_source"] != reqs[i].Kind || d["prompt"] != reqs[i].Prompt || d["batch_size"] != 4.0 {
			t.Errorf("row %d: %+v, want score %v", i, res[i], want)
		}
	}
	if got := fmt.Sprint(res[1].Details["extra_info"], res[3].Details["extra_info"]); got != "map[index:1] map[]" {
		t.Errorf("extra_info as the program saw it: %s", got)
	}
	if _, ok := res[0].Details["score"]; ok {
		t.Error("score repeated in Details")
	}
	one, err := p.Score(context.Background(), "ok", "ok", nil)
	if err != nil || one.Score != 1 || one.Details["data_source"] != "" {
		t.Fatalf("Score: %+v, %v", one, err)
	}
	if res, err := p.ScoreBatch(context.Background(), nil); res != nil || err != nil {
		t.Errorf("empty batch: %v, %v", res, err)
	}
}

// TestProgramCrashRestart: a program that exits mid-batch is an error naming the exit and its
// last stderr line; the next batch runs on a new process, and the restart is logged.
func TestProgramCrashRestart(t *testing.T) {
	p, logs := testProgram(t, 10*time.Second)
	pid := pidOf(t, mustScore(t, p, rows("ok")))
	_, err := p.ScoreBatch(context.Background(), rows("ok", "crash"))
	t.Log(err)
	for _, want := range []string{`batch of 2 rows (data_source "code", "math")`, "exit status 3", `last stderr line: "crashing on purpose"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("crash: error %v, want it to say %s", err, want)
		}
	}
	res := mustScore(t, p, rows("ok", "no"))
	if res[0].Score != 1 || res[1].Score != 0 || pidOf(t, res) == pid {
		t.Fatalf("after the crash: %+v (pid before %v)", res, pid)
	}
	if l := logs.String(); !strings.Contains(l, `msg="reward program restarted"`) || !strings.Contains(l, "exit status 3") {
		t.Errorf("restart not logged with its cause:\n%s", l)
	}
}

// alive says whether process pid still runs (neither gone nor a zombie) 5 s on: a killed
// process takes a moment to die.
func alive(pid float64) bool {
	for t0 := time.Now(); time.Since(t0) < 5*time.Second; time.Sleep(10 * time.Millisecond) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", int(pid)))
		if err != nil || strings.Contains(string(b), ") Z ") {
			return false
		}
	}
	return true
}

// TestProgramTimeout: a program that hangs is killed at the timeout (an error naming the batch),
// children of the shell included, and the next batch runs on a new process.
func TestProgramTimeout(t *testing.T) {
	// "; exit 0" keeps the shell from exec-ing Python: Python is the shell's child.
	p, _ := testCommand(t, python3(t)+" testdata/program.py; exit 0", 2*time.Second)
	pid := pidOf(t, mustScore(t, p, rows("ok"))) // started: the timeout is not spent on Python's start
	t0 := time.Now()
	_, err := p.ScoreBatch(context.Background(), rows("ok", "hang", "ok"))
	t.Log(err)
	if err == nil || !strings.Contains(err.Error(), "no answer within 2s") || !strings.Contains(err.Error(), "batch of 3 rows") {
		t.Fatalf("hang: error %v", err)
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Errorf("the timeout took %v", d)
	}
	if alive(pid) {
		t.Errorf("the hung program (pid %v) is still running", pid)
	}
	res := mustScore(t, p, rows("ok"))
	if res[0].Score != 1 || pidOf(t, res) == pid {
		t.Fatalf("after the timeout: %+v (pid before %v)", res, pid)
	}
	// Cancelling the caller's context kills it the same way.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := p.ScoreBatch(ctx, rows("hang")); err == nil || !strings.Contains(err.Error(), "cancelled") {
		t.Fatalf("cancelled: error %v", err)
	}
	mustScore(t, p, rows("ok"))
}

// TestProgramMalformed: each kind of wrong answer is an error naming the row at fault (or the
// batch, when the answer as a whole is wrong); only an unparsable line restarts the program.
func TestProgramMalformed(t *testing.T) {
	p, _ := testProgram(t, 10*time.Second)
	for _, c := range []struct {
		response, want string
		restart        bool
	}{
		{"abc", `row 1 (data_source "code"): score "abc" is not a number`, false},
		{"two", `row 1 (data_source "code"): score 2 is outside [0, 1]`, false},
		{"missing", `row 1 (data_source "code"): result has no "score"`, false},
		{"count", `batch of 2 rows (data_source "code", "math"): 3 results for a batch of 2 rows`, false},
		{"badjson", `batch of 2 rows (data_source "code", "math"): malformed answer: not a JSON object`, true},
	} {
		pid := pidOf(t, mustScore(t, p, rows("ok")))
		_, err := p.ScoreBatch(context.Background(), rows("ok", c.response))
		t.Log(err)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %s", c.response, err, c.want)
		}
		if restarted := pidOf(t, mustScore(t, p, rows("ok"))) != pid; restarted != c.restart {
			t.Errorf("%s: restarted %v, want %v", c.response, restarted, c.restart)
		}
	}
}

// TestProgramStderr: the program's stderr reaches our log, line by line, with the command.
func TestProgramStderr(t *testing.T) {
	p, logs := testProgram(t, 10*time.Second)
	mustScore(t, p, rows("stderr:hello from the reward", "stderr:second line"))
	p.Close() // stderr is drained by the time the program has exited
	l := logs.String()
	for _, want := range []string{`msg="reward program stderr"`, `line="hello from the reward"`, `line="second line"`, "reward_cmd=", "testdata/program.py"} {
		if !strings.Contains(l, want) {
			t.Errorf("log lacks %s:\n%s", want, l)
		}
	}
}

// TestProgramConcurrent: batches from many goroutines are answered each with its own rows, by
// one process (run with -race).
func TestProgramConcurrent(t *testing.T) {
	p, _ := testProgram(t, 10*time.Second)
	pid := pidOf(t, mustScore(t, p, rows("ok")))
	var wg sync.WaitGroup
	errs := make(chan error, 8*5)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 5; k++ {
				resp := make([]string, 1+(g+k)%4)
				for i := range resp {
					resp[i] = "ok"
					if (g+i)%3 == 0 {
						resp[i] = fmt.Sprintf("g%d-%d", g, k)
					}
				}
				res, err := p.ScoreBatch(context.Background(), rows(resp...))
				if err != nil {
					errs <- err
					return
				}
				for i, r := range res {
					if want := map[bool]float64{true: 1}[resp[i] == "ok"]; r.Score != want || r.Details["pid"] != pid || r.Details["batch_size"] != float64(len(resp)) {
						errs <- fmt.Errorf("goroutine %d batch %d row %d: %+v, want score %v", g, k, i, r, want)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestProgramClose: Close ends the program (a program that ignores its stdin's end is killed
// after the grace period) and later calls are errors.
func TestProgramClose(t *testing.T) {
	p, err := NewProgram(ProgramConfig{Command: "sleep 30", Grace: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Close of a program that does not exit: %v", err)
	}
	if _, err := p.ScoreBatch(context.Background(), rows("ok")); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("after Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := NewProgram(ProgramConfig{Command: " "}); err == nil {
		t.Error("empty command accepted")
	}
}

// TestRegistryScoreBatch: requests are routed by kind; a batched reward gets one call with its
// kind's rows in order (prefix routing included), the others are scored one by one; a row error
// names the request's index in the whole batch.
func TestRegistryScoreBatch(t *testing.T) {
	p, _ := testProgram(t, 10*time.Second)
	reg := NewRegistry()
	calls := 0
	toy := Func(func(_ context.Context, response, gt string, _ map[string]any) (Result, error) {
		calls++
		return Result{Score: map[bool]float64{true: 0.5}[response == gt]}, nil
	})
	if err := errors.Join(reg.Register("toy", toy), reg.Register("prog", p)); err != nil {
		t.Fatal(err)
	}
	reqs := []Request{
		{Kind: "toy", Response: "a", GroundTruth: "a"},
		{Kind: "prog/gsm8k", Prompt: "p1", Response: "ok", GroundTruth: "ok"},
		{Kind: "toy", Response: "b", GroundTruth: "a"},
		{Kind: "prog", Prompt: "p3", Response: "no", GroundTruth: "ok"},
	}
	res, err := reg.ScoreBatch(context.Background(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%v %v %v %v | %v %v %v | %d", res[0].Score, res[1].Score, res[2].Score, res[3].Score,
		res[1].Details["batch_size"], res[1].Details["data_source"], res[3].Details["prompt"], calls)
	if want := "0.5 1 0 0 | 2 prog/gsm8k p3 | 2"; got != want {
		t.Errorf("ScoreBatch: %s, want %s", got, want)
	}
	reqs[3].Response = "abc"
	if _, err := reg.ScoreBatch(context.Background(), reqs); err == nil || !strings.Contains(err.Error(), `kind "prog", request 3: reward program`) {
		t.Errorf("bad row: %v", err)
	}
	reqs[3].Kind = "nope"
	if _, err := reg.ScoreBatch(context.Background(), reqs); err == nil || !strings.Contains(err.Error(), `request 3: no reward for kind "nope"`) {
		t.Errorf("unknown kind: %v", err)
	}
	one, err := reg.Score(context.Background(), "prog/x", "ok", "ok", nil)
	if err != nil || one.Score != 1 || one.Details["data_source"] != "prog/x" {
		t.Errorf("Registry.Score through a program: %+v, %v", one, err)
	}
}

// spawnOrphan has the program start `sleep 777` in a session of its own (a response
// "spawn:FILE") and returns a pidfd of it: unlike its pid, which this busy machine may give to
// another process once it has died, the pidfd names that process alone. The test kills it at the
// end, should it have outlived the program.
func spawnOrphan(t *testing.T, p BatchReward, dir, name string) int {
	t.Helper()
	file := filepath.Join(dir, name)
	mustScore(t, p, rows("spawn:"+file))
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(string(b))
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("control: process %d: %v", pid, err)
	}
	t.Cleanup(func() {
		unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		unix.Close(fd)
	})
	// Popen returns once the child has begun its exec; its command line shows a moment later.
	// The process is running (the pidfd was opened), so its pid is still its own.
	for t0 := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if string(cmd) == "sleep\x00777\x00" {
			break
		}
		if time.Since(t0) > 5*time.Second {
			t.Fatalf("control: process %d is %q, want sleep 777 running", pid, cmd)
		}
	}
	if exited(fd, 0) {
		t.Fatalf("control: process %d has exited", pid)
	}
	return fd
}

// exited says whether the process of pidfd fd exits within wait (a pidfd becomes readable when
// its process has exited, whether or not it has been reaped yet).
func exited(fd int, wait time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(wait/time.Millisecond))
		if err != unix.EINTR {
			return n == 1 && err == nil
		}
	}
}

// TestProgramDescendantsDie: a process that the reward program starts in a session of its own
// (out of reach of its process group) ends with the program: when the program crashes and is
// restarted, and when it is closed.
func TestProgramDescendantsDie(t *testing.T) {
	p, logs := testProgram(t, 10*time.Second)
	dir := t.TempDir()
	orphan := spawnOrphan(t, p, dir, "first")
	if _, err := p.ScoreBatch(context.Background(), rows("crash")); err == nil {
		t.Fatal("crash: no error")
	}
	if !exited(orphan, 5*time.Second) {
		t.Error("the process started by the program outlived its crash")
	}
	orphan = spawnOrphan(t, p, dir, "second") // on the restarted program
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if !exited(orphan, 5*time.Second) {
		t.Error("the process started by the program outlived Close")
	}
	if l := logs.String(); strings.Contains(l, "reaper") {
		t.Errorf("the reaper complained:\n%s", l)
	}
}

// TestProgramDescendantsDieWithTrainer: when the trainer dies without closing its reward
// program (killed), what the program started in a session of its own ends too. The trainer is
// this test binary, run again as a helper that starts the program and waits to be killed.
func TestProgramDescendantsDieWithTrainer(t *testing.T) {
	if dir := os.Getenv("PROLONG_PROGRAM_TEST_TRAINER"); dir != "" {
		p, err := NewProgram(ProgramConfig{Command: python3(t) + " testdata/program.py"})
		if err != nil {
			t.Fatal(err)
		}
		spawnOrphan(t, p, dir, "pid")
		os.WriteFile(filepath.Join(dir, "ready"), nil, 0o644)
		time.Sleep(time.Minute)
		return
	}
	python3(t)
	dir := t.TempDir()
	trainer := exec.Command("/proc/self/exe", "-test.run=^TestProgramDescendantsDieWithTrainer$")
	trainer.Env = append(os.Environ(), "PROLONG_PROGRAM_TEST_TRAINER="+dir)
	var out bytes.Buffer
	trainer.Stdout, trainer.Stderr = &out, &out
	if err := trainer.Start(); err != nil {
		t.Fatal(err)
	}
	for t0 := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
			break
		}
		if time.Since(t0) > 30*time.Second {
			trainer.Process.Kill()
			trainer.Wait()
			t.Fatalf("the helper trainer did not start its program:\n%s", out.String())
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "pid"))
	pid, err := strconv.Atoi(string(b))
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := unix.PidfdOpen(pid, 0) // the helper is alive, and so is its program's sleep
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.PidfdSendSignal(orphan, unix.SIGKILL, nil, 0)
		unix.Close(orphan)
	})
	if exited(orphan, 0) {
		t.Fatalf("control: process %d has exited before the trainer", pid)
	}
	trainer.Process.Kill()
	trainer.Wait()
	if !exited(orphan, 5*time.Second) {
		t.Errorf("process %d, started by the reward program, outlived the trainer", pid)
	}
}
