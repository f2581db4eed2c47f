package reward

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The payloads of issue 20's adversarial probe, run through the real sandbox: each must stay
// inside the run. uniqueMark names what a payload writes, so that nothing else can be mistaken
// for it on the host.
func uniqueMark(t *testing.T) string {
	return fmt.Sprintf("prolong-escape-%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), time.Now().UnixNano())
}

// runJSON runs src, which prints one JSON value, and decodes it into v.
func runJSON(t *testing.T, sb *Sandbox, src string, v any) {
	t.Helper()
	r := run(t, sb, src, "")
	if r.ExitCode != 0 || json.Unmarshal(r.Stdout, v) != nil {
		t.Fatalf("payload failed: exit %d stdout %q stderr %s", r.ExitCode, r.Stdout, r.Stderr)
	}
}

// tryWrite is a payload helper: writes each path and reports "wrote" or the errno's name.
const tryWrite = `import errno, json, os
def try_write(paths):
    out = {}
    for p in paths:
        try:
            with open(p, "w") as f:
                f.write("escaped")
            out[p] = "wrote"
        except OSError as e:
            out[p] = errno.errorcode[e.errno]
    return out
`

func TestSandboxWritesStayInside(t *testing.T) {
	sb := testSandbox(t)
	mark := uniqueMark(t)
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, dir := range []string{"/tmp", "/dev/shm", "/var/tmp", home, repo, "/"} {
		paths = append(paths, filepath.Join(dir, mark))
	}
	t.Cleanup(func() {
		for _, p := range paths {
			os.Remove(p)
		}
	})
	arg, _ := json.Marshal(paths)
	var got map[string]string
	runJSON(t, sb, tryWrite+fmt.Sprintf("print(json.dumps(try_write(%s)))", arg), &got)
	t.Logf("inside the sandbox: %v", got)
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s exists on the host after the run (inside: %s)", p, got[p])
		}
	}
	// Writes to /tmp and /dev/shm land in the run's tmpfs; the next run starts without them.
	for _, p := range paths[:2] {
		if got[p] != "wrote" {
			t.Errorf("%s inside the sandbox: %s, want a write to its own tmpfs", p, got[p])
		}
	}
	var seen map[string]bool
	runJSON(t, sb, fmt.Sprintf("import json, os\nprint(json.dumps({p: os.path.exists(p) for p in %s}))", arg), &seen)
	for p, ok := range seen {
		if ok {
			t.Errorf("%s written by one run is there in the next", p)
		}
	}
}

