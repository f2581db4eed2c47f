package reward

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// The sandbox's init: Sandbox.Run starts this very binary (/proc/self/exe) with argv[0] set to
// sandboxInitName, in new user, mount, PID, network, IPC, UTS and cgroup namespaces, as root of
// its user namespace. Package initialisation hands over to sandboxInit before main (or the test
// runner) starts, so every binary that links this package, test binaries included, can be the
// sandbox's init. The init builds a private root, forbids nested namespaces, drops every
// privilege, installs the seccomp filter (sandbox_seccomp.go) and execs Python, which
// becomes PID 1 of the run's PID namespace: when it exits, the kernel kills whatever it left.
//
// Its command line is: sandboxInitName TMPFS-BYTES PROGRAM ARGS...; fd 3 holds the run's files
// as a JSON object (name -> content), fd 4 takes the text of an error when set-up fails (it is
// closed by a successful exec, so the program never holds it).
const sandboxInitName = "prolong-sandbox-init"

// sandboxFilterName is argv[0] of the filter's own init, for runs without namespaces
// (AllowUnsandboxed): it installs the seccomp filter (sandbox_seccomp.go) and execs its
// command line, PROGRAM ARGS... Its set-up error goes to stderr, after "prolong-sandbox-filter: ".
const sandboxFilterName = "prolong-sandbox-filter"

// Paths inside the sandbox.
const (
	sandboxDir = "/sandbox" // the run's directory: its files, cwd and HOME
	stagingDir = "/tmp"     // where the new root is mounted before pivot_root (in the run's own mount namespace)
)

// runtimeDirs are the host directories bound read-only into the sandbox (those that exist; a
// symbolic link, as /bin -> usr/bin on merged-/usr systems, is copied as a link). Debian's
// /etc/alternatives holds only links, which libraries such as numpy's BLAS are found through.
var runtimeDirs = []string{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/alternatives"}

// devNodes are the host devices bound into the sandbox's /dev.
var devNodes = []string{"null", "zero", "full", "random", "urandom"}

func init() {
	if len(os.Args) > 0 && os.Args[0] == sandboxInitName {
		sandboxInit()
	}
	if len(os.Args) > 1 && os.Args[0] == sandboxFilterName {
		sandboxFilter()
	}
}

// sandboxFilter installs the seccomp filter and execs os.Args[1:]; it returns only by exiting.
func sandboxFilter() {
	runtime.LockOSThread()
	err := installSeccomp()
	if err == nil {
		err = syscall.Exec(os.Args[1], os.Args[1:], os.Environ())
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", sandboxFilterName, err)
	os.Exit(127)
}

// sandboxInit sets the sandbox up and execs the program; it returns only by exiting.
func sandboxInit() {
	// Securebits, the bounding set and no_new_privs belong to a thread; exec must follow on it.
	runtime.LockOSThread()
	status := os.NewFile(4, "status")
	syscall.CloseOnExec(4)
	err := enterSandbox(os.Args[1:])
	if err == nil {
		// Last, as it forbids mount(2): the filter (sandbox_seccomp.go), for Python and all it starts.
		err = installSeccomp()
	}
	if err == nil {
		err = syscall.Exec(os.Args[2], os.Args[2:], os.Environ())
		err = fmt.Errorf("exec %s: %w (the interpreter must lie under %v, the sandbox's read-only runtime)", os.Args[2], err, runtimeDirs)
	}
	fmt.Fprint(status, err)
	os.Exit(127)
}

// enterSandbox builds the private root, moves into it, and drops privileges.
func enterSandbox(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: %s TMPFS-BYTES PROGRAM ARGS", sandboxInitName)
	}
	tmpfsBytes, err := strconv.ParseInt(args[0], 10, 64)
	if err != nil {
		return fmt.Errorf("tmpfs size: %w", err)
	}
	files, err := readRunFiles(os.NewFile(3, "files"))
	if err != nil {
		return err
	}
	if err := buildRoot(stagingDir, tmpfsBytes, files); err != nil {
		return err
	}
	if err := pivotInto(stagingDir); err != nil {
		return err
	}
	if err := forbidNamespaces("/proc/sys/user"); err != nil {
		return err
	}
	return dropPrivileges()
}

func readRunFiles(f *os.File) (map[string]string, error) {
	defer f.Close()
	var files map[string]string
	if err := json.NewDecoder(f).Decode(&files); err != nil {
		return nil, fmt.Errorf("reading the run's files: %w", err)
	}
	return files, nil
}

// buildRoot mounts a size-limited tmpfs on root and fills it: the read-only runtime, a fresh
// /proc of the run's PID namespace, a minimal /dev, a world-writable /tmp and /dev/shm, and the
// run's directory with its files. The tmpfs is the only writable file system the program gets;
// it disappears with the run's mount namespace.
func buildRoot(root string, tmpfsBytes int64, files map[string]string) error {
	steps := []struct {
		what string
		err  func() error
	}{
		{"making the mount tree private", func() error { return unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "") }},
		{"mounting the run's tmpfs", func() error {
			return unix.Mount("prolong-sandbox", root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV,
				fmt.Sprintf("size=%d,nr_inodes=4096,mode=0755", tmpfsBytes))
		}},
		{"setting the host name", func() error { return unix.Sethostname([]byte("sandbox")) }},
		{"binding the runtime", func() error { return bindRuntime(root) }},
		{"making directories", func() error { return makeDirs(root) }},
		{"mounting /proc", func() error {
			return unix.Mount("proc", filepath.Join(root, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
		}},
		{"populating /dev", func() error { return populateDev(filepath.Join(root, "dev")) }},
		{"writing the run's files", func() error { return writeRunFiles(filepath.Join(root, sandboxDir), files) }},
	}
	for _, s := range steps {
		if err := s.err(); err != nil {
			return fmt.Errorf("%s: %w", s.what, err)
		}
	}
	return nil
}

func bindRuntime(root string) error {
	for _, dir := range runtimeDirs {
		fi, err := os.Lstat(dir)
		switch {
		case os.IsNotExist(err):
			continue
		case err != nil:
			return err
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(dir)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(filepath.Join(root, dir)), 0o755); err != nil {
				return err
			}
			if err := os.Symlink(target, filepath.Join(root, dir)); err != nil {
				return err
			}
		case fi.IsDir():
			if err := bindReadOnly(dir, filepath.Join(root, dir)); err != nil {
				return err
			}
		}
	}
	return nil
}

// bindReadOnly binds the host directory src on dst (made here) and makes the binding read-only,
// nosuid and nodev. A remount in a user namespace must keep the source's locked flags (atime
// and noexec), so they are carried over from statfs.
func bindReadOnly(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dst, &st); err != nil {
		return err
	}
	keep := uintptr(st.Flags) & (unix.MS_NOATIME | unix.MS_NODIRATIME | unix.MS_RELATIME | unix.MS_NOEXEC)
	flags := unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | keep
	if err := unix.Mount("", dst, "", flags, ""); err != nil {
		return fmt.Errorf("remount %s read-only: %w", src, err)
	}
	return nil
}

