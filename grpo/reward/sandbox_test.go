package reward

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// skipUnlessRequired skips a test that needs the sandbox's Python, or fails it when
// PROLONG_REQUIRE_PYTHON=1 (CI sets it, so the sandbox is never silently untested there).
func skipUnlessRequired(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("PROLONG_REQUIRE_PYTHON") == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// testBaseUID gives this test process's runs host users of their own (when root), so that
// checks for processes left behind do not see the sandboxes of other processes.
var testBaseUID = 2000000 + os.Getpid()%100000*64

func testSandbox(t *testing.T) *Sandbox {
	t.Helper()
	sb := NewSandbox(SandboxConfig{Timeout: 1500 * time.Millisecond, MemoryBytes: 512 << 20, MaxOutputBytes: 64 << 10, BaseUID: testBaseUID})
	iso, err := sb.Isolation()
	if err != nil {
		if _, statErr := os.Stat(sb.Config().Python); statErr != nil {
			skipUnlessRequired(t, "no Python for the code sandbox (CI installs Debian's python3): %v", err)
		}
		t.Fatal(err)
	}
	t.Logf("isolation: %+v", iso)
	return sb
}

func run(t *testing.T, sb *Sandbox, src string, stdin string) RunResult {
	t.Helper()
	r, err := sb.Run(context.Background(), map[string]string{"main.py": src}, []byte(stdin))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// processesOf lists the processes whose real uid is one of uids.
func processesOf(uids []int) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "Uid:" {
				if uid, _ := strconv.Atoi(f[1]); slices.Contains(uids, uid) {
					out = append(out, e.Name())
				}
			}
		}
	}
	return out
}

func TestSandboxBasics(t *testing.T) {
	sb := testSandbox(t)
	r := run(t, sb, "import os, sys\nprint(sys.stdin.read().upper())\nprint(sorted(os.environ))\nprint(os.getcwd())", "hello")
	if r.ExitCode != 0 || !strings.HasPrefix(string(r.Stdout), "HELLO\n") {
		t.Fatalf("run: %+v stderr %s", r, r.Stderr)
	}
	lines := strings.Split(strings.TrimSpace(string(r.Stdout)), "\n")
	if env := lines[1]; env != "['HOME', 'LANG', 'PATH', 'PYTHONHASHSEED', 'PYTHONIOENCODING', 'TMPDIR']" {
		t.Errorf("environment not cleared: %s", env)
	}
	if dir := lines[2]; dir != sandboxDir {
		t.Errorf("run directory %s, want %s", dir, sandboxDir)
	}
	if r := run(t, sb, "raise SystemExit(7)", ""); r.ExitCode != 7 {
		t.Errorf("exit code %d, want 7", r.ExitCode)
	}
	// A program that mimics the init's failure is still a program's result, not a sandbox error:
	// only the init, before exec, holds the descriptor that reports set-up errors.
	src := "import os, sys\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'fake set-up error')\n    except OSError:\n        pass\nsys.stderr.write('sandbox: setting up the run: x')\nraise SystemExit(127)"
	if r := run(t, sb, src, ""); r.ExitCode != 127 {
		t.Errorf("exit code %d, want 127", r.ExitCode)
	}
}

func TestSandboxInfiniteLoop(t *testing.T) {
	sb := testSandbox(t)
	start := time.Now()
	r := run(t, sb, "while True:\n    pass\n", "")
	if !r.TimedOut || r.ExitCode == 0 {
		t.Errorf("infinite loop: %+v", r)
	}
	if d := time.Since(start); d > sb.Config().Timeout+2*time.Second {
		t.Errorf("infinite loop took %v to stop (limit %v)", d, sb.Config().Timeout)
	}
	// Sleeping (no CPU) hits the wall-clock limit too.
	if r := run(t, sb, "import time\ntime.sleep(60)", ""); !r.TimedOut {
		t.Errorf("sleep: %+v", r)
	}
}

func TestSandboxForkBomb(t *testing.T) {
	sb := testSandbox(t)
	iso, _ := sb.Isolation()
	src := `import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as e:
    print("fork refused after", n, e.errno, flush=True)
time.sleep(30)
`
	start := time.Now()
	r := run(t, sb, src, "")
	if !r.TimedOut {
		t.Errorf("fork bomb: %+v %s", r, r.Stderr)
	}
	if !strings.Contains(string(r.Stdout), "fork refused after") {
		t.Errorf("process limit did not stop the fork bomb: stdout %q", r.Stdout)
	}
	if d := time.Since(start); d > sb.Config().Timeout+3*time.Second {
		t.Errorf("fork bomb took %v to stop", d)
	}
	if iso.OwnUser {
		time.Sleep(100 * time.Millisecond)
		if left := processesOf(sb.slotUIDs()); len(left) > 0 {
			t.Errorf("processes left behind: %v", left)
		}
	}
}

