package reward

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SandboxConfig limits what model-written Python may do. Zero fields take the defaults.
type SandboxConfig struct {
	// Python is the interpreter; default /usr/bin/python3 (Debian's python3 package). It must
	// lie under /usr (or /bin, /lib...), the only host directories a run can see.
	Python string
	// Timeout is the wall-clock limit of one run; default 5 s (ProRL's). The CPU-time limit
	// (RLIMIT_CPU) is set to the same number of seconds, rounded up.
	Timeout time.Duration
	// MemoryBytes is the address-space limit (RLIMIT_AS); default 1 GiB.
	MemoryBytes int64
	// MaxProcs is the process limit of a run (RLIMIT_NPROC, counted in the run's own user
	// namespace); default 32. It contains a fork bomb.
	MaxProcs int
	// MaxFileBytes is the largest file a run may write (RLIMIT_FSIZE); default 16 MiB.
	MaxFileBytes int64
	// TmpfsBytes bounds all that a run writes (its directory, /tmp and /dev/shm share one
	// tmpfs of this size, in memory, with at most 4096 files); default 64 MiB.
	TmpfsBytes int64
	// MaxOutputBytes caps the captured stdout and stderr each; a run that writes more is
	// killed and reported as OutputLimited. Default 1 MiB.
	MaxOutputBytes int
	// Concurrency bounds the runs in flight; default the number of CPUs.
	Concurrency int
	// AllowUnsandboxed is the opt-out: when the namespaces cannot be made (a container whose
	// seccomp or AppArmor profile forbids them, user namespaces disabled by a sysctl), runs go
	// ahead as plain subprocesses with only the limits above, a directory of their own, as
	// root a user of their own, and the seccomp filter where the kernel allows it
	// (Isolation.Seccomp). Model code can then read this machine's world-readable files,
	// see its processes and reach its network: use it only on a throwaway machine. By default
	// the sandbox refuses to run model code it cannot isolate, and says what to enable.
	AllowUnsandboxed bool
	// BaseUID: when the process runs as root, each run slot runs as a host uid and gid of its
	// own from BaseUID up (users with no other processes and no files), claimed host-wide so
	// that two sandboxes on one host never share one (sandbox_uid.go). Default 1000000.
	BaseUID int
	// Logger receives one line about the isolation found; default slog.Default().
	Logger *slog.Logger
}

