package reward

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// ProgramConfig says how to run a reward program.
type ProgramConfig struct {
	// Command is the program's command line, run by /bin/sh -c, so quoting, variables and
	// redirections work as in a shell ("python3 my_reward.py --strict").
	Command string
	// Dir is the program's working directory ("": ours).
	Dir string
	// Timeout bounds one batch, from writing the request to reading the whole answer; 0 means
	// 60 s.
	Timeout time.Duration
	// Grace is how long Close waits for the program to exit once its stdin is closed before
	// killing it; 0 means 5 s.
	Grace time.Duration
	// Logger receives the program's stderr, line by line, and its starts and restarts; nil
	// means slog.Default().
	Logger *slog.Logger
}

// Program is a reward program: a long-lived child process that reads one request line
// {"batch": [...]} on its stdin and writes one answer line {"results": [...]} on its stdout,
// per batch (see the package documentation). Batches are sent one at a time: Program is safe
// for concurrent use, and concurrent calls wait their turn.
//
// A program that crashes, times out, is cancelled or writes a line that is not an answer is
// killed, and started again on the next call (the restart is logged). Close ends it. Nothing the
// program starts outlives it, even in a session of its own: it runs under a reaper
// (program_reaper.go) that kills what it left when it exits, is killed, or the trainer dies.
type Program struct {
	cfg  ProgramConfig
	log  *slog.Logger
	turn chan struct{} // holds a token while a batch (or Close) is in progress

	// Guarded by turn.
	proc    *process // nil: start one on the next call
	failure string   // why the last process was killed ("": none was)
	closed  bool
}

// NewProgram starts a reward program.
func NewProgram(cfg ProgramConfig) (*Program, error) {
	if strings.TrimSpace(cfg.Command) == "" {
		return nil, errors.New("reward program: empty command")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 5 * time.Second
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.Default()
	}
	p := &Program{cfg: cfg, log: lg.With("reward_cmd", cfg.Command), turn: make(chan struct{}, 1)}
	proc, err := startProcess(cfg, p.log)
	if err != nil {
		return nil, fmt.Errorf("reward program %q: %w", cfg.Command, err)
	}
	p.proc = proc
	p.log.Info("reward program started", "pid", proc.pid())
	return p, nil
}

// Score implements Reward with a batch of one, whose data_source and prompt are empty
// (Registry.Score fills in the data_source).
func (p *Program) Score(ctx context.Context, response, groundTruth string, meta map[string]any) (Result, error) {
	res, err := p.ScoreBatch(ctx, []Request{{Response: response, GroundTruth: groundTruth, Meta: meta}})
	if err != nil {
		return Result{}, err
	}
	return res[0], nil
}

// ScoreBatch implements BatchReward: it sends reqs as one request line and reads the answer.
// An error names the row at fault (a *RowError) or, when the whole answer is wrong or missing
// (a timeout, a crash), the batch.
func (p *Program) ScoreBatch(ctx context.Context, reqs []Request) ([]Result, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	line, err := encodeBatch(reqs)
	if err != nil {
		return nil, fmt.Errorf("reward program %q: %w", p.cfg.Command, err)
	}
	select {
	case p.turn <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("reward program %q: waiting for its turn: %w", p.cfg.Command, ctx.Err())
	}
	defer func() { <-p.turn }()
	res, err := p.exchange(ctx, line, reqs)
	if err != nil {
		var re *RowError
		if errors.As(err, &re) {
			return nil, fmt.Errorf("reward program %q: %w", p.cfg.Command, err)
		}
		return nil, fmt.Errorf("reward program %q: %s: %w", p.cfg.Command, describeBatch(reqs), err)
	}
	return res, nil
}

// exchange sends one request line and reads its answer, (re)starting the process first if
// needed and killing it after a failure that leaves it in an unknown state. The caller holds
// the turn.
func (p *Program) exchange(ctx context.Context, line []byte, reqs []Request) ([]Result, error) {
	if p.closed {
		return nil, errors.New("the program was closed")
	}
	if p.proc == nil {
		proc, err := startProcess(p.cfg, p.log)
		if err != nil {
			return nil, err
		}
		p.proc = proc
		p.log.Warn("reward program restarted", "pid", proc.pid(), "after", p.failure)
	}
	answer, err := p.proc.roundTrip(ctx, line, p.cfg.Timeout)
	if err != nil {
		p.kill(err.Error())
		return nil, err
	}
	res, err := decodeAnswer(answer, reqs)
	if errors.Is(err, errUnparsed) {
		p.kill(err.Error()) // its output may be out of step with the requests
		return nil, fmt.Errorf("%w (the program is restarted on the next call; print nothing but answers on stdout)", err)
	}
	return res, err
}

