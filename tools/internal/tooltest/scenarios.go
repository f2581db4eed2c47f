package tooltest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Args makes a tool's command line (input and flags included) for the output directory out.
type Args func(out string) []string

// WeightsWritten is the stage a tool reaches once its weights are in the temporary output.
const WeightsWritten = "copying tokenizer files"

// Interrupted stops the program built with hold, once its weights are written, with SIGINT,
// SIGTERM, and SIGINT while --force replaces an existing output: it must exit with 128 + the
// signal's number, say that nothing was written and the partial output was removed, and leave
// the output's parent as it was (no temporary directory, no lock file, an existing output
// untouched).
func Interrupted(t *testing.T, hold string, args Args) {
	for _, tc := range []struct {
		name  string
		sig   syscall.Signal
		force bool
	}{
		{"SIGINT", syscall.SIGINT, false},
		{"SIGTERM", syscall.SIGTERM, false},
		{"SIGINT --force", syscall.SIGINT, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			out := filepath.Join(parent, "out")
			a := args(out)
			want := ""
			if tc.force {
				os.MkdirAll(out, 0o755)
				os.WriteFile(filepath.Join(out, "model.safetensors"), []byte("mine"), 0o644)
				a, want = append(a, "--force"), "out"
			}
			h := Hold(t, hold, WeightsWritten, a...)
			if got := Glob(filepath.Join(parent, ".out.tmp-*-*", "model.*")); got == "" {
				t.Errorf("no weights in the temporary output while holding: %s", Names(parent))
			}
			r := h.Signal(t, tc.sig)
			if r.Code != 128+int(tc.sig) || !strings.Contains(r.Stderr, "stopped, nothing was written (the partial output was removed)") {
				t.Errorf("exit %d, want %d saying nothing was written:\n%s", r.Code, 128+int(tc.sig), r.Stderr)
			}
			if got := Names(parent); got != want {
				t.Errorf("%s holds %q after the interrupt, want %q", parent, got, want)
			}
			if b, _ := os.ReadFile(filepath.Join(out, "model.safetensors")); tc.force && string(b) != "mine" {
				t.Errorf("the existing output was changed: %q", b)
			}
		})
	}
}

// InterruptedReading stops the program built with hold with SIGTERM while it reads its input,
// before any output exists: it must exit with 143 and say that nothing was written, not that
// the output is complete, and leave no output.
func InterruptedReading(t *testing.T, hold string, args Args) {
	parent := t.TempDir()
	r := Hold(t, hold, "reading", args(filepath.Join(parent, "out"))...).Signal(t, syscall.SIGTERM)
	if r.Code != 143 || !strings.Contains(r.Stderr, "stopped, nothing was written\n") {
		t.Errorf("exit %d, want 143 saying nothing was written:\n%s", r.Code, r.Stderr)
	}
	if got := Names(parent); got != "" {
		t.Errorf("%s holds %q, want nothing", parent, got)
	}
}

// Killed kills the program built with hold with SIGKILL once its weights are written, which
// leaves its temporary output and lock file beside the output; the next run writing the same
// output removes them before it builds, but leaves the files of a run that is still alive
// (here a second held run) however many other runs write meanwhile, until that one is
// killed too. bin is the program as users build it.
func Killed(t *testing.T, hold, bin string, args Args) {
	parent := t.TempDir()
	out := filepath.Join(parent, "out")
	if r := Hold(t, hold, WeightsWritten, args(out)...).Signal(t, syscall.SIGKILL); r.Code != -1 {
		t.Fatalf("SIGKILL: exit %d:\n%s", r.Code, r.Stderr)
	}
	dead := Names(parent)
	if Glob(filepath.Join(parent, ".out.tmp-*", "model.*")) == "" {
		t.Fatalf("the killed run left %q, want its temporary output", dead)
	}
	t.Logf("the killed run left %s", dead)
	live := Hold(t, hold, WeightsWritten, args(out)...)
	alive := Names(parent)
	for _, n := range strings.Fields(dead) {
		if strings.Contains(" "+alive+" ", " "+n+" ") {
			t.Errorf("the next run left the killed run's %s (%s holds %q)", n, parent, alive)
		}
	}
	if r := Run(t, bin, args(out)...); r.Code != 0 {
		t.Fatalf("a run beside a live one: exit %d:\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if got := Names(parent); got != alive+" out" {
		t.Errorf("a run beside a live one left %q, want the live run's files and out: %q", got, alive+" out")
	}
	live.Signal(t, syscall.SIGKILL)
	if r := Run(t, bin, append(args(out), "--force")...); r.Code != 0 {
		t.Fatalf("--force: exit %d:\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if got := Names(parent); got != "out" {
		t.Errorf("after the second killed run and one more, %s holds %q, want only out", parent, got)
	}
}

// Unreadable runs bin on the model directory in, made unreadable (mode 000), as a user the
// permission bits apply to (nobody, when the test runs as root): the error must name in and
// the permission error, not say there is no model. in must lie in a directory every user may
// enter (OpenDir).
func Unreadable(t *testing.T, bin, in string, args Args) {
	if err := os.Chmod(in, 0); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(in, 0o755)
	cmd := exec.Command(bin, args(filepath.Join(OpenDir(t), "out"))...)
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		probe := exec.Command(bin, "--help")
		probe.SysProcAttr = cmd.SysProcAttr
		if err := probe.Run(); err != nil {
			t.Skipf("skipping: cannot run %s as nobody: %v", bin, err)
		}
	}
	r := RunCmd(t, cmd)
	if r.Code != 1 || !strings.Contains(r.Stderr, in+": cannot look inside the directory") || !strings.Contains(r.Stderr, "permission denied") {
		t.Errorf("exit %d, want 1 naming %s and the permission error:\n%s", r.Code, in, r.Stderr)
	}
}
