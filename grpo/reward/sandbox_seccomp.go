package reward

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The seccomp filter of sandboxed runs: a classic BPF program, installed by the run's init just
// before it execs Python, that the kernel runs on every system call of the run's processes.
// Namespaces and an empty capability set keep a run from the host; the filter keeps it from the
// kernel code that container escapes go through, which a run could otherwise reach by making a
// user namespace of its own (where it holds every capability: issue 30). It is a deny list, as
// nsjail's and bubblewrap's are, so that any Python program runs unchanged:
//
//   - a system call of another ABI than the machine's (i386 or x32 on amd64, arm32 on arm64)
//     kills the process: the deny list names the native numbers only, and a program would use
//     another ABI only to get around it;
//   - clone3 fails with ENOSYS (its flags lie in memory, out of the filter's reach), so that libc
//     falls back to clone, as under Docker's and systemd's filters;
//   - clone with a namespace flag, socket of a family other than AF_UNIX, AF_INET and AF_INET6 or
//     of a type other than stream, datagram and seqpacket (no raw, packet or netlink sockets),
//     socketpair other than AF_UNIX, and every call of seccompDenied fail with EPERM;
//   - everything else is allowed.
//
// The program is written by hand with golang.org/x/net/bpf, whose assembler encodes it and whose
// interpreter the tests run it in (TestSeccompFilter). github.com/elastic/go-seccomp-bpf (v1.6.0)
// was weighed and left: it returns EPERM for every denial (no ENOSYS for clone3), and a system
// call of a foreign ABI takes the policy's default action, which for a deny list is ALLOW.

// seccompData offsets (linux/seccomp.h): struct seccomp_data { int nr; __u32 arch;
// __u64 instruction_pointer; __u64 args[6]; }.
const (
	seccompNrOff   = 0
	seccompArchOff = 4
	seccompArgsOff = 16
)

// Filter return values (linux/seccomp.h).
const (
	seccompRetKillProcess = 0x80000000
	seccompRetErrno       = 0x00050000
	seccompRetAllow       = 0x7fff0000
)

// seccompArch describes one architecture's system call ABI to the filter.
type seccompArch struct {
	name  string
	audit uint32 // AUDIT_ARCH_* of the native ABI, seccomp_data.arch
	// x32Bit, when not 0, marks system call numbers of the x32 ABI, which share the native
	// arch value (amd64's __X32_SYSCALL_BIT).
	x32Bit uint32
	// nr maps the system call names the filter uses to this ABI's numbers.
	nr map[string]uint32
}

// The numbers are those of the kernel's syscall tables (arch/x86/entry/syscalls/syscall_64.tbl,
// include/uapi/asm-generic/unistd.h); TestSeccompNumbers checks the machine's own against x/sys.
var (
	seccompAMD64 = seccompArch{name: "amd64", audit: 0xc000003e /* AUDIT_ARCH_X86_64 */, x32Bit: 0x40000000, nr: map[string]uint32{
		"unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
		"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
		"mount_setattr": 442, "open_tree_attr": 467,
		"ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438,
		"perf_event_open": 298, "bpf": 321, "keyctl": 250, "add_key": 248, "request_key": 249,
		"init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320,
		"userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
		"open_by_handle_at": 304, "quotactl": 179, "quotactl_fd": 443, "swapon": 167, "swapoff": 168,
		"reboot": 169, "acct": 163, "syslog": 103, "fanotify_init": 300, "iopl": 172, "ioperm": 173, "uselib": 134,
		"clone": 56, "clone3": 435, "socket": 41, "socketpair": 53,
	}}
	seccompARM64 = seccompArch{name: "arm64", audit: 0xc00000b7 /* AUDIT_ARCH_AARCH64 */, nr: map[string]uint32{
		"unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
		"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
		"mount_setattr": 442, "open_tree_attr": 467,
		"ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_getfd": 438,
		"perf_event_open": 241, "bpf": 280, "keyctl": 219, "add_key": 217, "request_key": 218,
		"init_module": 105, "finit_module": 273, "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294,
		"userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
		"open_by_handle_at": 265, "quotactl": 60, "quotactl_fd": 443, "swapon": 224, "swapoff": 225,
		"reboot": 142, "acct": 89, "syslog": 116, "fanotify_init": 262,
		"clone": 220, "clone3": 435, "socket": 198, "socketpair": 199,
	}}
)

