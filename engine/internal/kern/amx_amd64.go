//go:build amd64

package kern

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/cpu"
)

// amxDotBF16 is the AMX micro-kernel (gemm_amd64.s, generated): see amxKernel.
//
//go:noescape
func amxDotBF16(cfg *tileConfig, a, b *uint32, c *float32, kb, lda, ldc, mt int)

func cpuidAsm(leaf, sub uint32) (a, b, c, d uint32)

func xgetbv0() (eax, edx uint32)

// cpuVendor returns CPUID leaf 0's vendor string ("GenuineIntel", "AuthenticAMD", ...).
func cpuVendor() string {
	_, b, c, d := cpuidAsm(0, 0)
	var v [12]byte
	binary.LittleEndian.PutUint32(v[0:], b)
	binary.LittleEndian.PutUint32(v[4:], d)
	binary.LittleEndian.PutUint32(v[8:], c)
	return string(v[:])
}

// XCR0 bits of the AMX state components: XTILECFG (17) and XTILEDATA (18).
const (
	xfeatureXTileCfg  = 17
	xfeatureXTileData = 18
)

// amxCheck is the decision, taken once at start-up, whether the amx path can run: the CPU has
// AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22), the OS enables their state in XCR0
// (bits 17 and 18), and Linux grants the process the tile data (arch_prctl(ARCH_REQ_XCOMP_PERM,
// XFEATURE_XTILEDATA), asked once, for every thread of the process). When one of them fails the
// path is left out, bf16 dot products run on VDPBF16PS, and AMXStatus says why.
var amxOK, amxWhy = amxCheck(cpu.X86.HasAMXTile, cpu.X86.HasAMXBF16, xcr0, requestAMX)

func xcr0() uint64 {
	if !cpu.X86.HasOSXSAVE {
		return 0
	}
	a, d := xgetbv0()
	return uint64(d)<<32 | uint64(a)
}

// amxCheck applies the rule of amxOK to what the CPU, XCR0 and the permission request report
// (functions, so that tests can feed it every refusal).
func amxCheck(tile, bf16 bool, xcr0 func() uint64, request func() error) (bool, string) {
	if !tile || !bf16 {
		return false, fmt.Sprintf("the CPU has no AMX (CPUID leaf 7 EDX: AMX-TILE %v, AMX-BF16 %v)", tile, bf16)
	}
	const need = 1<<xfeatureXTileCfg | 1<<xfeatureXTileData
	if x := xcr0(); x&need != need {
		return false, fmt.Sprintf("the OS does not enable the AMX tile state (XCR0 %#x lacks bits 17 and 18)", x)
	}
	if err := request(); err != nil {
		return false, fmt.Sprintf("the OS refused the AMX tile data (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)): %v", err)
	}
	return true, "in use (AMX-TILE, AMX-BF16; tile data granted by the OS)"
}

// AMXStatus says whether the amx path is available and, if not, why (the CPU lacks AMX, the OS
// does not enable it, or refused the permission); bf16 dot products then use VDPBF16PS.
func AMXStatus() string { return amxWhy }

// AMXRefused reports whether the CPU has AMX but the amx path is unavailable (the OS does not
// enable the tile state or refused the permission): worth a warning, since bf16 dot products
// then run several times slower on VDPBF16PS.
func AMXRefused() bool { return cpu.X86.HasAMXTile && cpu.X86.HasAMXBF16 && !amxOK }