func (c *SandboxConfig) defaults() {
	if c.Python == "" {
		c.Python = "/usr/bin/python3"
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	if c.MemoryBytes == 0 {
		c.MemoryBytes = 1 << 30
	}
	if c.MaxProcs == 0 {
		c.MaxProcs = 32
	}
	if c.MaxFileBytes == 0 {
		c.MaxFileBytes = 16 << 20
	}
	if c.TmpfsBytes == 0 {
		c.TmpfsBytes = 64 << 20
	}
	if c.MaxOutputBytes == 0 {
		c.MaxOutputBytes = 1 << 20
	}
	if c.Concurrency == 0 {
		c.Concurrency = runtime.NumCPU()
	}
	if c.BaseUID == 0 {
		c.BaseUID = 1000000
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Isolation says how runs are isolated.
type Isolation struct {
	// Namespaces: each run has its own user, mount, PID, network, IPC, UTS and cgroup
	// namespaces and a private root (see Sandbox). False only under AllowUnsandboxed.
	Namespaces bool `json:"namespaces"`
	// Seccomp: a run's system calls pass the sandbox's seccomp filter (sandbox_seccomp.go: no
	// namespaces, mounts, tracing, BPF, perf events, keys, kernel modules, io_uring, raw, packet
	// or netlink sockets). Always true with Namespaces; without them (AllowUnsandboxed), true
	// where this kernel lets the filter be installed.
	Seccomp bool `json:"seccomp"`
	// OwnUser: a run's processes are a host user of the slot's own (the process is root); false means
	// this process's user (without the capabilities of root, when Namespaces is true).
	OwnUser bool `json:"own_user"`
}

// Sandbox runs Python programs isolated by Linux namespaces, under limits. Each run gets its
// own user, mount, PID, network (a down loopback only), IPC, UTS and cgroup namespaces. Its
// root is a size-limited tmpfs holding the run's directory /sandbox (its files, cwd and HOME),
// /tmp and /dev/shm, a fresh /proc that shows only the run's processes, /dev/null, zero, full,
// random and urandom, and the host's /usr (with /bin, /lib, /lib64 ... and /etc/alternatives)
// bound read-only, nosuid: nothing else of the host is there (no /etc/passwd, /home, /var, /root
// or the run's own files). Its host name is "sandbox". The
// program runs as root of its user namespace with no capabilities (bounding set empty,
// no_new_privs, SECBIT_NOROOT locked), mapped to the slot's own host uid when this process is
// root. It can make no namespaces of its own (which would give it every capability there): its
// user namespace allows none (user.max_user_namespaces and the other limits are 0), and a
// seccomp filter denies unshare, setns, clone with namespace flags, mount, ptrace, bpf,
// perf_event_open, keyctl, kernel modules, io_uring, and raw, packet and netlink sockets
// (sandbox_seccomp.go). Nothing it writes survives the run, and no process outlives it: Python is PID 1 of the
// run's PID namespace, whose end kills every process left in it. Limits: a wall-clock and CPU
// time limit, address space, processes and file size (setrlimit, applied by a prelude before
// the program runs), the tmpfs size, captured output, and an empty environment.
//
// The namespaces are set up by this binary itself, re-executed as the run's init (see
// sandboxInitName): any binary that links this package can run the sandbox, and needs nothing
// but python3 installed. It must be executable by the run's host user (mode 0755, as go build
// makes it). When the kernel refuses the namespaces, runs fail with an error that says what to
// enable, unless SandboxConfig.AllowUnsandboxed is set.
//
// It is safe for concurrent use; Concurrency bounds the runs in flight.
type Sandbox struct {
	cfg   SandboxConfig
	slots chan int

	once   sync.Once
	iso    Isolation
	isoErr error
	uids   []int // the host user of each slot, claimed host-wide (sandbox_uid.go)
}

// NewSandbox returns a sandbox; isolation is probed on first use.
func NewSandbox(cfg SandboxConfig) *Sandbox {
	cfg.defaults()
	s := &Sandbox{cfg: cfg, slots: make(chan int, cfg.Concurrency)}
	for i := 0; i < cfg.Concurrency; i++ {
		s.slots <- i
	}
	return s
}

// Config returns the sandbox's configuration with defaults filled in.
func (s *Sandbox) Config() SandboxConfig { return s.cfg }

// Isolation probes (once) and returns the isolation runs get. The error says why code cannot
// run at all: no interpreter, or no isolation while AllowUnsandboxed is false.
func (s *Sandbox) Isolation() (Isolation, error) {
	s.once.Do(s.probe)
	return s.iso, s.isoErr
}

// probe runs an empty program in the sandbox; if that fails, the sandbox refuses model code
// unless AllowUnsandboxed is set. Without namespaces, runs keep the seccomp filter where it can be
// installed.
func (s *Sandbox) probe() {
	if _, err := os.Stat(s.cfg.Python); err != nil {
		s.isoErr = fmt.Errorf("sandbox: Python interpreter %s: %w (install Debian's python3)", s.cfg.Python, err)
		return
	}
	s.iso = Isolation{Namespaces: true, Seccomp: true, OwnUser: os.Geteuid() == 0}
	s.claimSlotUIDs()
	if err := s.runEmpty(); err != nil {
		if !s.cfg.AllowUnsandboxed {
			s.isoErr = fmt.Errorf("sandbox: cannot isolate model code, so it will not run it: %w; "+
				"set SandboxConfig.AllowUnsandboxed to run it without isolation (unsafe)", err)
			return
		}
		s.iso.Namespaces = false
		s.cfg.Logger.Warn("reward: code sandbox unavailable; running model code WITHOUT isolation (AllowUnsandboxed)", "err", err)
		if err := s.runEmpty(); err != nil {
			s.iso.Seccomp = false
			s.cfg.Logger.Warn("reward: seccomp filter unavailable too; model code runs unfiltered (AllowUnsandboxed)", "err", err)
		}
	}
	s.cfg.Logger.Info("reward: code sandbox", "python", s.cfg.Python, "namespaces", s.iso.Namespaces,
		"seccomp", s.iso.Seccomp, "own_user", s.iso.OwnUser)
}

// probeTimeout is the probe's wall-clock limit: a busy machine (a trainer using every core)
// may take seconds to start Python, and a slow start is no reason to refuse model code.
const probeTimeout = 60 * time.Second

// runEmpty runs an empty program with the isolation of s.iso.
func (s *Sandbox) runEmpty() error {
	r, err := s.runWithin(context.Background(), max(s.cfg.Timeout, probeTimeout), 0, map[string]string{"main.py": ""}, nil)
	switch {
	case err == nil && r.TimedOut:
		err = fmt.Errorf("an empty program did not end within %v", max(s.cfg.Timeout, probeTimeout))
	case err == nil && r.ExitCode != 0:
		err = fmt.Errorf("an empty program exited with status %d: %s", r.ExitCode, bytes.TrimSpace(r.Stderr))
	}
	return err
}

// RunResult is the outcome of one sandboxed run.
type RunResult struct {
	Stdout, Stderr []byte
	// ExitCode is the process's exit status (-1 when killed by a signal).
	ExitCode int
	// TimedOut: the run hit the wall-clock or CPU time limit.
	TimedOut bool
	// OutputLimited: the run wrote more than MaxOutputBytes and was killed.
	OutputLimited bool
	// Duration is the wall-clock time of the run.
	Duration time.Duration
}

// prelude sets the resource limits, then runs main.py as __main__ (in the -c module's own
// namespace, as "python main.py" would; runpy would add 10-20 ms of imports to every run). The
// limits cannot be raised again by the program (soft = hard).
const prelude = `import resource as _r, sys as _s
for _k, _v in ((_r.RLIMIT_AS, %d), (_r.RLIMIT_CPU, %d), (_r.RLIMIT_NPROC, %d), (_r.RLIMIT_FSIZE, %d), (_r.RLIMIT_CORE, 0), (_r.RLIMIT_NOFILE, 64)):
    _r.setrlimit(_k, (_v, _v))
_s.argv = ["main.py"]
_s.path.insert(0, ".")
__file__ = "main.py"
del _r, _s, _k, _v
exec(compile(open("main.py", "rb").read(), "main.py", "exec"))
`

// limitedBuffer keeps at most limit bytes and calls over once when more arrive.
type limitedBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	limit int
	over  func()
	hit   bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.limit - b.buf.Len(); len(p) > room {
		b.buf.Write(p[:max(room, 0)])
		if !b.hit {
			b.hit = true
			go b.over()
		}
		return len(p), nil
	}
	return b.buf.Write(p)
}

// Run writes files (name -> content; names must be plain file names) into the run's directory
// and runs main.py there with stdin, under the sandbox's limits. It waits for a free slot first
// (or ctx). An error means the run could not be made (no isolation, a failed set-up, I/O); a
// program that fails, times out or floods its output is a RunResult, not an error.
func (s *Sandbox) Run(ctx context.Context, files map[string]string, stdin []byte) (RunResult, error) {
	if _, err := s.Isolation(); err != nil {
		return RunResult{}, err
	}
	if _, ok := files["main.py"]; !ok {
		return RunResult{}, errors.New("sandbox: Run needs a main.py")
	}
	for name := range files {
		if !plainFileName(name) {
			return RunResult{}, fmt.Errorf("sandbox: file name %q is not a plain name", name)
		}
	}
	var slot int
	select {
	case slot = <-s.slots:
	case <-ctx.Done():
		return RunResult{}, ctx.Err()
	}
	defer func() { s.slots <- slot }()
	res, err := s.run(ctx, slot, files, stdin)
	if err != nil && ctx.Err() == nil {
		err = fmt.Errorf("sandbox: %w", err)
	}
	return res, err
}

// plainFileName reports whether name names a file in the run's directory (no path).
func plainFileName(name string) bool {
	return name == filepath.Base(name) && name != "." && name != ".." && name != "/"
}

// run makes one run in slot, isolated or (under AllowUnsandboxed, when isolation failed) not.
// Its errors are not prefixed; Run and probe say that they come from the sandbox.
func (s *Sandbox) run(ctx context.Context, slot int, files map[string]string, stdin []byte) (RunResult, error) {
	return s.runWithin(ctx, s.cfg.Timeout, slot, files, stdin)
}

// runWithin is run with a wall-clock limit of its own.
func (s *Sandbox) runWithin(ctx context.Context, timeout time.Duration, slot int, files map[string]string, stdin []byte) (RunResult, error) {
	cpu := int64((s.cfg.Timeout + time.Second - 1) / time.Second)
	code := fmt.Sprintf(prelude, s.cfg.MemoryBytes, cpu, s.cfg.MaxProcs, s.cfg.MaxFileBytes)
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	command := s.hostCommand
	if s.iso.Namespaces {
		command = s.isolatedCommand
	}
	cmd, finish, err := command(runCtx, slot, code, files)
	if err != nil {
		return RunResult{}, err
	}
	res, err := s.execute(ctx, runCtx, cmd, stdin)
	if ferr := finish(); ferr != nil {
		return res, ferr
	}
	if err != nil && cmd.ProcessState == nil && ctx.Err() == nil {
		if s.iso.Namespaces {
			return res, fmt.Errorf("making the run's namespaces: %w (%s)", err, namespaceHint("/proc/sys", os.Geteuid() == 0))
		}
		return res, fmt.Errorf("starting %s: %w", s.cfg.Python, err)
	}
	return res, err
}

// isolatedCommand returns the command of an isolated run: this binary as the sandbox's init
// (sandbox_init.go) in new namespaces, given the files on fd 3 (a memfd) and fd 4 for its
// set-up error. finish, called once the command has ended, reports that error.
func (s *Sandbox) isolatedCommand(ctx context.Context, slot int, code string, files map[string]string) (*exec.Cmd, func() error, error) {
	blob, err := json.Marshal(files)
	if err != nil {
		return nil, nil, err
	}
	fd, err := unix.MemfdCreate("prolong-sandbox-files", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("memfd: %w", err)
	}
	filesFile := os.NewFile(uintptr(fd), "prolong-sandbox-files")
	statusR, statusW, err := os.Pipe()
	if err == nil {
		_, err = filesFile.Write(blob)
	}
	if err == nil {
		_, err = filesFile.Seek(0, io.SeekStart)
	}
	if err != nil {
		filesFile.Close()
		return nil, nil, err
	}
	cmd := exec.CommandContext(ctx, "/proc/self/exe", strconv.FormatInt(s.cfg.TmpfsBytes, 10), s.cfg.Python, "-I", "-B", "-c", code)
	cmd.Args[0] = sandboxInitName
	cmd.Dir = "/"
	cmd.Env = sandboxEnv(sandboxDir, "/tmp")
	cmd.ExtraFiles = []*os.File{filesFile, statusW}
	cmd.SysProcAttr = s.namespaceAttr(slot)
	finish := func() error {
		statusW.Close()
		filesFile.Close()
		defer statusR.Close()
		if msg, _ := io.ReadAll(io.LimitReader(statusR, 4096)); len(msg) > 0 {
			return fmt.Errorf("setting up the run: %s", msg)
		}
		return nil
	}
	return cmd, finish, nil
}

// namespaceAttr clones the run's init into new namespaces as root of its user namespace, which
// is the slot's own host uid when this process is root, else this process's user.
func (s *Sandbox) namespaceAttr(slot int) *syscall.SysProcAttr {
	root := os.Geteuid() == 0
	uid, gid := os.Getuid(), os.Getgid()
	if root {
		uid, gid = s.uid(slot), s.uid(slot)
	}
	return &syscall.SysProcAttr{
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWNET |
			syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS | syscall.CLONE_NEWCGROUP,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}},
		// Root may let the run's init call setgroups, which drops root's supplementary groups;
		// an unprivileged user's namespace must deny setgroups.
		GidMappingsEnableSetgroups: root,
		Credential:                 &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: !root},
	}
}