// seccompDenied are the system calls a run may not make at all (EPERM), where the ABI has them.
var seccompDenied = []string{
	// Namespaces and mounts: a run keeps those it was given.
	"unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
	"open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "open_tree_attr",
	// Other processes' memory, the kernel's tracing and its in-kernel programs.
	"ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "perf_event_open", "bpf",
	// The kernel's key store.
	"keyctl", "add_key", "request_key",
	// Kernel modules and kernels.
	"init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
	// Interfaces that exploits use to widen races or to get around this filter (io_uring makes
	// sockets and opens files without system calls).
	"userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
	// Administration.
	"open_by_handle_at", "quotactl", "quotactl_fd", "swapon", "swapoff", "reboot", "acct", "syslog",
	"fanotify_init", "iopl", "ioperm", "uselib",
}

// seccompCloneNamespaces are the clone flags that make namespaces (linux/sched.h).
const seccompCloneNamespaces = unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC |
	unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET

// seccompArchOf returns the filter's description of the architecture goarch.
func seccompArchOf(goarch string) (seccompArch, error) {
	switch goarch {
	case "amd64":
		return seccompAMD64, nil
	case "arm64":
		return seccompARM64, nil
	}
	return seccompArch{}, fmt.Errorf("no seccomp filter for GOARCH=%s (the sandbox supports amd64 and arm64)", goarch)
}

// bpfProgram assembles classic BPF with forward jumps to named labels.
type bpfProgram struct {
	ins    []bpf.Instruction
	labels map[string]int
	jumps  []bpfJump
}

// bpfJump is a jump at ins[at] to label to (when its condition holds, for a JumpIf).
type bpfJump struct {
	at int
	to string
}

func (p *bpfProgram) add(ins ...bpf.Instruction) { p.ins = append(p.ins, ins...) }

// jumpIf jumps to label when A cond val holds, else goes on.
func (p *bpfProgram) jumpIf(cond bpf.JumpTest, val uint32, label string) {
	p.jumps = append(p.jumps, bpfJump{len(p.ins), label})
	p.add(bpf.JumpIf{Cond: cond, Val: val})
}

// jump jumps to label.
func (p *bpfProgram) jump(label string) {
	p.jumps = append(p.jumps, bpfJump{len(p.ins), label})
	p.add(bpf.Jump{})
}

func (p *bpfProgram) label(name string) {
	if p.labels == nil {
		p.labels = map[string]int{}
	}
	p.labels[name] = len(p.ins)
}

// resolve fills in the jumps' offsets.
func (p *bpfProgram) resolve() ([]bpf.Instruction, error) {
	for _, j := range p.jumps {
		to, ok := p.labels[j.to]
		skip := to - j.at - 1
		if !ok || skip < 0 {
			return nil, fmt.Errorf("seccomp filter: jump at %d to %q: no such label ahead", j.at, j.to)
		}
		switch ins := p.ins[j.at].(type) {
		case bpf.JumpIf:
			if skip > 255 {
				return nil, fmt.Errorf("seccomp filter: jump at %d to %q is %d instructions, over 255", j.at, j.to, skip)
			}
			ins.SkipTrue = uint8(skip)
			p.ins[j.at] = ins
		case bpf.Jump:
			p.ins[j.at] = bpf.Jump{Skip: uint32(skip)}
		}
	}
	return p.ins, nil
}

// seccompArgLow loads the low 32 bits of system call argument i (little-endian machines: the
// first word). The arguments the filter inspects are ints and the clone flags, whose namespace
// bits lie in the low word.
func seccompArgLow(i uint32) bpf.Instruction {
	return bpf.LoadAbsolute{Off: seccompArgsOff + 8*i, Size: 4}
}

