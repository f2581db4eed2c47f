package reward

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A reward program's reaper: Program starts this very binary (/proc/self/exe) with argv[0] set
// to programReaperName, and the reaper starts the program (/bin/sh -c COMMAND) as its child, on
// the same stdin, stdout and stderr. It is the program's child subreaper
// (PR_SET_CHILD_SUBREAPER): a process the program starts and leaves behind, even in a session
// of its own (a double fork, setsid, subprocess.Popen(start_new_session=True)), becomes the
// reaper's child instead of PID 1's. When the program exits, when Program kills it (SIGTERM to
// the reaper), or when the trainer dies (fd 3, a pipe whose other end only the trainer holds,
// reaches its end), the reaper kills every process left under it and exits, with the
// program's exit status. That needs no privileges and no namespaces, so it works as root and
// not, and where user namespaces are disabled; and the program keeps this machine's PIDs, files
// and network as before.
//
// Its command line is: programReaperName PROGRAM ARGS...
const programReaperName = "prolong-reward-reaper"

// reaperGrace bounds how long the reaper spends killing what the program left (a process that
// cannot be killed, such as a set-user-ID program run by an unprivileged trainer, is given up
// on after it, and named on stderr).
const reaperGrace = 5 * time.Second

func init() {
	if len(os.Args) > 1 && os.Args[0] == programReaperName {
		os.Exit(programReaper(os.Args[1:]))
	}
}

// programReaper runs the program args and returns the reaper's exit status.
func programReaper(args []string) int {
	logf := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, programReaperName+": "+format+"\n", a...)
	}
	syscall.CloseOnExec(3) // the lifeline is the reaper's alone
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		logf("cannot become the program's subreaper (%v): processes it starts in a session of their own may outlive it", err)
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	pid, err := syscall.ForkExec(args[0], args, &syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{0, 1, 2}})
	if err != nil {
		logf("starting %s: %v", args[0], err)
		return 127
	}
	// Let go of the program's stdin and stdout: they end when the program's side does.
	if null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
		_ = unix.Dup2(int(null.Fd()), 0)
		_ = unix.Dup2(int(null.Fd()), 1)
		null.Close()
	}
	trainerGone := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.NewFile(3, "lifeline"))
		close(trainerGone)
	}()
	for {
		select {
		case s := <-sigs:
			if s != syscall.SIGCHLD {
				killDescendants(logf)
				return 128 + int(s.(syscall.Signal))
			}
			for { // reap every child that has exited: the program, or what it left behind
				var ws syscall.WaitStatus
				wpid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if err != nil || wpid <= 0 {
					break
				}
				if wpid == pid {
					killDescendants(logf)
					return exitStatus(ws)
				}
			}
		case <-trainerGone:
			killDescendants(logf)
			return 128 + int(syscall.SIGKILL)
		}
	}
}

// exitStatus passes the program's end on: its exit status, or its death by a signal, which the
// reaper dies of too where Go lets it (else 128 + the signal's number, as a shell reports it).
func exitStatus(ws syscall.WaitStatus) int {
	if !ws.Signaled() {
		return ws.ExitStatus()
	}
	signal.Reset(ws.Signal())
	_ = syscall.Kill(os.Getpid(), ws.Signal())
	time.Sleep(100 * time.Millisecond)
	return 128 + int(ws.Signal())
}

// killDescendants kills and reaps every child of this process until none is left: the
// program's processes, and, as each one dies, those that then fall to this subreaper.
func killDescendants(logf func(string, ...any)) {
	deadline := time.Now().Add(reaperGrace)
	for {
		kids := childrenOf(os.Getpid())
		for _, k := range kids {
			// A child not yet waited for keeps its PID, so this cannot hit another process.
			_ = syscall.Kill(k, syscall.SIGKILL)
		}
		for {
			var ws syscall.WaitStatus
			wpid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if err == syscall.ECHILD {
				return
			}
			if err != nil || wpid <= 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			logf("processes %v left by the program could not be killed in %v; giving up on them", kids, reaperGrace)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// childrenOf lists the processes whose parent is pid (from /proc/PID/stat).
func childrenOf(pid int) []int {
	var kids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		k, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses; it ends at the last ")".
		i := strings.LastIndexByte(string(b), ')')
		if f := strings.Fields(string(b[i+1:])); i > 0 && len(f) > 1 && f[1] == strconv.Itoa(pid) {
			kids = append(kids, k)
		}
	}
	return kids
}
