package main

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

// checkOutput refuses, before any model is read, an output that cannot be written: a path that
// is a file, a non-empty directory without --force, and (with --force) a directory that is the
// input or holds it, which the replacement would delete.
func checkOutput(in, out string, force bool) error {
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

// shareable gives dir, built under a private temporary name, and everything in it the modes a
// new directory and a new file get under the user's umask: os.MkdirTemp makes directories only
// the owner can read, and some writers make files so too.
func shareable(dir string) error {
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

// building is the temporary directory the output is being built in, while it is ("" before and
// after); mu guards it, and is held from the end of the build until the output is in place, so
// that a signal either removes an unfinished output or waits for the finished one.
var (
	mu       sync.Mutex
	building string
	// stopping is set when a signal arrives: the failure the removal causes in the writing
	// goroutine must not win the race to exit with its own message.
	stopping atomic.Bool
)

// startBuild records tmp as the output being built.
func startBuild(tmp string) {
	mu.Lock()
	building = tmp
	mu.Unlock()
}

// endBuild is called when tmp is complete: from then until doneBuild, a signal waits.
func endBuild() {
	mu.Lock()
	building = ""
}

// doneBuild is called once the output is in place (or its build failed).
func doneBuild() {
	if mu.TryLock() { // the build failed, so endBuild did not run
		building = ""
	}
	mu.Unlock()
}

// removeOnSignal makes SIGINT (Ctrl-C) and SIGTERM remove the output being built, including the
// temporary directory checkpoints.Save makes beside it, and exit with 128 + the signal's number:
// an interrupted run leaves nothing behind, as a failed one does. A signal that comes once the
// output is complete lets it be put in place first.
func removeOnSignal(prog string) {
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
	parent, prefix := filepath.Dir(tmp), filepath.Base(tmp)+".tmp-"
	for range 50 {
		left := false
		entries, _ := os.ReadDir(parent)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), prefix) {
				os.RemoveAll(filepath.Join(parent, e.Name()))
				left = true
			}
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
