// Package outdir is what tools/convert and tools/export do around the output directory they
// write: refuse a bad output before any model is read, build it under a temporary name and put
// it in place all at once (Write), give the finished files the modes the user's umask asks
// for, remove the unfinished output when the program is interrupted and what killed runs
// left, and show the progress of a long write.
package outdir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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