// kill ends the process after a failure; the next call starts a new one.
func (p *Program) kill(why string) {
	p.proc.kill()
	p.proc, p.failure = nil, why
}

// Close ends the program: it closes its stdin, waits up to Grace for it to exit, and kills it
// after that. It waits for a batch in progress to end first. An error says the program did
// not exit cleanly.
func (p *Program) Close() error {
	p.turn <- struct{}{}
	defer func() { <-p.turn }()
	if p.closed {
		return nil
	}
	p.closed = true
	if p.proc == nil {
		return nil
	}
	proc := p.proc
	p.proc = nil
	_ = proc.stdin.Close()
	select {
	case <-proc.exited:
	case <-time.After(p.cfg.Grace):
		proc.kill()
		return fmt.Errorf("reward program %q: still running %v after its stdin was closed; killed", p.cfg.Command, p.cfg.Grace)
	}
	proc.kill() // ends what it left behind, if anything
	if proc.waitErr != nil {
		return fmt.Errorf("reward program %q: at exit: %w%s", p.cfg.Command, proc.waitErr, proc.stderrHint())
	}
	return nil
}

// process is one run of a reward program.
type process struct {
	cmd        *exec.Cmd
	reaped     bool // cmd is the reaper of the program (program_reaper.go)
	stdin      io.WriteCloser
	lines      chan stdoutLine // lines of stdout, then the error that ended it
	quit       chan struct{}   // closed by kill: the stdout reader stops
	exited     chan struct{}   // closed once the process has been waited for (waitErr set)
	waitErr    error
	stderrDone chan struct{} // closed when stderr reaches EOF (lastStderr final)
	lastStderr string
}

type stdoutLine struct {
	line []byte
	err  error
}

// startProcess starts cfg.Command under its reaper (program_reaper.go), which takes every
// process the command leaves behind with it, in its own process group, with its stdout and
// stderr read by goroutines. Where this binary cannot be started as the reaper, the command runs
// without one (logged): then only its process group is killed.
func startProcess(cfg ProgramConfig, log *slog.Logger) (*process, error) {
	pr, err := startCommand(cfg, log, true)
	if err != nil {
		log.Warn("reward program: cannot start its reaper; running it without one, so processes it starts in a session of their own may outlive it", "err", err)
		pr, err = startCommand(cfg, log, false)
	}
	return pr, err
}

// startCommand starts cfg.Command, under the reaper when reaped.
func startCommand(cfg ProgramConfig, log *slog.Logger, reaped bool) (*process, error) {
	cmd := exec.Command("/bin/sh", "-c", cfg.Command)
	var lifeR, lifeW *os.File
	if reaped {
		var err error
		if lifeR, lifeW, err = os.Pipe(); err != nil {
			return nil, err
		}
		defer lifeR.Close()
		cmd = exec.Command("/proc/self/exe", "/bin/sh", "-c", cfg.Command)
		cmd.Args[0] = programReaperName
		cmd.ExtraFiles = []*os.File{lifeR}
	}
	cmd.Dir = cfg.Dir
	// Python block-buffers a piped stdout; unbuffered, a forgotten flush cannot hang a batch.
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1")
	// No Pdeathsig: it fires when the forking OS thread ends, which for a long-lived child
	// would be a kill out of the blue. If we die, the reaper sees its lifeline end, and the
	// program its stdin.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		closeAll(lifeW)
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		closeAll(lifeW, stdin)
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		closeAll(lifeW, stdin, outR, outW)
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = cmd.Start()
	outW.Close() // the child has its own copies; EOF comes when it exits
	errW.Close()
	if err != nil {
		closeAll(lifeW, outR, errR)
		return nil, fmt.Errorf("starting it: %w", err)
	}
	pr := &process{cmd: cmd, stdin: stdin, reaped: reaped, lines: make(chan stdoutLine), quit: make(chan struct{}),
		exited: make(chan struct{}), stderrDone: make(chan struct{})}
	go pr.readStdout(outR)
	go pr.readStderr(errR, log.With("pid", cmd.Process.Pid))
	go func() {
		pr.waitErr = cmd.Wait()
		closeAll(lifeW) // held open until the reaper has exited
		close(pr.exited)
	}()
	return pr, nil
}