func makeDirs(root string) error {
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{"proc", 0o555}, {"dev", 0o755}, {"dev/shm", 0o1777}, {"tmp", 0o1777}, {sandboxDir[1:], 0o755}} {
		p := filepath.Join(root, d.path)
		if err := os.Mkdir(p, d.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, d.mode); err != nil { // past the umask, with the sticky bit
			return err
		}
	}
	return nil
}

func populateDev(dev string) error {
	for _, name := range devNodes {
		p := filepath.Join(dev, name)
		if err := os.WriteFile(p, nil, 0o666); err != nil {
			return err
		}
		if err := unix.Mount("/dev/"+name, p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", name, err)
		}
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	return nil
}

func writeRunFiles(dir string, files map[string]string) error {
	for name, content := range files {
		if !plainFileName(name) {
			return fmt.Errorf("file name %q is not a plain name", name)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// pivotInto makes root the root of the mount namespace and detaches the host's tree, so that
// nothing of it can be reached again (pivot_root(".", ".") stacks the old root on the new one).
func pivotInto(root string) error {
	if err := unix.Chdir(root); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the host's root: %w", err)
	}
	return unix.Chdir(sandboxDir)
}

// nestedNamespaceLimits are the sysctls (under /proc/sys/user) that bound how many namespaces of
// each kind the run's user namespace and those below it may make.
var nestedNamespaceLimits = []string{"max_user_namespaces", "max_mnt_namespaces", "max_pid_namespaces",
	"max_net_namespaces", "max_ipc_namespaces", "max_uts_namespaces", "max_cgroup_namespaces", "max_time_namespaces"}

// forbidNamespaces sets every limit of nestedNamespaceLimits to 0 in the run's own user
// namespace (they are per user namespace; the run's init holds CAP_SYS_RESOURCE there until its
// exec, the program never does, so it cannot raise them again). With them, a run can make no
// namespace even where the seccomp filter would let it; a limit the kernel lacks is skipped.
func forbidNamespaces(dir string) error {
	for _, name := range nestedNamespaceLimits {
		err := os.WriteFile(filepath.Join(dir, name), []byte("0"), 0)
		if err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("forbidding nested namespaces: %w", err)
		}
	}
	return nil
}

// dropPrivileges leaves the program no capabilities, even as root of its user namespace: it
// empties the bounding set, sets no_new_privs (no set-user-ID or file-capability gains), and
// locks SECBIT_NOROOT so that exec grants uid 0 nothing. The parent-death signal is set again
// because changes of credentials clear it.
func dropPrivileges() error {
	for c := 0; ; c++ { // up to the kernel's last capability, which answers EINVAL after it
		err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0)
		if err == unix.EINVAL {
			break
		}
		if err != nil {
			return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	const secbitNoroot, secbitNorootLocked = 1 << 0, 1 << 1 // linux/securebits.h
	const secbits = secbitNoroot | secbitNorootLocked
	if err := unix.Prctl(unix.PR_SET_SECUREBITS, secbits, 0, 0, 0); err != nil {
		return fmt.Errorf("securebits: %w", err)
	}
	return unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0)
}
