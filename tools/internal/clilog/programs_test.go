package clilog

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// TestProgramsOneStyle builds each program and checks the two things every one of them does
// the same way: --help prints the usage on stdout (exit 0, nothing on stderr), and a bad flag
// is one log line in this package's style on stderr (exit 2 or 1, nothing on stdout).
func TestProgramsOneStyle(t *testing.T) {
	bin := t.TempDir()
	line := regexp.MustCompile(`^\d\d:\d\d:\d\d ERROR (\S+): unknown flag: --no-such-flag`)
	for _, prog := range []string{"train", "convert", "export", "rollout-server", "bench", "loadgen"} {
		t.Run(prog, func(t *testing.T) {
			path := filepath.Join(bin, prog)
			if out, err := exec.Command("go", "build", "-o", path, "../../"+prog).CombinedOutput(); err != nil {
				t.Fatalf("build: %v\n%s", err, out)
			}
			stdout, stderr, code := run(t, path, "--help")
			if code != 0 || stderr != "" || !bytes.Contains([]byte(stdout), []byte("Usage: go run ./tools/"+prog)) {
				t.Errorf("--help: exit %d, stdout %.80q..., stderr %q", code, stdout, stderr)
			}
			stdout, stderr, code = run(t, path, "--no-such-flag")
			m := line.FindStringSubmatch(stderr)
			if code == 0 || stdout != "" || m == nil || m[1] != prog || bytes.Count([]byte(stderr), []byte("\n")) != 1 {
				t.Errorf("a bad flag: exit %d, stdout %q, stderr %q", code, stdout, stderr)
			}
		})
	}
}

func run(t *testing.T, path string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}