func TestSandboxSeesOnlyItsRoot(t *testing.T) {
	sb := testSandbox(t)
	// A file of the test's own, readable by anyone, beside the run: the run's own state files.
	outside := t.TempDir()
	secret := filepath.Join(outside, "state.json")
	if err := os.WriteFile(secret, []byte(`{"api_key": "SECRET"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{outside, filepath.Dir(outside)} {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	src := fmt.Sprintf(`import errno, json, os
def read(p):
    try:
        return open(p).read()
    except OSError as e:
        return errno.errorcode[e.errno]
st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
print(json.dumps({"root": sorted(os.listdir("/")), "passwd": read("/etc/passwd"), "state": read(%q),
    "cwd": os.getcwd(), "files": os.listdir("."), "pid": os.getpid(),
    "capeff": st["CapEff"].strip(), "capbnd": st["CapBnd"].strip(), "nonewprivs": st["NoNewPrivs"].strip()}))
`, secret)
	src += tryWrite + `print(json.dumps(try_write(["/usr/prolong-x", "/proc/sys/kernel/hostname"])))
`
	r := run(t, sb, src, "")
	lines := strings.Split(strings.TrimSpace(string(r.Stdout)), "\n")
	if r.ExitCode != 0 || len(lines) != 2 {
		t.Fatalf("payload failed: exit %d stdout %q stderr %s", r.ExitCode, r.Stdout, r.Stderr)
	}
	var got struct {
		Root                       []string
		Passwd, State, Cwd         string
		Files                      []string
		PID                        int
		CapEff, CapBnd, NoNewPrivs string
	}
	var writes map[string]string
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &writes); err != nil {
		t.Fatal(err)
	}
	t.Logf("inside: %+v; writes %v", got, writes)
	allowed := []string{"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sandbox", "sbin", "tmp", "usr"}
	for _, name := range got.Root {
		if !slices.Contains(allowed, name) {
			t.Errorf("/%s visible in the sandbox (root %v)", name, got.Root)
		}
	}
	if got.Passwd != "ENOENT" {
		t.Errorf("/etc/passwd: %.40q, want ENOENT (no /etc in the sandbox)", got.Passwd)
	}
	if got.State != "ENOENT" {
		t.Errorf("a world-readable file outside the run: %.40q, want ENOENT", got.State)
	}
	if got.Cwd != sandboxDir || !slices.Equal(got.Files, []string{"main.py"}) || got.PID != 1 {
		t.Errorf("cwd %s with %v, pid %d; want %s with [main.py], pid 1", got.Cwd, got.Files, got.PID, sandboxDir)
	}
	if got.CapEff != "0000000000000000" || got.CapBnd != "0000000000000000" || got.NoNewPrivs != "1" {
		t.Errorf("privileges left: CapEff %s CapBnd %s NoNewPrivs %s", got.CapEff, got.CapBnd, got.NoNewPrivs)
	}
	if writes["/usr/prolong-x"] != "EROFS" || writes["/proc/sys/kernel/hostname"] == "wrote" {
		t.Errorf("runtime writable: %v", writes)
	}
}

func TestSandboxHidesOtherProcesses(t *testing.T) {
	sb := testSandbox(t)
	secret := uniqueMark(t)
	host := exec.Command("/usr/bin/python3", "-c", "import time; time.sleep(30)", "--api-key", secret)
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { host.Process.Kill(); host.Wait() }()
	// Control: from the host, the secret is in the process's command line.
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", host.Process.Pid))
		if strings.Contains(string(b), secret) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("control: secret not in the host process's cmdline %q", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	src := `import json, os
out = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            out[p] = open("/proc/%s/cmdline" % p, "rb").read().decode(errors="replace")
        except OSError as e:
            out[p] = str(e)
print(json.dumps(out))
`
	var cmdlines map[string]string
	runJSON(t, sb, src, &cmdlines)
	for pid, c := range cmdlines {
		if strings.Contains(c, secret) || strings.Contains(c, "-test.") {
			t.Errorf("process %s seen from the sandbox: %q", pid, c)
		}
	}
	if len(cmdlines) != 1 || cmdlines["1"] == "" {
		t.Errorf("the sandbox sees processes %v, want only itself as pid 1", cmdlines)
	}
}

func TestSandboxNothingOutlivesTheRun(t *testing.T) {
	sb := testSandbox(t)
	mark := uniqueMark(t)
	t.Cleanup(func() { os.Remove(filepath.Join("/tmp", mark)) })
	// A daemon (double fork, new session) that keeps writing after the program has exited; its
	// command line carries the mark so that the host can look for it.
	src := fmt.Sprintf(`import os
open("/tmp/%[1]s", "w").write("x")
open("persist-%[1]s", "w").write("x")
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        loop = "import time\nfor i in range(100):\n    time.sleep(0.05)\n    open('/tmp/%[1]s', 'a').write('late')\n"
        os.execv("/usr/bin/python3", ["python3", "-c", loop, "%[1]s"])
    os._exit(0)
os.waitpid(pid, 0)
print("daemon started", flush=True)
`, mark)
	r := run(t, sb, src, "")
	if r.ExitCode != 0 || !strings.Contains(string(r.Stdout), "daemon started") {
		t.Fatalf("payload failed: %+v %s", r, r.Stderr)
	}
	for _, wait := range []time.Duration{0, 500 * time.Millisecond} {
		time.Sleep(wait)
		for _, p := range hostProcessesWith(mark) {
			t.Errorf("after %v: process %s outlived the run", wait, p)
		}
		if _, err := os.Stat(filepath.Join("/tmp", mark)); err == nil {
			t.Errorf("after %v: /tmp/%s on the host", wait, mark)
		}
	}
	if left := processesOf(sb.slotUIDs()); len(left) > 0 {
		t.Errorf("processes of the runs' users left: %v", left)
	}
	var names []string
	runJSON(t, sb, "import json, os\nprint(json.dumps(os.listdir('.') + os.listdir('/tmp')))", &names)
	if !slices.Equal(names, []string{"main.py"}) {
		t.Errorf("the next run finds %v, want only its main.py", names)
	}
}

// hostProcessesWith lists the host processes whose command line contains s.
func hostProcessesWith(s string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			out = append(out, e.Name()+" "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

// TestSandboxFailsClosed: when the sandbox cannot be set up (here: an interpreter outside the
// read-only runtime, so the run's init cannot exec it), model code does not run, and the error
// says why and names the opt-out; with the opt-out, it runs unisolated.
func TestSandboxFailsClosed(t *testing.T) {
	testSandbox(t) // skips without Python
	dir, err := os.MkdirTemp("", "prolong-python-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o1777); err != nil { // writable by the runs' users, were they to run here
		t.Fatal(err)
	}
	python := filepath.Join(dir, "python3")
	if err := os.Symlink("/usr/bin/python3", python); err != nil {
		t.Fatal(err)
	}
	mark := filepath.Join(dir, "ran")
	files := map[string]string{"main.py": fmt.Sprintf("import os\nopen(%q, 'w').write('x')\nprint('ran', os.getcwd())", mark)}

	sb := NewSandbox(SandboxConfig{Python: python, BaseUID: testBaseUID})
	_, err = sb.Run(context.Background(), files, nil)
	for _, want := range []string{"cannot isolate", "exec " + python, "AllowUnsandboxed"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want one that says %q", err, want)
		}
	}
	if _, err := os.Stat(mark); err == nil {
		t.Error("the model's code ran although the sandbox failed")
	}

	sb = NewSandbox(SandboxConfig{Python: python, AllowUnsandboxed: true, BaseUID: testBaseUID})
	r, err := sb.Run(context.Background(), files, nil)
	ran, dir, _ := strings.Cut(strings.TrimSpace(string(r.Stdout)), " ")
	if iso, _ := sb.Isolation(); err != nil || iso.Namespaces || ran != "ran" {
		t.Errorf("opt-out: isolation %+v, run %+v %s, err %v", iso, r, r.Stderr, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) || !strings.HasPrefix(dir, os.TempDir()) {
		t.Errorf("opt-out: the run's directory %q left behind (%v)", dir, err)
	}
	if _, err := os.Stat(mark); err != nil {
		t.Errorf("opt-out: the unisolated run did not write %s on the host: %v", mark, err)
	}
	// Without namespaces, runs still pass the seccomp filter: no user namespace of their own.
	r, err = sb.Run(context.Background(), map[string]string{"main.py": `import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
print(st["Seccomp"].strip(), libc.unshare(0x10000000), errno.errorcode.get(ctypes.get_errno()))`}, nil)
	if iso, _ := sb.Isolation(); err != nil || !iso.Seccomp || string(r.Stdout) != "2 -1 EPERM\n" {
		t.Errorf("opt-out: isolation %+v, run %q %s (%v); want seccomp mode 2 and unshare failing with EPERM", iso, r.Stdout, r.Stderr, err)
	}
}

func TestNamespaceHint(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sysctls map[string]string
		root    bool
		want    string
	}{
		{"disabled", map[string]string{"user/max_user_namespaces": "0\n"}, true, "user.max_user_namespaces"},
		{"debian unprivileged", map[string]string{"user/max_user_namespaces": "100", "kernel/unprivileged_userns_clone": "0"}, false, "kernel.unprivileged_userns_clone=1"},
		{"debian as root", map[string]string{"kernel/unprivileged_userns_clone": "0"}, true, "seccomp"},
		{"ubuntu apparmor", map[string]string{"kernel/apparmor_restrict_unprivileged_userns": "1"}, false, "kernel.apparmor_restrict_unprivileged_userns=0"},
		{"container", nil, false, "seccomp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, v := range tc.sysctls {
				p := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := namespaceHint(dir, tc.root); !strings.Contains(got, tc.want) {
				t.Errorf("hint %q, want it to mention %q", got, tc.want)
			}
		})
	}
}

// TestSandboxFailsClosedWithoutNamespaces runs this test again, in a user namespace of its own
// whose user.max_user_namespaces is 0, as on a machine that forbids namespaces: there the
// sandbox must refuse model code and say how to enable them.
func TestSandboxFailsClosedWithoutNamespaces(t *testing.T) {
	if os.Getenv("PROLONG_SANDBOX_TEST_NO_USERNS") == "1" {
		if err := os.WriteFile("/proc/sys/user/max_user_namespaces", []byte("0"), 0); err != nil {
			t.Fatal(err)
		}
		_, err := NewSandbox(SandboxConfig{}).Run(context.Background(), map[string]string{"main.py": "print('ran')"}, nil)
		t.Logf("error: %v", err)
		for _, want := range []string{"cannot isolate", "sysctl -w user.max_user_namespaces=", "AllowUnsandboxed"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("error %v, want one that says %q", err, want)
			}
		}
		return
	}
	testSandbox(t)
	cmd := exec.Command("/proc/self/exe", "-test.run=^TestSandboxFailsClosedWithoutNamespaces$", "-test.v")
	cmd.Env = append(os.Environ(), "PROLONG_SANDBOX_TEST_NO_USERNS=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		Credential:  &syscall.Credential{NoSetGroups: true},
	}
	out, err := cmd.CombinedOutput()
	t.Logf("in a namespace without user namespaces:\n%s", out)
	if err != nil || !strings.Contains(string(out), "--- PASS: TestSandboxFailsClosedWithoutNamespaces") {
		t.Errorf("the sandbox did not fail closed without namespaces: %v", err)
	}
}

// TestSandboxRuntime: what solutions commonly use still works in the private root: C extension
// modules, a multiprocessing pool (/dev/shm), a shell from subprocess, temporary files, and
// numpy when the host has it (CI installs python3-numpy; its BLAS is found through
// /etc/alternatives).
func TestSandboxRuntime(t *testing.T) {
	testSandbox(t) // skips without Python
	// Time enough for a pool and numpy on a loaded machine.
	sb := NewSandbox(SandboxConfig{Timeout: 20 * time.Second, BaseUID: testBaseUID})
	src := `import decimal, fractions, heapq, json, multiprocessing, subprocess, sys, tempfile
def sq(x):
    return x * x
if __name__ == "__main__":
    with multiprocessing.Pool(2) as p:
        print(p.map(sq, range(4)))
    print(subprocess.run(["sh", "-c", "echo shell"], capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryFile() as f:
        f.write(b"x")
    print(decimal.Decimal("0.1") + decimal.Decimal("0.2"), fractions.Fraction(1, 3) * 3)
    try:
        import numpy
        print(numpy.linalg.inv(numpy.eye(2)).sum())
    except ImportError as e:
        print("numpy:", e)
`
	r := run(t, sb, src, "")
	want := "[0, 1, 4, 9]\nshell\n0.3 1\nnumpy: "
	if exec.Command(sb.Config().Python, "-c", "import numpy").Run() == nil {
		want = "[0, 1, 4, 9]\nshell\n0.3 1\n2.0\n"
	}
	if r.ExitCode != 0 || !strings.HasPrefix(string(r.Stdout), want) {
		t.Errorf("runtime: exit %d stdout %q, want %q; stderr %s", r.ExitCode, r.Stdout, want, r.Stderr)
	}
}

// escapeProbe is the payload of issue 30's probe: gain() takes a user namespace of its own (the
// raw unshare(2) call, then its uid and gid maps) and, inside it, new mount, network and UTS
// namespaces, as a program that wants capabilities would; call() runs one system call through
// ctypes and gives [return value, errno name]. nr holds this machine's system call numbers.
// The probe runs after gain(), or before it when early is True (a clone with CLONE_NEWUSER,
// which works only before: the maps of a user namespace made by unshare do not map the uid of
// the one above).
const escapeProbe = `import ctypes, errno, json, os, struct
libc = ctypes.CDLL(None, use_errno=True)
nr = json.loads(%q)
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x20000, 0x04000000, 0x10000000, 0x40000000, 17
def call(f, *args):
    ctypes.set_errno(0)
    r = f(*args)
    return [r, errno.errorcode.get(ctypes.get_errno(), "") if r == -1 else ""]
def gain():
    out = [call(libc.unshare, CLONE_NEWUSER)]
    for p, s in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", "0 0 1"), ("/proc/self/gid_map", "0 0 1")):
        try:
            with open(p, "w") as f:
                f.write(s)
            out.append("wrote " + p)
        except OSError as e:
            out.append(p + ": " + errno.errorcode[e.errno])
    out.append(call(libc.unshare, CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS))
    return out
def fork_call(r):
    # A raw clone returns 0 in the child, which must not run the rest of this program.
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
        return [r, ""]
    return [r, errno.errorcode.get(ctypes.get_errno(), "")]
def clone(flags):
    ctypes.set_errno(0)
    return fork_call(libc.syscall(nr["clone"], flags | SIGCHLD, 0, 0, 0, 0))
def clone3(flags):
    args = ctypes.create_string_buffer(struct.pack("11Q", flags, 0, 0, 0, SIGCHLD, 0, 0, 0, 0, 0, 0), 88)
    ctypes.set_errno(0)
    return fork_call(libc.syscall(nr["clone3"], args, 88))
def bpf_map():
    attr = ctypes.create_string_buffer(struct.pack("4I", 2, 4, 4, 1), 72)  # BPF_MAP_CREATE of an array
    return call(libc.syscall, nr["bpf"], 0, attr, 72)
def perf():
    attr = ctypes.create_string_buffer(128)  # a software CPU clock of this process, user space only
    struct.pack_into("IIQ", attr, 0, 1, 128, 0)
    struct.pack_into("Q", attr, 40, 1 | 1 << 5 | 1 << 6)
    return call(libc.syscall, nr["perf_event_open"], attr, 0, -1, -1, 0)
def status():
    st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
    try:
        userns = open("/proc/sys/user/max_user_namespaces").read().strip()
    except OSError as e:
        userns = errno.errorcode[e.errno]
    return {"capeff": st["CapEff"].strip(), "seccomp": st["Seccomp"].strip(), "max_user_namespaces": userns}
early = %s
if early:
    probe = %s
print(json.dumps({"gain": gain(), "status": status()}), flush=True)
if not early:
    probe = %[3]s
print(json.dumps({"probe": probe, "status": status()}), flush=True)
`

// escapeSyscalls are the system call numbers the probe needs (this machine's, from x/sys).
func escapeSyscalls() string {
	b, _ := json.Marshal(map[string]uintptr{"clone": unix.SYS_CLONE, "clone3": unix.SYS_CLONE3, "bpf": unix.SYS_BPF,
		"perf_event_open": unix.SYS_PERF_EVENT_OPEN, "keyctl": unix.SYS_KEYCTL, "init_module": unix.SYS_INIT_MODULE,
		"unshare": unix.SYS_UNSHARE})
	return string(b)
}

// TestSandboxNoNestedNamespaces: issue 30's probe. Model code must not make a user namespace of
// its own (which gives it every capability there, and with them the kernel's namespace, mount,
// netfilter and raw-socket code), nor reach the other system calls that container escapes go
// through. Each row first tries to gain capabilities that way (which must fail), then makes its
// call (which must fail with the errno given, from the seccomp filter); the program's effective
// capabilities stay empty, its seccomp mode is 2 (filter) and it may make no user namespaces.
func TestSandboxNoNestedNamespaces(t *testing.T) {
	testSandbox(t) // skips without Python
	// Time enough for ctypes on a loaded machine.
	sb := NewSandbox(SandboxConfig{Timeout: 10 * time.Second, BaseUID: testBaseUID})
	type row struct {
		name, probe, want string // want: the errno name, or "killed" (by the filter, SIGSYS)
		early             bool   // the probe runs before gain()
	}
	rows := []row{
		{"unshare user", "call(libc.unshare, CLONE_NEWUSER)", "EPERM", false},
		{"unshare mount", "call(libc.unshare, CLONE_NEWNS)", "EPERM", false},
		{"unshare net", "call(libc.unshare, CLONE_NEWNET)", "EPERM", false},
		{"setns", `call(libc.setns, os.open("/proc/self/ns/uts", os.O_RDONLY), CLONE_NEWUTS)`, "EPERM", false},
		{"mount", `call(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None)`, "EPERM", false},
		{"ptrace", "call(libc.ptrace, 0, 0, None, None)", "EPERM", false}, // PTRACE_TRACEME
		{"bpf", "bpf_map()", "EPERM", false},
		{"perf_event_open", "perf()", "EPERM", false},
		{"keyctl", `call(libc.syscall, nr["keyctl"], 1, None)`, "EPERM", false}, // KEYCTL_JOIN_SESSION_KEYRING
		{"AF_PACKET", "call(libc.socket, 17, 3, 0x0300)", "EPERM", false},       // SOCK_RAW, htons(ETH_P_ALL)
		{"AF_NETLINK", "call(libc.socket, 16, 3, 12)", "EPERM", false},          // NETLINK_NETFILTER
		{"SOCK_RAW", "call(libc.socket, 2, 3, 1)", "EPERM", false},              // AF_INET, IPPROTO_ICMP
		{"init_module", `call(libc.syscall, nr["init_module"], None, 0, b"")`, "EPERM", false},
		{"clone CLONE_NEWUSER", "clone(CLONE_NEWUSER)", "EPERM", true},
		{"clone3 CLONE_NEWUSER", "clone3(CLONE_NEWUSER)", "ENOSYS", true}, // libc then falls back to clone
	}
	if runtime.GOARCH == "amd64" {
		// The x32 ABI (the syscall number's bit 30) would bypass a filter that checks numbers only.
		rows = append(rows, row{"x32 unshare", `call(libc.syscall, 0x40000000 | nr["unshare"], CLONE_NEWUSER)`, "killed", false})
	}
	for _, tc := range rows {
		t.Run(tc.name, func(t *testing.T) {
			early := map[bool]string{false: "False", true: "True"}[tc.early]
			r := run(t, sb, fmt.Sprintf(escapeProbe, escapeSyscalls(), early, tc.probe), "")
			lines := strings.Split(strings.TrimSpace(string(r.Stdout)), "\n")
			type status struct {
				CapEff, Seccomp string
				UserNS          string `json:"max_user_namespaces"`
			}
			var first struct {
				Gain   []json.RawMessage
				Status status
			}
			if err := json.Unmarshal([]byte(lines[0]), &first); err != nil || len(first.Gain) != 5 {
				t.Fatalf("payload failed: exit %d (timed out: %v) stdout %q stderr %s", r.ExitCode, r.TimedOut, r.Stdout, r.Stderr)
			}
			t.Logf("%s", lines[0])
			var unshare []any
			if json.Unmarshal(first.Gain[0], &unshare) != nil || fmt.Sprint(unshare) != "[-1 EPERM]" {
				t.Errorf("unshare(CLONE_NEWUSER) = %s, want [-1 EPERM]", first.Gain[0])
			}
			want := status{CapEff: "0000000000000000", Seccomp: "2", UserNS: "0"}
			if first.Status != want {
				t.Errorf("after trying to gain capabilities: %+v, want %+v", first.Status, want)
			}
			if tc.want == "killed" {
				if r.ExitCode != -1 || r.TimedOut || len(lines) != 1 {
					t.Errorf("%s: exit %d, stdout %q; want the program killed by the filter", tc.probe, r.ExitCode, r.Stdout)
				}
				return
			}
			var second struct {
				Probe  []any
				Status status
			}
			if len(lines) != 2 || json.Unmarshal([]byte(lines[1]), &second) != nil {
				t.Fatalf("payload failed: exit %d stdout %q stderr %s", r.ExitCode, r.Stdout, r.Stderr)
			}
			if got := fmt.Sprint(second.Probe); got != fmt.Sprintf("[-1 %s]", tc.want) {
				t.Errorf("%s = %s, want [-1 %s]", tc.probe, got, tc.want)
			}
			if second.Status != want {
				t.Errorf("after the call: %+v, want %+v", second.Status, want)
			}
		})
	}
}
