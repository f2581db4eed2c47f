package reward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// SandboxConfig limits what model-written Python may do. Zero fields take the defaults.
type SandboxConfig struct {
	// Python is the interpreter; default /usr/bin/python3 (Debian's python3 package).
	Python string
	// Timeout is the wall-clock limit of one run; default 5 s (ProRL's). The CPU-time limit
	// (RLIMIT_CPU) is set to the same number of seconds, rounded up.
	Timeout time.Duration
	// MemoryBytes is the address-space limit (RLIMIT_AS); default 1 GiB.
	MemoryBytes int64
	// MaxProcs is the process limit of the run's user (RLIMIT_NPROC); default 32. It contains a
	// fork bomb when runs are given users of their own (see BaseUID).
	MaxProcs int
	// MaxFileBytes is the largest file a run may write (RLIMIT_FSIZE); default 16 MiB.
	MaxFileBytes int64
	// MaxOutputBytes caps the captured stdout and stderr each; a run that writes more is
	// killed and reported as OutputLimited. Default 1 MiB.
	MaxOutputBytes int
	// Concurrency bounds the runs in flight; default the number of CPUs.
	Concurrency int
	// AllowNetwork lets runs go ahead when no network namespace can be made. By default the
	// sandbox refuses to run model code that could reach the network.
	AllowNetwork bool
	// BaseUID: when the process runs as root, run slot i runs as uid and gid BaseUID+i (users
	// with no other processes and no files outside the run's directory). Default 1000000.
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

// Isolation says which protections the sandbox obtained from the kernel.
type Isolation struct {
	// Network: runs are in a network namespace of their own (only a down loopback).
	Network bool `json:"network"`
	// PID: runs are in a PID namespace; killing the run kills every process it started.
	PID bool `json:"pid"`
	// OwnUser: runs execute as a user of their own (uid BaseUID+slot), which can write only
	// its directory and world-writable places; false means they run as this process's user
	// (in a user namespace when one could be made).
	OwnUser bool `json:"own_user"`
	// UserNS: a user namespace was made (the process is not root).
	UserNS bool `json:"user_ns"`
}

// Sandbox runs Python programs under limits: a wall-clock and CPU time limit, memory, process
// and file-size limits (setrlimit, applied by a prelude before the program runs), no network
// (a fresh network namespace), a PID namespace so that nothing outlives the run, a user of its
// own when running as root, an empty environment, and a temporary directory that is removed
// afterwards. It is safe for concurrent use; Concurrency bounds the runs in flight.
type Sandbox struct {
	cfg   SandboxConfig
	slots chan int

	once   sync.Once
	iso    Isolation
	isoErr error
	attr   func(slot int) *syscall.SysProcAttr
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
// run at all: no interpreter, or no network namespace while AllowNetwork is false.
func (s *Sandbox) Isolation() (Isolation, error) {
	s.once.Do(s.probe)
	return s.iso, s.isoErr
}

func (s *Sandbox) probe() {
	if _, err := os.Stat(s.cfg.Python); err != nil {
		s.isoErr = fmt.Errorf("sandbox: Python interpreter %s: %w (install Debian's python3)", s.cfg.Python, err)
		return
	}
	root := os.Geteuid() == 0
	uid, gid := os.Getuid(), os.Getgid()
	type option struct {
		iso  Isolation
		attr func(slot int) *syscall.SysProcAttr
	}
	mk := func(flags uintptr, own, userns bool) func(int) *syscall.SysProcAttr {
		return func(slot int) *syscall.SysProcAttr {
			a := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Cloneflags: flags}
			if own {
				id := uint32(s.cfg.BaseUID + slot)
				a.Credential = &syscall.Credential{Uid: id, Gid: id, Groups: []uint32{}}
			}
			if userns {
				a.Cloneflags |= syscall.CLONE_NEWUSER
				a.UidMappings = []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}}
				a.GidMappings = []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}}
			}
			return a
		}
	}
	ns := uintptr(syscall.CLONE_NEWNET | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS)
	var opts []option
	if root {
		opts = []option{
			{Isolation{Network: true, PID: true, OwnUser: true}, mk(ns, true, false)},
			{Isolation{Network: true, OwnUser: true}, mk(syscall.CLONE_NEWNET, true, false)},
			{Isolation{OwnUser: true}, mk(0, true, false)},
		}
	} else {
		opts = []option{
			{Isolation{Network: true, PID: true, UserNS: true}, mk(ns, false, true)},
			{Isolation{Network: true, UserNS: true}, mk(syscall.CLONE_NEWNET, false, true)},
			{Isolation{}, mk(0, false, false)},
		}
	}
	var errs []error
	for _, o := range opts {
		cmd := exec.Command(s.cfg.Python, "-I", "-c", "pass")
		cmd.Dir = "/"
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		cmd.SysProcAttr = o.attr(0)
		if out, err := cmd.CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("%+v: %w %s", o.iso, err, bytes.TrimSpace(out)))
			continue
		}
		s.iso, s.attr = o.iso, o.attr
		if !o.iso.Network && !s.cfg.AllowNetwork {
			s.isoErr = fmt.Errorf("sandbox: cannot make a network namespace (%v); refusing to run model code with network access (set SandboxConfig.AllowNetwork to run anyway)", errors.Join(errs...))
		}
		s.cfg.Logger.Info("reward: code sandbox", "python", s.cfg.Python, "network_isolated", o.iso.Network,
			"pid_namespace", o.iso.PID, "own_user", o.iso.OwnUser, "user_namespace", o.iso.UserNS)
		return
	}
	s.isoErr = fmt.Errorf("sandbox: cannot start %s in any isolation mode: %w", s.cfg.Python, errors.Join(errs...))
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

