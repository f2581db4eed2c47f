// Package outdir is what tools/convert and tools/export do around the output directory they
// build with modelio.WriteDir: refuse a bad output before any model is read, give the finished
// files the modes the user's umask asks for, remove the unfinished output when the program is
// interrupted, and show the progress of a long write.
package outdir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Check refuses, before any model is read, an output that cannot be written: a path that is a
// file, a non-empty directory without force, and (with force) a directory that is the input or
// holds it, which the replacement would delete. Errors name the -o path.
func Check(in, out string, force bool) error {
	st, err := os.Stat(out)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("-o %s: %w", out, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("-o %s exists and is not a directory (nothing was written)", out)
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		return fmt.Errorf("-o %s: %w", out, err)
	}
	if len(entries) == 0 {
		return nil
	}
	if !force {
		return fmt.Errorf("output directory %s exists and is not empty (nothing was written; --force replaces it)", out)
	}
	absIn, err1 := filepath.Abs(in)
	absOut, err2 := filepath.Abs(out)
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	if rel, err := filepath.Rel(absOut, absIn); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return fmt.Errorf("-o %s holds the input %s: --force would delete it (write elsewhere)", out, in)
	}
	return nil
}

// Shareable gives dir, built under a private temporary name, and everything in it the modes a
// new directory and a new file get under the user's umask: os.MkdirTemp makes directories only
// the owner can read, and some writers make files so too.
func Shareable(dir string) error {
	probe := filepath.Join(dir, ".mode-probe")
	if err := os.Mkdir(probe, 0o777); err != nil {
		return err
	}
	st, err := os.Stat(probe)
	if rerr := os.Remove(probe); err == nil {
		err = rerr
	}
	if err != nil {
		return err
	}
	dirMode := st.Mode().Perm()
	fileMode := dirMode &^ 0o111
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.Chmod(path, dirMode)
		case d.Type().IsRegular():
			return os.Chmod(path, fileMode)
		}
		return nil
	})
}

// The output being built: mu guards building (its temporary directory, "" when none), and is
// held from Complete to End, so that a signal either removes an unfinished output or waits
// until the finished one is in place.
var (
	mu       sync.Mutex
	building string
	// stopping is set when a signal arrives: the failure its removal causes in the writing
	// goroutine must not win the race to exit with its own message.
	stopping atomic.Bool
)

// Begin records tmp as the output being built (call it first thing in WriteDir's build).
func Begin(tmp string) {
	mu.Lock()
	building = tmp
	mu.Unlock()
}

// Complete is called when tmp is complete (last thing in WriteDir's build): from then until
// End, a signal waits.
func Complete() {
	mu.Lock()
	building = ""
}

// End is called when WriteDir has returned: the output is in place, or its build failed.
func End() {
	if mu.TryLock() { // the build failed, so Complete did not run
		building = ""
	}
	mu.Unlock()
}

// Stopping reports whether a signal is being handled: the program's main then waits for the
// handler to exit rather than reporting the error the interruption caused.
func Stopping() bool { return stopping.Load() }

// HandleSignals makes SIGINT (Ctrl-C) and SIGTERM remove the output being built, including
// the temporary directory checkpoints.Save makes beside it, and exit with 128 + the signal's
// number: an interrupted run leaves nothing behind, as a failed one does. A signal that comes
// once the output is complete lets it be put in place first. prog prefixes the message.
func HandleSignals(prog string) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-ch
		stopping.Store(true)
		mu.Lock()
		what := "the output is complete"
		if building != "" {
			removeTemp(building)
			what = "nothing was written"
		}
		fmt.Fprintf(os.Stderr, "\n%s: %v: stopped, %s\n", prog, sig, what)
		code := 1
		if s, ok := sig.(syscall.Signal); ok {
			code = 128 + int(s)
		}
		os.Exit(code)
	}()
}

// removeTemp removes tmp and the tmp.tmp-* directories that checkpoints.Save builds beside it
// and swaps into tmp when complete. The writing goroutine goes on meanwhile, so a Save may put
// its directory in place after a first removal: the removal is repeated, Save's directories
// first, until none is left (for at most half a second).
func removeTemp(tmp string) {
	for range 50 {
		left := false
		for _, p := range besides(tmp) {
			os.RemoveAll(p)
			left = true
		}
		if _, err := os.Lstat(tmp); err == nil {
			os.RemoveAll(tmp)
			left = true
		}
		if !left {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
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
