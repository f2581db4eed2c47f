package reward

import (
	"context"
	"encoding/binary"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// seccompInput is a struct seccomp_data for bpf.VM. The kernel loads its 32-bit words in the
// machine's byte order (little-endian on amd64 and arm64: an argument's low word comes first);
// the VM loads them big-endian, as from a packet, so each word is stored big-endian at the
// offset where the kernel would find it.
func seccompInput(arch, nr uint32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[0:], nr)
	binary.BigEndian.PutUint32(b[4:], arch)
	for i, a := range args {
		binary.BigEndian.PutUint32(b[16+8*i:], uint32(a))
		binary.BigEndian.PutUint32(b[16+8*i+4:], uint32(a>>32))
	}
	return b
}

// seccompVM assembles the filter for arch as installSeccomp does, decodes the raw instructions
// again and loads them into x/net/bpf's interpreter: what is tested is what the kernel gets.
func seccompVM(t *testing.T, arch seccompArch) *bpf.VM {
	t.Helper()
	ins, err := seccompFilter(arch)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := bpf.Assemble(ins)
	if err != nil {
		t.Fatal(err)
	}
	decoded, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatalf("%s: the assembled filter does not decode", arch.name)
	}
	vm, err := bpf.NewVM(decoded)
	if err != nil {
		t.Fatalf("%s: %v", arch.name, err)
	}
	t.Logf("%s: %d instructions", arch.name, len(raw))
	return vm
}

// The filter's answers, as the kernel reads them (linux/seccomp.h: SECCOMP_RET_ALLOW,
// SECCOMP_RET_ERRNO | errno, SECCOMP_RET_KILL_PROCESS).
const (
	wantAllow  = 0x7fff0000
	wantEPERM  = 0x00050000 | 1
	wantENOSYS = 0x00050000 | 38
	wantKill   = 0x80000000
)

// TestSeccompFilter runs the sandbox's filter, for amd64 and for arm64, on system calls worked
// out by hand: what Python needs is allowed, what the filter denies fails with EPERM (clone3
// with ENOSYS), and another ABI than the native one kills the process.
func TestSeccompFilter(t *testing.T) {
	type call struct {
		name string
		nr   uint32
		args []uint64
		want int
	}
	const (
		sigchld     = 17
		threadFlags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD |
			unix.CLONE_SYSVSEM | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID | unix.CLONE_CHILD_CLEARTID // glibc's pthread_create
	)
	for _, tc := range []struct {
		arch seccompArch
		// Native numbers of calls the filter does not name: read, write, openat, execve, mmap, wait4.
		read, write, openat, execve, mmap, wait4 uint32
		// A foreign ABI's arch value and, for amd64, the x32 ABI's read.
		foreign, x32read uint32
	}{
		{seccompAMD64, 0, 1, 257, 59, 9, 61, 0x40000003 /* AUDIT_ARCH_I386 */, 0x40000000},
		{seccompARM64, 63, 64, 56, 221, 222, 260, 0x40000028 /* AUDIT_ARCH_ARM */, 0},
	} {
		a := tc.arch
		nr := a.nr
		calls := []call{
			{"read", tc.read, []uint64{0, 0x7ffc0000, 4096}, wantAllow},
			{"write", tc.write, []uint64{1, 0x7ffc0000, 12}, wantAllow},
			{"openat", tc.openat, []uint64{1<<64 - 100 /* AT_FDCWD */, 0x7ffc0000, unix.O_RDONLY | unix.O_CLOEXEC}, wantAllow},
			{"execve", tc.execve, nil, wantAllow},
			{"mmap", tc.mmap, []uint64{0, 1 << 20, 3, 0x22, ^uint64(0), 0}, wantAllow},
			{"wait4", tc.wait4, nil, wantAllow},
			{"clone fork", nr["clone"], []uint64{sigchld}, wantAllow},
			{"clone thread", nr["clone"], []uint64{threadFlags}, wantAllow},
			{"clone vfork", nr["clone"], []uint64{unix.CLONE_VM | unix.CLONE_VFORK | sigchld}, wantAllow},
			{"clone NEWUSER", nr["clone"], []uint64{unix.CLONE_NEWUSER | sigchld}, wantEPERM},
			{"clone NEWNS", nr["clone"], []uint64{unix.CLONE_NEWNS}, wantEPERM},
			{"clone NEWNET", nr["clone"], []uint64{unix.CLONE_NEWNET | threadFlags}, wantEPERM},
			{"clone NEWPID", nr["clone"], []uint64{unix.CLONE_NEWPID}, wantEPERM},
			{"clone NEWCGROUP", nr["clone"], []uint64{unix.CLONE_NEWCGROUP}, wantEPERM},
			{"clone NEWIPC|NEWUTS", nr["clone"], []uint64{unix.CLONE_NEWIPC | unix.CLONE_NEWUTS}, wantEPERM},
			{"clone, flags' high word only", nr["clone"], []uint64{1<<32 | sigchld}, wantAllow},
			{"clone3", nr["clone3"], []uint64{0x7ffc0000, 88}, wantENOSYS},
			{"socket AF_INET stream cloexec", nr["socket"], []uint64{unix.AF_INET, unix.SOCK_STREAM | unix.SOCK_CLOEXEC, 0}, wantAllow},
			{"socket AF_INET6 dgram nonblock", nr["socket"], []uint64{unix.AF_INET6, unix.SOCK_DGRAM | unix.SOCK_NONBLOCK, 0}, wantAllow},
			{"socket AF_UNIX seqpacket", nr["socket"], []uint64{unix.AF_UNIX, unix.SOCK_SEQPACKET, 0}, wantAllow},
			{"socket AF_INET, garbage in the int's high word", nr["socket"], []uint64{1<<32 | unix.AF_INET, unix.SOCK_STREAM, 0}, wantAllow},
			{"socket AF_INET raw", nr["socket"], []uint64{unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP}, wantEPERM},
			{"socket AF_INET6 raw cloexec", nr["socket"], []uint64{unix.AF_INET6, unix.SOCK_RAW | unix.SOCK_CLOEXEC, 58}, wantEPERM},
			{"socket AF_INET packet", nr["socket"], []uint64{unix.AF_INET, unix.SOCK_PACKET, 0}, wantEPERM},
			{"socket AF_UNIX rdm", nr["socket"], []uint64{unix.AF_UNIX, unix.SOCK_RDM, 0}, wantEPERM},
			{"socket AF_PACKET", nr["socket"], []uint64{unix.AF_PACKET, unix.SOCK_RAW, 0x0300}, wantEPERM},
			{"socket AF_PACKET dgram", nr["socket"], []uint64{unix.AF_PACKET, unix.SOCK_DGRAM, 0x0300}, wantEPERM},
			{"socket AF_NETLINK netfilter", nr["socket"], []uint64{unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_NETFILTER}, wantEPERM},
			{"socket AF_NETLINK route dgram", nr["socket"], []uint64{unix.AF_NETLINK, unix.SOCK_DGRAM, unix.NETLINK_ROUTE}, wantEPERM},
			{"socket AF_ALG", nr["socket"], []uint64{unix.AF_ALG, unix.SOCK_SEQPACKET, 0}, wantEPERM},
			{"socket AF_VSOCK", nr["socket"], []uint64{unix.AF_VSOCK, unix.SOCK_STREAM, 0}, wantEPERM},
			{"socketpair AF_UNIX", nr["socketpair"], []uint64{unix.AF_UNIX, unix.SOCK_STREAM | unix.SOCK_CLOEXEC, 0, 0x7ffc0000}, wantAllow},
			{"socketpair AF_NETLINK", nr["socketpair"], []uint64{unix.AF_NETLINK, unix.SOCK_RAW, 0, 0x7ffc0000}, wantEPERM},
			{"foreign ABI", tc.read, nil, wantKill},
		}
		for _, name := range seccompDenied {
			if n, ok := nr[name]; ok {
				calls = append(calls, call{name, n, []uint64{unix.CLONE_NEWUSER}, wantEPERM})
			}
		}
		if tc.x32read != 0 {
			calls = append(calls, call{"x32 read", tc.x32read, nil, wantKill},
				call{"x32 unshare", tc.x32read | nr["unshare"], []uint64{unix.CLONE_NEWUSER}, wantKill})
		}
		vm := seccompVM(t, a)
		for _, c := range calls {
			t.Run(a.name+"/"+c.name, func(t *testing.T) {
				arch := a.audit
				if c.name == "foreign ABI" {
					arch = tc.foreign
				}
				got, err := vm.Run(seccompInput(arch, c.nr, c.args...))
				if err != nil || got != c.want {
					t.Errorf("nr %d args %#x: %#x (%v), want %#x", c.nr, c.args, got, err, c.want)
				}
			})
		}
	}
}

