package kern

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// byteInstr is one instruction the Go assembler does not know, written as BYTE directives with
// the instruction in Go's syntax as the line's comment.
type byteInstr struct {
	where string // file:line
	bytes []byte
	goAsm string
}

var (
	byteRe  = regexp.MustCompile(`BYTE \$0x([0-9a-f]{2})`)
	memRe   = regexp.MustCompile(`^(-?\d*)\((\w+)\)(?:\((\w+)\*(\d)\))?$`)
	gnuRegs = map[string]string{"AX": "rax", "BX": "rbx", "CX": "rcx", "DX": "rdx", "SI": "rsi", "DI": "rdi", "BP": "rbp", "SP": "rsp"}
)

// byteInstrs collects the BYTE-encoded instructions of the package's assembly files.
func byteInstrs(t *testing.T) []byteInstr {
	t.Helper()
	files, err := filepath.Glob("*.s")
	if err != nil {
		t.Fatal(err)
	}
	var out []byteInstr
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(src), "\n") {
			code, comment, ok := strings.Cut(line, "//")
			if !ok || !strings.Contains(code, "BYTE $") {
				continue
			}
			var bs []byte
			for _, m := range byteRe.FindAllStringSubmatch(code, -1) {
				v, _ := strconv.ParseUint(m[1], 16, 8)
				bs = append(bs, byte(v))
			}
			out = append(out, byteInstr{fmt.Sprintf("%s:%d", f, i+1), bs, strings.TrimSpace(comment)})
		}
	}
	return out
}

// gnuSyntax writes a Go-syntax instruction (operands in the same order as AT&T's) for GNU as:
// Zn -> %zmmn, TMMn -> %tmmn, AX -> %rax, disp(B)(I*s) -> disp(%b,%i,s).
func gnuSyntax(goAsm string) (string, error) {
	op, args, _ := strings.Cut(goAsm, " ")
	var ops []string
	for _, a := range strings.Split(args, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		reg := func(r string) (string, error) {
			switch {
			case strings.HasPrefix(r, "TMM"):
				return "%tmm" + r[3:], nil
			case strings.HasPrefix(r, "Z"):
				return "%zmm" + r[1:], nil
			case gnuRegs[r] != "":
				return "%" + gnuRegs[r], nil
			}
			return "", fmt.Errorf("register %q of %q", r, goAsm)
		}
		if m := memRe.FindStringSubmatch(a); m != nil {
			b, err := reg(m[2])
			if err != nil {
				return "", err
			}
			mem := m[1] + "(" + b
			if m[3] != "" {
				x, err := reg(m[3])
				if err != nil {
					return "", err
				}
				mem += "," + x + "," + m[4]
			}
			ops = append(ops, mem+")")
			continue
		}
		r, err := reg(a)
		if err != nil {
			return "", err
		}
		ops = append(ops, r)
	}
	return strings.ToLower(op) + " " + strings.Join(ops, ", "), nil
}

// TestByteEncodings assembles the comment of every BYTE-encoded instruction (VDPBF16PS,
// VCVTNE2PS2BF16, XGETBV and the AMX instructions LDTILECFG, TILELOADD, TILESTORED, TILEZERO,
// TDPBF16PS, TILERELEASE) with GNU as and checks that it gives the bytes written. It needs GNU
// binutils (as, objcopy); with PROLONG_REQUIRE_BINUTILS=1 (scripts/test-env.sh) their absence
// fails.
func TestByteEncodings(t *testing.T) {
	ins := byteInstrs(t)
	seen := map[string]bool{}
	for _, in := range ins {
		seen[strings.Fields(in.goAsm)[0]] = true
	}
	for _, op := range []string{"VDPBF16PS", "VCVTNE2PS2BF16", "XGETBV", "LDTILECFG", "TILELOADD", "TILESTORED", "TILEZERO", "TDPBF16PS", "TILERELEASE"} {
		if !seen[op] {
			t.Errorf("no BYTE-encoded %s found in the assembly files", op)
		}
	}
	asPath, err1 := exec.LookPath("as")
	objcopy, err2 := exec.LookPath("objcopy")
	if err1 != nil || err2 != nil {
		if os.Getenv("PROLONG_REQUIRE_BINUTILS") == "1" {
			t.Fatalf("PROLONG_REQUIRE_BINUTILS=1 but GNU as or objcopy is missing: %v %v", err1, err2)
		}
		t.Skip("GNU as and objcopy not found (apt-get install binutils): the instruction bytes are not checked")
	}
	var src bytes.Buffer
	var want []byte
	src.WriteString(".text\n")
	for _, in := range ins {
		g, err := gnuSyntax(in.goAsm)
		if err != nil {
			t.Fatalf("%s: %v", in.where, err)
		}
		fmt.Fprintf(&src, "%s\n", g)
		want = append(want, in.bytes...)
	}
	dir := t.TempDir()
	s, o, bin := filepath.Join(dir, "x.s"), filepath.Join(dir, "x.o"), filepath.Join(dir, "x.bin")
	if err := os.WriteFile(s, src.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(asPath, "--64", "-o", o, s).CombinedOutput(); err != nil {
		t.Fatalf("as: %v\n%s", err, out)
	}
	if out, err := exec.Command(objcopy, "-O", "binary", "-j", ".text", o, bin).CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s", err, out)
	}
	got, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	off := 0
	for _, in := range ins {
		n := len(in.bytes)
		if off+n > len(got) || !bytes.Equal(got[off:off+n], in.bytes) {
			end := min(off+n, len(got))
			t.Fatalf("%s: %s is written % x, GNU as gives % x", in.where, in.goAsm, in.bytes, got[off:end])
		}
		off += n
	}
	if off != len(got) {
		t.Fatalf("GNU as gave %d bytes, the BYTE directives %d", len(got), off)
	}
	t.Logf("%d BYTE-encoded instructions match GNU as", len(ins))
}
