// Package tooltest runs the real binaries of tools/convert and tools/export in their tests:
// built as users build them, or with -tags testhold, which makes them stop for good at a
// named stage of their progress (see outdir's holdAt) so that a test can signal or kill them
// at a known point of the write. It also holds the scenarios both tools must pass around
// their output directory: interrupted, killed with SIGKILL and cleaned up after, refused for
// an unreadable input directory.
package tooltest

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Build builds the main package pkg into a fresh directory that every user may read and run
// (for the tests that run it as another user) and returns the binary's path; hold builds it
// with -tags testhold.
func Build(t testing.TB, pkg string, hold bool) string {
	t.Helper()
	dir := OpenDir(t)
	bin := filepath.Join(dir, filepath.Base(pkg))
	if pkg == "." {
		wd, _ := os.Getwd()
		bin = filepath.Join(dir, filepath.Base(wd))
	}
	args := []string{"build", "-o", bin}
	if hold {
		args = append(args, "-tags", "testhold")
	}
	if out, err := exec.Command("go", append(args, pkg)...).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// OpenDir is a new directory, removed when the test ends, that every user may enter (mode
// 0755; t.TempDir's are the owner's only).
func OpenDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tooltest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Result is how a finished run ended.
type Result struct {
	Code           int // exit status; -1 when killed by a signal
	Stdout, Stderr string
}

// Run runs bin with args to its end (at most a minute: a run blocked on a named pipe fails the
// test instead of hanging it).
func Run(t testing.TB, bin string, args ...string) Result {
	t.Helper()
	return RunCmd(t, exec.Command(bin, args...))
}

// RunCmd is Run of a prepared command.
func RunCmd(t testing.TB, cmd *exec.Cmd) Result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return Result{Code: exitCode(err), Stdout: stdout.String(), Stderr: stderr.String()}
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s still running after a minute (blocked?)\n%s", cmd, stderr.String())
		return Result{}
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -2
	}
	return 0
}

// Held is a run of a -tags testhold binary, stopped at its hold stage.
type Held struct {
	cmd    *exec.Cmd
	stderr *SyncBuffer
	done   chan error
}

// Hold starts bin (built with hold) with args and returns once it says it is holding at the
// stage that starts with stage ("reading", "copying tokenizer files"); the test fails if it
// does not get there within a minute, or ends before.
func Hold(t testing.TB, bin, stage string, args ...string) *Held {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "PROLONG_TEST_HOLD="+stage)
	h := &Held{cmd: cmd, stderr: &SyncBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = h.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { h.done <- cmd.Wait() }()
	deadline := time.After(time.Minute)
	for !strings.Contains(h.stderr.String(), "holding at "+stage) {
		select {
		case err := <-h.done:
			t.Fatalf("%s ended (%v) before holding at %q:\n%s", cmd, err, stage, h.stderr.String())
		case <-deadline:
			cmd.Process.Kill()
			t.Fatalf("%s is not holding at %q after a minute:\n%s", cmd, stage, h.stderr.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return h
}

// Signal sends sig and waits for the program to end.
func (h *Held) Signal(t testing.TB, sig syscall.Signal) Result {
	t.Helper()
	if err := h.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-h.done:
		return Result{Code: exitCode(err), Stderr: h.stderr.String()}
	case <-time.After(time.Minute):
		h.cmd.Process.Kill()
		t.Fatalf("%s still running a minute after %v:\n%s", h.cmd, sig, h.stderr.String())
		return Result{}
	}
}

// SyncBuffer is a bytes.Buffer that a process (its output copier) may write while the test
// reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *SyncBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *SyncBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Names lists the entries of dir, sorted, joined by spaces.
func Names(dir string) string {
	entries, _ := os.ReadDir(dir)
	var n []string
	for _, e := range entries {
		n = append(n, e.Name())
	}
	return strings.Join(n, " ")
}

// Glob is filepath.Glob, sorted and joined by spaces, of base names.
func Glob(pattern string) string {
	m, _ := filepath.Glob(pattern)
	for i := range m {
		m[i] = filepath.Base(m[i])
	}
	return strings.Join(m, " ")
}
