package outdir

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/prolong-rl/prolong/checkpoints"
)

// Temporary names. A run writing OUT takes a lock file beside it, PARENT/.OUT.tmp-TOKEN.lock
// (TOKEN random), and holds an exclusive flock on it while it lives; the kernel drops the lock
// when the process ends, however it ends (kill -9 included). Everything the run builds
// beside OUT is named PARENT/.OUT.tmp-TOKEN-*: the output being built (.OUT.tmp-TOKEN-N), the
// directories checkpoints.Save builds beside that (.OUT.tmp-TOKEN-N.tmp-M) and ReplaceDir's
// .old. A later run writing OUT removes the files of every token whose lock it can take: their
// run is dead. A live run's lock cannot be taken, so its files are left alone, whatever the
// age of the run or where it runs (the lock is the file system's, not a process id that could
// be reused or belong to another machine or container). Names without a lock (from versions
// before the lock) are left alone.

// build is the output of this process being written: its lock file, and the prefix of its
// temporary names.
type build struct {
	lock   *os.File
	prefix string // PARENT/.OUT.tmp-TOKEN-
}

// The state a signal handler looks at: mu guards current (the build under way, nil when none)
// and complete (the output is in place). Write holds mu from the end of its build until the
// output is in place, so that a signal either removes an unfinished output or waits for the
// finished one.
var (
	mu       sync.Mutex
	current  *build
	complete bool
	// stopping is set when a signal arrives: the failure its removal causes in the writing
	// goroutine must not win the race to exit with its own message.
	stopping atomic.Bool
)

// Write builds the output directory out through build, which fills the temporary directory
// tmp, and puts it at out when complete (checkpoints.ReplaceDir): a failure or an interrupt
// leaves nothing half-written, and an existing out that is not empty is refused unless force,
// in which case it is replaced only once the new one is complete. The finished files get the
// modes of the user's umask (Shareable). Before building, it removes what runs writing out
// that were killed left beside it (see the temporary names above).
func Write(out string, force bool, build func(tmp string) error) error {
	if entries, err := os.ReadDir(out); err == nil && len(entries) > 0 && !force {
		return fmt.Errorf("output directory %s exists and is not empty (nothing was written; --force replaces it)", out)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	b, err := claim(out)
	if err != nil {
		return err
	}
	defer b.release()
	mu.Lock()
	current = b
	mu.Unlock()
	finishing := false
	err = checkpoints.ReplaceDir(out, filepath.Base(b.prefix), func(tmp string) error {
		if err := build(tmp); err != nil {
			return err
		}
		if err := Shareable(tmp); err != nil {
			return err
		}
		mu.Lock() // until the output is in place, a signal waits
		finishing = true
		return nil
	})
	if !finishing {
		mu.Lock()
	}
	complete = finishing && err == nil
	current = nil
	mu.Unlock()
	return err
}

// claim takes a lock file for a new build of out and removes the stale builds of out.
func claim(out string) (*build, error) {
	out = filepath.Clean(out)
	parent, stem := filepath.Dir(out), "."+filepath.Base(out)+".tmp-"
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("-o %s: %w", out, err)
	}
	f, err := os.CreateTemp(parent, stem+"*.lock")
	if err != nil {
		return nil, fmt.Errorf("-o %s: %w", out, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("-o %s: locking %s: %w", out, f.Name(), err)
	}
	b := &build{lock: f, prefix: strings.TrimSuffix(f.Name(), ".lock") + "-"}
	removeStale(out, stem, f.Name())
	return b, nil
}

// release removes the lock file (the lock goes with the descriptor).
func (b *build) release() {
	os.Remove(b.lock.Name())
	b.lock.Close()
}

// tokenRe is the random part of a lock file's name (os.CreateTemp's).
var tokenRe = regexp.MustCompile(`^[0-9]+$`)

// removeStale removes the temporary names of the builds of out whose lock no process holds,
// and their lock files; mine is this run's lock file. A .old directory is kept while out does
// not exist: it may be the previous output, renamed aside by a swap that was cut off (see
// checkpoints.ReplaceDir); its lock file is kept with it, for a later run to finish the job.
func removeStale(out, stem, mine string) {
	parent := filepath.Dir(out)
	entries, _ := os.ReadDir(parent)
	_, err := os.Lstat(out)
	keepOld := err != nil
	for _, e := range entries {
		lock := filepath.Join(parent, e.Name())
		token, ok := strings.CutSuffix(strings.TrimPrefix(e.Name(), stem), ".lock")
		if !ok || !strings.HasPrefix(e.Name(), stem) || !tokenRe.MatchString(token) || lock == mine {
			continue
		}
		f, err := os.Open(lock)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil { // its run is dead
			if _, left := removeAll(strings.TrimSuffix(lock, ".lock")+"-", keepOld); left == 0 {
				os.Remove(lock)
			}
		}
		f.Close()
	}
}

// removeAll removes the paths that start with prefix (but not a .old one when keepOld) and
// counts those it removed and those it kept or could not remove.
func removeAll(prefix string, keepOld bool) (removed, left int) {
	entries, _ := os.ReadDir(filepath.Dir(prefix))
	for _, e := range entries {
		p := filepath.Join(filepath.Dir(prefix), e.Name())
		switch {
		case !strings.HasPrefix(p, prefix):
		case keepOld && strings.HasSuffix(p, ".old") || os.RemoveAll(p) != nil:
			left++
		default:
			removed++
		}
	}
	return removed, left
}

// Stopping reports whether a signal is being handled: the program's main then waits for the
// handler to exit rather than reporting the error the interruption caused.
func Stopping() bool { return stopping.Load() }

// HandleSignals makes SIGINT (Ctrl-C) and SIGTERM remove the output being built (including
// the temporary directories checkpoints.Save makes beside it, and the lock file) and exit with
// 128 + the signal's number: an interrupted run leaves nothing behind, as a failed one does. A
// signal that comes once the output is complete lets it be put in place first. The message
// says which: "stopped, the output is complete", or "stopped, nothing was written" (and that
// the partial output was removed when there was one). prog prefixes it.
func HandleSignals(prog string) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-ch
		stopping.Store(true)
		mu.Lock()
		what := "nothing was written"
		switch {
		case complete:
			what = "the output is complete"
		case current != nil:
			if removeTemp(current.prefix) {
				what += " (the partial output was removed)"
			}
			current.release()
		}
		fmt.Fprintf(os.Stderr, "\n%s: %v: stopped, %s\n", prog, sig, what)
		code := 1
		if s, ok := sig.(syscall.Signal); ok {
			code = 128 + int(s)
		}
		os.Exit(code)
	}()
}

// removeTemp removes the paths that start with prefix, this run's temporary names, and says
// whether there were any. The writing goroutine goes on meanwhile, so a checkpoints.Save may
// put a directory in place after a first removal: the removal is repeated until none is left
// (for at most half a second).
func removeTemp(prefix string) (any bool) {
	for range 50 {
		if n, _ := removeAll(prefix, false); n == 0 {
			return any
		}
		any = true
		time.Sleep(10 * time.Millisecond)
	}
	return any
}

// besides lists the tmp.tmp-* paths beside tmp (checkpoints.Save's temporaries for tmp).
func besides(tmp string) []string {
	parent, prefix := filepath.Dir(tmp), filepath.Base(tmp)+".tmp-"
	entries, _ := os.ReadDir(parent)
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, filepath.Join(parent, e.Name()))
		}
	}
	return out
}
