//go:build amd64

package kern

import (
	"errors"
	"strings"
	"testing"
)

// TestAMXCheck: the start-up decision with each refusal fed in, and its reasons.
func TestAMXCheck(t *testing.T) {
	xcrAMX := func() uint64 { return 0x602e7 } // x87, SSE, AVX, AVX-512 and bits 17, 18
	ok := func() error { return nil }
	for _, tc := range []struct {
		name      string
		tile, bf  bool
		xcr0      func() uint64
		request   func() error
		want      bool
		reasonHas string
	}{
		{"no AMX", false, false, xcrAMX, ok, false, "the CPU has no AMX"},
		{"AMX-TILE without AMX-BF16", true, false, xcrAMX, ok, false, "AMX-BF16 false"},
		{"the OS does not enable it", true, true, func() uint64 { return 0xe7 }, ok, false, "XCR0 0xe7 lacks bits 17 and 18"},
		{"refused", true, true, xcrAMX, func() error { return errors.New("no space left on device") }, false, "refused the AMX tile data (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)): no space left on device"},
		{"granted", true, true, xcrAMX, ok, true, "in use"},
	} {
		asked := false
		req := func() error { asked = true; return tc.request() }
		got, why := amxCheck(tc.tile, tc.bf, tc.xcr0, req)
		if got != tc.want || !strings.Contains(why, tc.reasonHas) {
			t.Errorf("%s: amxCheck = %v, %q; want %v, a reason with %q", tc.name, got, why, tc.want, tc.reasonHas)
		}
		if asked != (tc.tile && tc.bf && tc.xcr0()&(3<<17) == 3<<17) {
			t.Errorf("%s: the permission was asked: %v", tc.name, asked)
		}
	}
	// This machine's decision matches its path list.
	_, have := impls["amx"]
	if have != amxOK {
		t.Errorf("amx path present %v, amxOK %v (%s)", have, amxOK, AMXStatus())
	}
	t.Logf("AMX on this machine: %s", AMXStatus())
}

// TestDotAutoRule: which paths the automatic choice multiplies bf16 weights on as dot products:
// AMX always, VDPBF16PS on AMD only (slower than the fp32 path on Intel, issue 36), never the
// emulation; and this machine's paths follow it.
func TestDotAutoRule(t *testing.T) {
	for vendor, want := range map[string]bool{"AuthenticAMD": true, "GenuineIntel": false, "HygonGenuine": false, "": false} {
		if got := dotAutoVDPBF16(vendor); got != want {
			t.Errorf("dotAutoVDPBF16(%q) = %v, want %v", vendor, got, want)
		}
	}
	for _, isa := range ISAs() {
		restore := SetISA(isa)
		want := false
		switch BF16DotEngine() {
		case "amx":
			want = true
		case "avx512-bf16":
			want = cpuVendor() == "AuthenticAMD"
		}
		if got := BF16DotPreferred(); got != want {
			t.Errorf("%s (%s, %s): BF16DotPreferred = %v, want %v", isa, BF16DotEngine(), cpuVendor(), got, want)
		}
		restore()
	}
	t.Logf("vendor %s, paths %v, bf16 dot engine %s, preferred %v", cpuVendor(), ISAs(), BF16DotEngine(), BF16DotPreferred())
}
