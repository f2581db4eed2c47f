package reward

import "golang.org/x/sys/unix"

// The calls amd64 has and arm64 lacks.
func init() {
	hostSyscalls["iopl"] = unix.SYS_IOPL
	hostSyscalls["ioperm"] = unix.SYS_IOPERM
	hostSyscalls["uselib"] = unix.SYS_USELIB
}