// TestSeccompNumbers checks this machine's table of system call numbers against x/sys's, and
// that every call the filter names is in it.
func TestSeccompNumbers(t *testing.T) {
	arch, err := seccompArchOf(runtime.GOARCH)
	if err != nil {
		t.Skipf("no filter for this architecture: %v", err)
	}
	if len(hostSyscalls) != len(arch.nr) {
		t.Errorf("%d numbers in the %s table, %d to check", len(arch.nr), arch.name, len(hostSyscalls))
	}
	for name, want := range hostSyscalls {
		if got, ok := arch.nr[name]; !ok || uintptr(got) != want {
			t.Errorf("%s %s: %d (%v), x/sys says %d", arch.name, name, got, ok, want)
		}
	}
	for _, name := range append([]string{"clone", "clone3", "socket", "socketpair"}, seccompDenied...) {
		if _, ok := seccompAMD64.nr[name]; !ok {
			t.Errorf("amd64 table lacks %s", name)
		}
		if _, ok := seccompARM64.nr[name]; !ok && !strings.Contains(" iopl ioperm uselib ", " "+name+" ") {
			t.Errorf("arm64 table lacks %s", name)
		}
	}
	if _, err := seccompArchOf("riscv64"); err == nil || !strings.Contains(err.Error(), "GOARCH=riscv64") {
		t.Errorf("riscv64: %v, want an error naming it", err)
	}
}

// TestSeccompFilterInstalled: a process that installs the filter (the filter's own init,
// sandboxFilterName, running python3) is in seccomp mode 2, cannot make a user namespace and
// cannot open a netlink socket, and still runs what it is asked to.
func TestSeccompFilterInstalled(t *testing.T) {
	py := python3(t)
	src := `import ctypes, errno, socket
libc = ctypes.CDLL(None, use_errno=True)
st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
r = libc.unshare(0x10000000)
print(st["Seccomp"].strip(), st["NoNewPrivs"].strip(), r, errno.errorcode.get(ctypes.get_errno()))
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
except OSError as e:
    print(errno.errorcode[e.errno])
s = socket.socket()
s.close()
print("ok")
`
	out, err := filteredCommand(context.Background(), py, "-I", "-c", src).CombinedOutput()
	if got, want := string(out), "2 1 -1 EPERM\nEPERM\nok\n"; err != nil || got != want {
		t.Errorf("under the filter: %q (%v), want %q", got, err, want)
	}
}