// prelude sets the resource limits, then runs main.py as __main__. The limits cannot be raised
// again by the program (soft = hard).
const prelude = `import resource as _r, sys as _s
for _k, _v in ((_r.RLIMIT_AS, %d), (_r.RLIMIT_CPU, %d), (_r.RLIMIT_NPROC, %d), (_r.RLIMIT_FSIZE, %d), (_r.RLIMIT_CORE, 0), (_r.RLIMIT_NOFILE, 64)):
    _r.setrlimit(_k, (_v, _v))
_s.argv = ["main.py"]
_s.path.insert(0, ".")
del _r, _s, _k, _v
import runpy as _rp
_rp.run_path("main.py", run_name="__main__")
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

// Run writes files (name -> content; names must be plain file names) into a fresh directory
// and runs main.py there with stdin, under the sandbox's limits. It waits for a free slot first
// (or ctx). An error means the run could not be made (no isolation, I/O); a program that fails,
// times out or floods its output is a RunResult, not an error.
func (s *Sandbox) Run(ctx context.Context, files map[string]string, stdin []byte) (RunResult, error) {
	if _, err := s.Isolation(); err != nil {
		return RunResult{}, err
	}
	if _, ok := files["main.py"]; !ok {
		return RunResult{}, errors.New("sandbox: Run needs a main.py")
	}
	var slot int
	select {
	case slot = <-s.slots:
	case <-ctx.Done():
		return RunResult{}, ctx.Err()
	}
	defer func() { s.slots <- slot }()

	dir, err := os.MkdirTemp("", "prolong-sandbox-")
	if err != nil {
		return RunResult{}, fmt.Errorf("sandbox: %w", err)
	}
	defer removeAll(dir)
	attr := s.attr(slot)
	for name, content := range files {
		if name != filepath.Base(name) || name == "." || name == ".." {
			return RunResult{}, fmt.Errorf("sandbox: file name %q is not a plain name", name)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return RunResult{}, fmt.Errorf("sandbox: %w", err)
		}
	}
	if attr.Credential != nil {
		id := int(attr.Credential.Uid)
		err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, id, id)
		})
		if err != nil {
			return RunResult{}, fmt.Errorf("sandbox: %w", err)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return RunResult{}, fmt.Errorf("sandbox: %w", err)
	}

	cpu := int64((s.cfg.Timeout + time.Second - 1) / time.Second)
	code := fmt.Sprintf(prelude, s.cfg.MemoryBytes, cpu, s.cfg.MaxProcs, s.cfg.MaxFileBytes)
	runCtx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(runCtx, s.cfg.Python, "-I", "-B", "-c", code)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir, "TMPDIR=" + dir, "LANG=C.UTF-8", "PYTHONHASHSEED=0", "PYTHONIOENCODING=utf-8"}
	cmd.SysProcAttr = attr
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
	err = cmd.Run()
	res.Duration = time.Since(start)
	if cmd.ProcessState == nil {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		return res, fmt.Errorf("sandbox: start %s: %w", s.cfg.Python, err)
	}
	// Without a PID namespace, kill the group in case something was left running.
	if !s.iso.PID && cmd.Process != nil {
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
		return res, fmt.Errorf("sandbox: run: %w", err)
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
