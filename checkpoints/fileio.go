package checkpoints

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The file helpers below are the one implementation, for every package of the module
// (checkpoints itself, onnx, grpo and the tools; engine keeps none of its own), of the rule
// that files users keep (checkpoints, exports, run logs) are written to a temporary name,
// fsynced and renamed: a crash never leaves a half-written file under the real name.

// testHookWriter, when set (by tests), wraps the writer of every atomically written file, to
// inject failures midway.
var testHookWriter func(path string, w io.Writer) io.Writer

// WriteFileAtomic writes the file path through write, so that a crash or an error never
// leaves a half-written file under that name: write fills a temporary file in the same
// directory (".NAME.tmp-*", through a 1 MiB buffer), which is then given the mode perm,
// fsynced, closed and renamed over path, and the directory is fsynced so that the rename is
// durable. On any error (write's included) the temporary file is removed and an existing file
// at path is left as it was. The directory must exist. Errors name path.
//
// A path that is a character device or a named pipe (/dev/null, /dev/stdout, a FIFO) is
// written straight through, as cp would: renaming over it would replace the device node
// itself (as root, /dev/null would become a regular file). A path that is a directory or
// another kind of special file is an error.
func WriteFileAtomic(path string, perm os.FileMode, write func(io.Writer) error) (err error) {
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return writeSpecial(path, fi, write)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	var w io.Writer = f
	if testHookWriter != nil {
		w = testHookWriter(path, w)
	}
	err = writeBuffered(w, write)
	if err == nil {
		err = f.Chmod(perm) // CreateTemp makes 0600: a kept file is for others to read too
	}
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = f.Close()
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// writeSpecial writes to the existing non-regular file path (fi): through, when it is a
// character device or a named pipe; an error otherwise.
func writeSpecial(path string, fi os.FileInfo, write func(io.Writer) error) error {
	m := fi.Mode()
	if m&(os.ModeCharDevice|os.ModeNamedPipe) == 0 {
		what := "not a regular file"
		if m.IsDir() {
			what = "a directory"
		}
		return fmt.Errorf("writing %s: it is %s (want a file name)", path, what)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	err = writeBuffered(f, write)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// writeBuffered runs write through a 1 MiB buffer on w and flushes it.
func writeBuffered(w io.Writer, write func(io.Writer) error) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := write(bw); err != nil {
		return err
	}
	return bw.Flush()
}

// writeAtomic is WriteFileAtomic with mode 0644, what every file of a checkpoint gets.
func writeAtomic(path string, write func(io.Writer) error) error {
	return WriteFileAtomic(path, 0o644, write)
}

// syncDir fsyncs a directory so that renames into it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ReplaceDir builds the directory dir all at once, so that a crash or an error never leaves
// it half-written: build fills a new, empty directory made beside dir (in dir's parent,
// created if need be) under a temporary name, prefix followed by random characters (mode
// 0755; the caller picks prefix so that it can recognise and remove what a killed build
// leaves, for instance "."+filepath.Base(dir)+".tmp-"). That directory is then fsynced and
// put in dir's place: where dir does not exist, by a rename; where it does, the two are
// exchanged atomically (renameat2 RENAME_EXCHANGE) and the old one is removed, or, where the
// kernel or file system cannot exchange, the old dir is first renamed aside to the temporary
// name + ".old", so that a crash leaves it whole there. On any error the temporary directory
// is removed and an existing dir is as it was. build's error is returned as it is; the
// others name dir.
func ReplaceDir(dir, prefix string, build func(tmp string) error) (err error) {
	dir = filepath.Clean(dir)
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("replacing directory %s: %w", dir, err)
	}
	tmp, err := os.MkdirTemp(parent, prefix)
	if err != nil {
		return fmt.Errorf("replacing directory %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("replacing directory %s: %w", dir, err)
	}
	if err := build(tmp); err != nil {
		return err
	}
	if err := syncDir(tmp); err != nil {
		return fmt.Errorf("replacing directory %s: %w", dir, err)
	}
	if err := swapDir(tmp, dir); err != nil {
		return fmt.Errorf("replacing directory %s: %w", dir, err)
	}
	return nil
}

// swapDir moves the finished directory tmp to dir (see ReplaceDir).
func swapDir(tmp, dir string) error {
	parent := filepath.Dir(dir)
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.Rename(tmp, dir); err != nil {
			return err
		}
		return syncDir(parent)
	}
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dir, unix.RENAME_EXCHANGE)
	old := tmp // after the exchange, tmp holds the previous directory
	if err != nil {
		old = tmp + ".old"
		if err := os.Rename(dir, old); err != nil {
			return err
		}
		if err := os.Rename(tmp, dir); err != nil {
			os.Rename(old, dir)
			return err
		}
	}
	if err := syncDir(parent); err != nil {
		return err
	}
	return os.RemoveAll(old)
}