// namespaceHint says how to let this process make namespaces, from the sysctls (under procSys)
// that commonly forbid them.
func namespaceHint(procSys string, root bool) string {
	sysctl := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(procSys, filepath.FromSlash(name)))
		return strings.TrimSpace(string(b))
	}
	switch {
	case sysctl("user/max_user_namespaces") == "0":
		return "user namespaces are disabled (user.max_user_namespaces = 0); enable them with sysctl -w user.max_user_namespaces=10000"
	case !root && sysctl("kernel/unprivileged_userns_clone") == "0":
		return "unprivileged user namespaces are disabled; enable them with sysctl -w kernel.unprivileged_userns_clone=1, or run as root"
	case !root && sysctl("kernel/apparmor_restrict_unprivileged_userns") == "1":
		return "AppArmor restricts unprivileged user namespaces; lift it with sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or run as root"
	}
	return "the kernel refused new user, mount, PID and network namespaces; in a container this is its seccomp or AppArmor " +
		"profile (Docker: --security-opt seccomp=unconfined --security-opt apparmor=unconfined, or --privileged)"
}

// hostCommand returns the command of an unisolated run (AllowUnsandboxed): Python in a fresh
// host directory, as the slot's own host user when this process is root, under the seccomp filter when
// s.iso.Seccomp. finish removes the directory.
func (s *Sandbox) hostCommand(ctx context.Context, slot int, code string, files map[string]string) (*exec.Cmd, func() error, error) {
	dir, err := os.MkdirTemp("", "prolong-sandbox-")
	if err != nil {
		return nil, nil, err
	}
	finish := func() error { removeAll(dir); return nil }
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() == 0 {
		id := uint32(s.uid(slot))
		attr.Credential = &syscall.Credential{Uid: id, Gid: id, Groups: []uint32{}}
	}
	if err := writeHostFiles(dir, files, attr.Credential); err != nil {
		finish()
		return nil, nil, err
	}
	cmd := exec.CommandContext(ctx, s.cfg.Python, "-I", "-B", "-c", code)
	if s.iso.Seccomp {
		cmd = filteredCommand(ctx, s.cfg.Python, "-I", "-B", "-c", code)
	}
	cmd.Dir = dir
	cmd.Env = sandboxEnv(dir, dir)
	cmd.SysProcAttr = attr
	return cmd, finish, nil
}

