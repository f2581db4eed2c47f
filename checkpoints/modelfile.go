package checkpoints

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The readers of model directories (Load here, onnx.Import, the tools' side files) open the
// files a directory names through OpenModelFile: a model directory is often someone else's
// download, and a symlink in it must not make a program read (and copy into its output) a
// file from elsewhere on the machine, nor a named pipe make it wait forever.

// ErrOutsideModel is wrapped by the errors of OpenModelFile for a file that resolves outside
// its model directory.
var ErrOutsideModel = errors.New("outside the model directory")

// ErrNotRegular is wrapped by the errors of OpenRegular and OpenModelFile for a path that is
// not a regular file (a named pipe, a device, a socket, a directory).
var ErrNotRegular = errors.New("not a regular file")

// ModelRoot is the directory that the files of the model directory dir must resolve into: dir
// with its symlinks resolved, or, for a snapshot of the Hugging Face cache
// (CACHE/models--ORG--NAME/snapshots/REVISION, whose files are relative symlinks to
// ../../blobs/), the repository folder models--ORG--NAME.
func ModelRoot(dir string) (string, error) {
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	snapshots := filepath.Dir(root)
	if filepath.Base(snapshots) == "snapshots" && strings.HasPrefix(filepath.Base(filepath.Dir(snapshots)), "models--") {
		return filepath.Dir(snapshots), nil
	}
	return root, nil
}

// OpenModelFile opens the file name of the model directory dir for reading. The file must
// resolve, after symlinks, inside ModelRoot(dir) (else the error wraps ErrOutsideModel and
// names where it leads), and be a regular file (else ErrNotRegular). Errors name the file;
// one that does not exist wraps os.ErrNotExist.
func OpenModelFile(dir, name string) (*os.File, error) {
	path := filepath.Join(dir, name)
	root, err := ModelRoot(dir)
	if err != nil {
		return nil, err
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, err
	}
	if rel, err := filepath.Rel(root, real); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return nil, fmt.Errorf("%s leads to %s, %w %s (copy the file into the directory instead of linking it)", path, real, ErrOutsideModel, root)
	}
	return openRegular(real, path)
}

// ReadModelFile reads the file name of the model directory dir (see OpenModelFile).
func ReadModelFile(dir, name string) ([]byte, error) {
	f, err := OpenModelFile(dir, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, name), err)
	}
	return b, nil
}

// OpenRegular opens path, a file a user named, for reading, when it is a regular file (a
// symlink to one is fine); anything else is an error that names path and wraps ErrNotRegular.
func OpenRegular(path string) (*os.File, error) { return openRegular(path, path) }

// openRegular opens real, shown as path in errors, refusing what is not a regular file. It is
// opened non-blocking, so that a regular file swapped for a named pipe after the Stat cannot
// block the open either; the file opened is checked again.
func openRegular(real, path string) (*os.File, error) {
	st, err := os.Stat(real)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, notRegular(path, st)
	}
	f, err := os.OpenFile(real, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st2, err := f.Stat()
	if err == nil && !os.SameFile(st, st2) { // the same file is still a regular one
		err = fmt.Errorf("%s changed while it was opened", path)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func notRegular(path string, st os.FileInfo) error {
	kind := "a special file"
	switch t := st.Mode().Type(); {
	case t.IsDir():
		kind = "a directory"
	case t&os.ModeNamedPipe != 0:
		kind = "a named pipe"
	case t&os.ModeSocket != 0:
		kind = "a socket"
	case t&os.ModeDevice != 0:
		kind = "a device"
	}
	return fmt.Errorf("%s is %s, %w", path, kind, ErrNotRegular)
}