// seccompFilter returns the sandbox's filter for arch (see the top of this file).
func seccompFilter(arch seccompArch) ([]bpf.Instruction, error) {
	var p bpfProgram
	p.add(bpf.LoadAbsolute{Off: seccompArchOff, Size: 4})
	p.jumpIf(bpf.JumpNotEqual, arch.audit, "kill")
	p.add(bpf.LoadAbsolute{Off: seccompNrOff, Size: 4})
	if arch.x32Bit != 0 {
		p.jumpIf(bpf.JumpBitsSet, arch.x32Bit, "kill")
	}
	for _, name := range seccompDenied {
		if nr, ok := arch.nr[name]; ok {
			p.jumpIf(bpf.JumpEqual, nr, "eperm")
		}
	}
	p.jumpIf(bpf.JumpEqual, arch.nr["clone3"], "enosys")
	p.jumpIf(bpf.JumpEqual, arch.nr["clone"], "clone")
	p.jumpIf(bpf.JumpEqual, arch.nr["socket"], "socket")
	p.jumpIf(bpf.JumpEqual, arch.nr["socketpair"], "socketpair")
	p.jump("allow")

	p.label("clone") // clone(flags, ...): flags is the first argument on amd64 and arm64
	p.add(seccompArgLow(0))
	p.jumpIf(bpf.JumpBitsSet, seccompCloneNamespaces, "eperm")
	p.jump("allow")

	p.label("socket") // socket(domain, type, protocol)
	p.add(seccompArgLow(0))
	p.jumpIf(bpf.JumpEqual, unix.AF_UNIX, "socket-type")
	p.jumpIf(bpf.JumpEqual, unix.AF_INET, "socket-type")
	p.jumpIf(bpf.JumpEqual, unix.AF_INET6, "socket-type")
	p.jump("eperm")
	p.label("socket-type")
	p.add(seccompArgLow(1), bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xf}) // SOCK_TYPE_MASK: less SOCK_NONBLOCK, SOCK_CLOEXEC
	p.jumpIf(bpf.JumpEqual, unix.SOCK_STREAM, "allow")
	p.jumpIf(bpf.JumpEqual, unix.SOCK_DGRAM, "allow")
	p.jumpIf(bpf.JumpEqual, unix.SOCK_SEQPACKET, "allow")
	p.jump("eperm")

	p.label("socketpair") // socketpair(domain, type, protocol, sv)
	p.add(seccompArgLow(0))
	p.jumpIf(bpf.JumpEqual, unix.AF_UNIX, "allow")
	p.jump("eperm")

	p.label("allow")
	p.add(bpf.RetConstant{Val: seccompRetAllow})
	p.label("eperm")
	p.add(bpf.RetConstant{Val: seccompRetErrno | uint32(unix.EPERM)})
	p.label("enosys")
	p.add(bpf.RetConstant{Val: seccompRetErrno | uint32(unix.ENOSYS)})
	p.label("kill")
	p.add(bpf.RetConstant{Val: seccompRetKillProcess})
	return p.resolve()
}

// installSeccomp sets no_new_privs and installs the sandbox's filter on every thread of this
// process (TSYNC), for what it execs next. It is called by the run's init, on the OS thread that
// will exec.
func installSeccomp() error {
	arch, err := seccompArchOf(runtime.GOARCH)
	if err != nil {
		return err
	}
	ins, err := seccompFilter(arch)
	if err != nil {
		return err
	}
	raw, err := bpf.Assemble(ins)
	if err != nil {
		return fmt.Errorf("seccomp filter: %w", err)
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		filter[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	tid, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog)))
	runtime.KeepAlive(filter)
	if errno != 0 {
		return fmt.Errorf("installing the seccomp filter: %w (the kernel needs CONFIG_SECCOMP_FILTER; a container's own filter may forbid seccomp(2))", errno)
	}
	if tid != 0 { // TSYNC names the thread it could not bring under the filter
		return fmt.Errorf("installing the seccomp filter: thread %d could not take it", tid)
	}
	return nil
}