// filteredCommand returns the command that runs name with args under the sandbox's seccomp
// filter: this binary, started as the filter's init (sandboxFilterName), installs the filter and
// execs name.
func filteredCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "/proc/self/exe", append([]string{name}, args...)...)
	cmd.Args[0] = sandboxFilterName
	return cmd
}

// writeHostFiles writes the run's files into dir, owned by the run's user when it has one.
func writeHostFiles(dir string, files map[string]string, cred *syscall.Credential) error {
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			return err
		}
		if cred != nil {
			if err := os.Lchown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				return err
			}
		}
	}
	if cred != nil {
		if err := os.Lchown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return err
		}
	}
	return os.Chmod(dir, 0o700)
}

// sandboxEnv is a run's whole environment.
func sandboxEnv(home, tmp string) []string {
	return []string{"PATH=/usr/bin:/bin", "HOME=" + home, "TMPDIR=" + tmp, "LANG=C.UTF-8", "PYTHONHASHSEED=0", "PYTHONIOENCODING=utf-8"}
}

// execute runs cmd with stdin under runCtx's time limit, capturing limited output; ctx is the
// caller's context (its end is an error, not a time-out). An error from starting cmd is
// returned as it is (cmd.ProcessState is nil then).
func (s *Sandbox) execute(ctx, runCtx context.Context, cmd *exec.Cmd, stdin []byte) (RunResult, error) {
	cmd.Stdin = bytes.NewReader(stdin)
	var res RunResult
	kill := func() {
		if cmd.Process != nil {
			// The whole process group; with a PID namespace, killing its init ends every process in it.
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Process.Kill()
		}
	}
	var outMu sync.Mutex
	overflow := func() {
		outMu.Lock()
		res.OutputLimited = true
		outMu.Unlock()
		kill()
	}
	stdout := &limitedBuffer{limit: s.cfg.MaxOutputBytes, over: overflow}
	stderr := &limitedBuffer{limit: s.cfg.MaxOutputBytes, over: overflow}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.Cancel = func() error { kill(); return nil }
	cmd.WaitDelay = time.Second
	start := time.Now()
	err := cmd.Run()
	res.Duration = time.Since(start)
	if cmd.ProcessState == nil {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		return res, err
	}
	// Without a PID namespace, kill the group in case something was left running.
	if !s.iso.Namespaces && cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	stdout.mu.Lock()
	res.Stdout = bytes.Clone(stdout.buf.Bytes())
	stdout.mu.Unlock()
	stderr.mu.Lock()
	res.Stderr = bytes.Clone(stderr.buf.Bytes())
	stderr.mu.Unlock()
	res.ExitCode = cmd.ProcessState.ExitCode()
	if runCtx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		res.TimedOut = true
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGXCPU {
		res.TimedOut = true
	}
	outMu.Lock()
	defer outMu.Unlock()
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) && !res.TimedOut && !res.OutputLimited && !errors.Is(err, exec.ErrWaitDelay) {
		return res, fmt.Errorf("run: %w", err)
	}
	return res, nil
}

// removeAll removes a run directory even when the program left read-only directories in it.
func removeAll(dir string) {
	if os.RemoveAll(dir) == nil {
		return
	}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	_ = os.RemoveAll(dir)
}
