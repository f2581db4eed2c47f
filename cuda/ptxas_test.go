package cuda

import (
	"bufio"
	"flag"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The ptxas resource gate: every kernel compiled to a Hopper cubin by NVRTC (no GPU needed)
// must not spill registers to local memory, and must not use more registers, shared memory or
// stack than testdata/ptxas_sm90.txt allows. A kernel whose registers grow loses occupancy
// (65,536 registers per SM shared by the resident blocks), and a spill turns register traffic
// into memory traffic: both are speed regressions that only a GPU would show otherwise.

var updatePTXAS = flag.Bool("update-ptxas", false, "rewrite testdata/ptxas_sm90.txt from this NVRTC's ptxas report")

const ptxasBudgetFile = "testdata/ptxas_sm90.txt"

// ptxasBudgetNVRTC is the NVRTC whose ptxas made the budgets. Another version allocates
// registers its own way: with it the gate checks spills only and logs the rest.
const ptxasBudgetNVRTC = "11.8"

// ptxasUsage is what ptxas reports for one kernel.
type ptxasUsage struct {
	Registers   int
	SharedBytes int // static shared memory
	StackBytes  int // stack frame (local memory for arrays and calls)
	SpillStores int // bytes
	SpillLoads  int // bytes
}

var (
	ptxasEntryRe = regexp.MustCompile(`Compiling entry function '(\w+)' for '(\w+)'`)
	ptxasPropsRe = regexp.MustCompile(`Function properties for (\w+)`)
	ptxasFrameRe = regexp.MustCompile(`(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads`)
	ptxasUsedRe  = regexp.MustCompile(`Used (\d+) registers(?:, (\d+) bytes smem)?`)
)

// parsePTXASLog reads ptxas's verbose report ("--ptxas-options=-v") into the usage of every
// entry function. Properties of non-inlined device functions (listed under their own names)
// are not an entry's and are left out.
func parsePTXASLog(log string) (map[string]ptxasUsage, error) {
	out := map[string]ptxasUsage{}
	entry, props := "", ""
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		line := sc.Text()
		if m := ptxasEntryRe.FindStringSubmatch(line); m != nil {
			entry, props = m[1], ""
			out[entry] = ptxasUsage{}
			continue
		}
		if m := ptxasPropsRe.FindStringSubmatch(line); m != nil {
			props = m[1]
			continue
		}
		atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
		if m := ptxasFrameRe.FindStringSubmatch(line); m != nil && entry != "" && props == entry {
			u := out[entry]
			u.StackBytes, u.SpillStores, u.SpillLoads = atoi(m[1]), atoi(m[2]), atoi(m[3])
			out[entry] = u
			continue
		}
		if m := ptxasUsedRe.FindStringSubmatch(line); m != nil && entry != "" {
			u := out[entry]
			u.Registers, u.SharedBytes = atoi(m[1]), atoi(m[2])
			out[entry] = u
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no entry function in the ptxas report (was --ptxas-options=-v given?)")
	}
	return out, nil
}

// readPTXASBudget reads "kernel registers smem stack" lines; # starts a comment.
func readPTXASBudget(path string) (map[string]ptxasUsage, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]ptxasUsage{}
	for i, line := range strings.Split(string(data), "\n") {
		if j := strings.IndexByte(line, '#'); j >= 0 {
			line = line[:j]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 4 {
			return nil, fmt.Errorf("%s:%d: want \"kernel registers smem stack\", got %q", path, i+1, line)
		}
		var n [3]int
		for k := range n {
			if n[k], err = strconv.Atoi(f[k+1]); err != nil || n[k] < 0 {
				return nil, fmt.Errorf("%s:%d: field %d %q is not a count", path, i+1, k+2, f[k+1])
			}
		}
		out[f[0]] = ptxasUsage{Registers: n[0], SharedBytes: n[1], StackBytes: n[2]}
	}
	return out, nil
}

// checkPTXAS compares the report with the budget: no spills anywhere, no kernel above its
// budget, no kernel without one, no budget for a kernel that is gone.
func checkPTXAS(got, budget map[string]ptxasUsage) []string {
	var errs []string
	for _, k := range slices.Sorted(maps.Keys(got)) {
		u := got[k]
		if u.SpillStores > 0 || u.SpillLoads > 0 {
			errs = append(errs, fmt.Sprintf("%s spills: %d bytes stored, %d loaded (%d registers)", k, u.SpillStores, u.SpillLoads, u.Registers))
		}
		b, ok := budget[k]
		if !ok {
			errs = append(errs, fmt.Sprintf("%s has no budget in %s (%d registers, %d bytes smem, %d bytes stack): add it", k, ptxasBudgetFile, u.Registers, u.SharedBytes, u.StackBytes))
			continue
		}
		if u.Registers > b.Registers {
			errs = append(errs, fmt.Sprintf("%s uses %d registers, its budget is %d", k, u.Registers, b.Registers))
		}
		if u.SharedBytes > b.SharedBytes {
			errs = append(errs, fmt.Sprintf("%s uses %d bytes of shared memory, its budget is %d", k, u.SharedBytes, b.SharedBytes))
		}
		if u.StackBytes > b.StackBytes {
			errs = append(errs, fmt.Sprintf("%s uses a %d-byte stack frame, its budget is %d", k, u.StackBytes, b.StackBytes))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(budget)) {
		if _, ok := got[k]; !ok {
			errs = append(errs, fmt.Sprintf("%s has a budget in %s but no kernel: remove it", k, ptxasBudgetFile))
		}
	}
	return errs
}

var ptxasReport struct {
	once sync.Once
	log  string
	err  error
}

// sm90Report compiles the kernels to an sm_90 cubin once per test binary and returns ptxas's
// verbose report.
func sm90Report(n *nvrtc) (string, error) {
	ptxasReport.once.Do(func() {
		_, ptxasReport.log, ptxasReport.err = n.CompileWith(KernelSource(), "prolong_kernels.cu", "sm_90", "--ptxas-options=-v")
	})
	return ptxasReport.log, ptxasReport.err
}

// TestPTXASResources is the gate, on sm_90 cubins from the NVRTC CI installs (11.8). A newer
// ptxas may allocate differently; the budgets are this one's figures.
func TestPTXASResources(t *testing.T) {
	n := openNVRTC(t)
	log, err := sm90Report(n)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parsePTXASLog(log)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(KernelNames()) {
		t.Errorf("ptxas reported %d entry functions, the source has %d kernels", len(got), len(KernelNames()))
	}
	if *updatePTXAS {
		var b strings.Builder
		ver, _ := n.Version()
		if ver != ptxasBudgetNVRTC {
			t.Fatalf("budgets come from NVRTC %s; this is %s", ptxasBudgetNVRTC, ver)
		}
		fmt.Fprintf(&b, "# ptxas resource budget per kernel, sm_90, from NVRTC %s (go test ./cuda -run TestPTXASResources -update-ptxas).\n", ver)
		b.WriteString("# Raise a figure only with a measurement that says the kernel is faster for it.\n")
		b.WriteString("# kernel registers smem-bytes stack-bytes\n")
		for _, k := range slices.Sorted(maps.Keys(got)) {
			u := got[k]
			fmt.Fprintf(&b, "%s %d %d %d\n", k, u.Registers, u.SharedBytes, u.StackBytes)
		}
		if err := os.WriteFile(ptxasBudgetFile, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	budget, err := readPTXASBudget(ptxasBudgetFile)
	if err != nil {
		t.Fatal(err)
	}
	ver, err := n.Version()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range checkPTXAS(got, budget) {
		if ver == ptxasBudgetNVRTC || strings.Contains(e, " spills: ") {
			t.Error(e)
		} else {
			t.Logf("NVRTC %s, budgets from %s: %s", ver, ptxasBudgetNVRTC, e)
		}
	}
	most := ""
	for k, u := range got {
		if most == "" || u.Registers > got[most].Registers {
			most = k
		}
	}
	t.Logf("%d kernels, none spills; most registers: %s (%d)", len(got), most, got[most].Registers)
}

// TestPTXASGateCatches: the gate fails a kernel that spills (forced by --maxrregcount=16 on
// kernels that need more) and one over its register budget, naming the kernel.
func TestPTXASGateCatches(t *testing.T) {
	n := openNVRTC(t)
	_, log, err := n.CompileWith(KernelSource(), "prolong_kernels.cu", "sm_90", "--ptxas-options=-v", "--maxrregcount=16")
	if err != nil {
		t.Fatal(err)
	}
	got, err := parsePTXASLog(log)
	if err != nil {
		t.Fatal(err)
	}
	budget, err := readPTXASBudget(ptxasBudgetFile)
	if err != nil {
		t.Fatal(err)
	}
	errs := strings.Join(checkPTXAS(got, budget), "\n")
	if !strings.Contains(errs, "attn_paged_gqa spills:") {
		t.Errorf("capped at 16 registers, attn_paged_gqa (123 registers uncapped) must spill and fail the gate; errors:\n%s", errs)
	}
	// Over budget: the real report against a budget one register short for one kernel.
	if log, err = sm90Report(n); err != nil {
		t.Fatal(err)
	}
	if got, err = parsePTXASLog(log); err != nil {
		t.Fatal(err)
	}
	tight := map[string]ptxasUsage{}
	for k, u := range budget {
		tight[k] = u
	}
	u := tight["attn_train"]
	u.Registers--
	tight["attn_train"] = u
	delete(tight, "add_bias")
	tight["gone_kernel"] = ptxasUsage{}
	want := []string{
		fmt.Sprintf("attn_train uses %d registers, its budget is %d", got["attn_train"].Registers, u.Registers),
		"add_bias has no budget in",
		"gone_kernel has a budget in",
	}
	errList := checkPTXAS(got, tight)
	for _, w := range want {
		if !strings.Contains(strings.Join(errList, "\n"), w) {
			t.Errorf("no error says %q; errors:\n%s", w, strings.Join(errList, "\n"))
		}
	}
	if len(errList) != len(want) {
		t.Errorf("%d errors, want %d:\n%s", len(errList), len(want), strings.Join(errList, "\n"))
	}
}

// TestParsePTXASLog: a report written by hand, with a non-inlined device function whose
// properties are not the entry's.
func TestParsePTXASLog(t *testing.T) {
	const log = `ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k1' for 'sm_90'
ptxas info    : Function properties for helper
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Function properties for k1
ptxas         .     16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, 1024 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'k2' for 'sm_90'
ptxas info    : Function properties for k2
ptxas         .     0 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, 400 bytes cmem[0]
`
	got, err := parsePTXASLog(log)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]ptxasUsage{
		"k1": {Registers: 40, SharedBytes: 1024, StackBytes: 16},
		"k2": {Registers: 255, SpillStores: 12, SpillLoads: 8},
	}
	if len(got) != len(want) || got["k1"] != want["k1"] || got["k2"] != want["k2"] {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if _, err := parsePTXASLog("ptxas info : 0 bytes gmem"); err == nil {
		t.Error("a report with no entry parsed without error")
	}
}