// closeAll closes each closer (a nil *os.File answers ErrInvalid).
func closeAll(cs ...io.Closer) {
	for _, c := range cs {
		_ = c.Close()
	}
}

func (pr *process) pid() int { return pr.cmd.Process.Pid }

// readStdout hands stdout line by line to roundTrip, then the error that ended it.
func (pr *process) readStdout(r *os.File) {
	defer r.Close()
	br := bufio.NewReaderSize(r, 1<<16)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			err = fmt.Errorf("its stdout ended (%w) before the answer's end of line", err)
		}
		select {
		case pr.lines <- stdoutLine{line, err}:
		case <-pr.quit:
			return
		}
		if err != nil {
			return
		}
	}
}

// readStderr logs stderr line by line (long lines cut at 4 KiB) and keeps the last one for
// error messages.
func (pr *process) readStderr(r *os.File, log *slog.Logger) {
	defer close(pr.stderrDone)
	defer r.Close()
	br := bufio.NewReaderSize(r, 1<<16)
	for {
		line, err := br.ReadBytes('\n')
		if s := strings.TrimRight(string(line), "\r\n"); s != "" {
			if len(s) > 4096 {
				s = s[:4096] + "..."
			}
			log.Info("reward program stderr", "line", s)
			pr.lastStderr = s
		}
		if err != nil {
			return
		}
	}
}

// roundTrip writes one request line and reads one answer line within timeout (and ctx).
func (pr *process) roundTrip(ctx context.Context, line []byte, timeout time.Duration) ([]byte, error) {
	written := make(chan error, 1)
	go func() {
		_, err := pr.stdin.Write(line)
		written <- err
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case err := <-written:
			if err != nil {
				return nil, pr.crashed(fmt.Errorf("writing the request: %w", err))
			}
			written = nil // wait for the answer only
		case m := <-pr.lines:
			if m.err != nil {
				return nil, pr.crashed(m.err)
			}
			return m.line, nil
		case <-timer.C:
			if ctx.Err() != nil { // both fired while this goroutine waited to run: the caller's cancel says why
				return nil, fmt.Errorf("cancelled before the answer; the program is killed and restarted on the next call: %w", ctx.Err())
			}
			return nil, fmt.Errorf("no answer within %v (the timeout); the program is killed and restarted on the next call", timeout)
		case <-ctx.Done():
			return nil, fmt.Errorf("cancelled before the answer; the program is killed and restarted on the next call: %w", ctx.Err())
		}
	}
}

// crashed describes a process whose stdin or stdout broke: how it exited and the last line
// of its stderr.
func (pr *process) crashed(cause error) error {
	select {
	case <-pr.exited:
	case <-time.After(2 * time.Second):
		return fmt.Errorf("the program stopped answering: %w", cause)
	}
	return fmt.Errorf("the program exited (%v): %w%s", pr.waitErr, cause, pr.stderrHint())
}

// stderrHint is the last stderr line of an exited process, if any, for an error message.
func (pr *process) stderrHint() string {
	select {
	case <-pr.stderrDone:
	case <-time.After(time.Second): // a grandchild still holds stderr
		return ""
	}
	if pr.lastStderr == "" {
		return ""
	}
	return fmt.Sprintf("; its last stderr line: %q", pr.lastStderr)
}

// kill ends the program and every process it started, and waits for it to be reaped: its
// reaper, told by SIGTERM, kills them all; without a reaper (or if it does not exit in time),
// its process group is killed.
func (pr *process) kill() {
	select {
	case <-pr.quit:
	default:
		close(pr.quit)
	}
	if pr.reaped {
		select {
		case <-pr.exited: // the reaper has taken every process of the program with it
			return
		default:
		}
		_ = pr.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-pr.exited:
			return
		case <-time.After(2 * reaperGrace):
		}
	}
	_ = syscall.Kill(-pr.pid(), syscall.SIGKILL)
	<-pr.exited
}