func TestSandboxMemoryHog(t *testing.T) {
	sb := testSandbox(t)
	r := run(t, sb, "x = bytearray(2 << 30)\nprint('allocated')", "")
	if r.ExitCode == 0 || strings.Contains(string(r.Stdout), "allocated") || !strings.Contains(string(r.Stderr), "MemoryError") {
		t.Errorf("memory hog: exit %d stdout %q stderr %q", r.ExitCode, r.Stdout, r.Stderr)
	}
}

func TestSandboxNoNetwork(t *testing.T) {
	sb := testSandbox(t)
	iso, _ := sb.Isolation()
	if !iso.Namespaces {
		t.Fatalf("no network namespace on this machine: %+v", iso)
	}
	// A server of our own on loopback: reachable from here, not from inside the sandbox,
	// whose loopback is a different, down interface. No traffic leaves this machine.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	// The interfaces are read from /proc/net/dev (socket.if_nameindex asks over netlink, which
	// the seccomp filter denies).
	src := fmt.Sprintf(`import socket
print([l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]])
try:
    socket.create_connection(("127.0.0.1", %d), timeout=1).close()
    print("connected")
except OSError as e:
    print("refused", e.errno)
`, port)
	r := run(t, sb, src, "")
	out := string(r.Stdout)
	if !strings.HasPrefix(out, "['lo']") || !strings.Contains(out, "refused") {
		t.Errorf("network reachable from the sandbox: %q %s", out, r.Stderr)
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err != nil {
		t.Errorf("control: cannot reach our own server from outside: %v", err)
	} else {
		c.Close()
	}
}

func TestSandboxFilesAndOutput(t *testing.T) {
	sb := testSandbox(t)
	outside := t.TempDir()
	if err := os.Chmod(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(outside, "pwned.txt")
	src := fmt.Sprintf(`import os
open("inside.txt", "w").write("ok")
os.mkdir("ro")
open("ro/f", "w").write("x")
os.chmod("ro", 0)
try:
    open(%q, "w").write("pwned")
    print("wrote outside")
except OSError as e:
    print("refused", e.errno)
`, target)
	r := run(t, sb, src, "")
	if !strings.Contains(string(r.Stdout), "refused") {
		t.Errorf("write outside the run directory: %q %s", r.Stdout, r.Stderr)
	}
	if _, err := os.Stat(target); err == nil {
		t.Errorf("%s was created", target)
	}
	// A file bigger than MaxFileBytes is cut by RLIMIT_FSIZE.
	r = run(t, sb, "f = open('big', 'wb')\nf.write(b'x' * (64 << 20))\nf.close()\nprint('wrote')", "")
	if r.ExitCode == 0 || strings.Contains(string(r.Stdout), "wrote") {
		t.Errorf("64 MiB file allowed: %+v", r)
	}
	// Huge output is capped and the run killed.
	start := time.Now()
	r = run(t, sb, "while True:\n    print('x' * 10000)\n", "")
	if !r.OutputLimited || len(r.Stdout) > sb.Config().MaxOutputBytes {
		t.Errorf("huge output: limited %v, kept %d bytes", r.OutputLimited, len(r.Stdout))
	}
	if time.Since(start) > sb.Config().Timeout+2*time.Second {
		t.Errorf("huge output took %v", time.Since(start))
	}
}

func TestSandboxConcurrencyAndCancel(t *testing.T) {
	sb := NewSandbox(SandboxConfig{Concurrency: 1, Timeout: 3 * time.Second})
	if _, err := sb.Isolation(); err != nil {
		skipUnlessRequired(t, "code sandbox unavailable: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := sb.Run(ctx, map[string]string{"main.py": "import time\ntime.sleep(10)"}, nil)
	if err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("cancelled run: err %v after %v", err, time.Since(start))
	}
	if _, err := sb.Run(context.Background(), map[string]string{"x.py": ""}, nil); err == nil {
		t.Error("Run without main.py: no error")
	}
	if _, err := sb.Run(context.Background(), map[string]string{"main.py": "", "../evil": ""}, nil); err == nil {
		t.Error("Run with a path as file name: no error")
	}
}

func TestSandboxMissingPython(t *testing.T) {
	sb := NewSandbox(SandboxConfig{Python: "/nonexistent/python3"})
	_, err := sb.Run(context.Background(), map[string]string{"main.py": ""}, nil)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/python3") {
		t.Errorf("missing interpreter: %v", err)
	}
}
