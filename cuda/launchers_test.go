package cuda

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/cuda/internal/kernelgen"
)

// ptxParam is one parameter of a PTX .entry: its state-space type (u64, u32, s32, f32, f64,
// b32, b64, ...).
type ptxParam struct {
	typ  string
	name string
}

var (
	ptxEntry   = regexp.MustCompile(`(?s)\.entry\s+(\w+)\s*\((.*?)\)`)
	ptxParamRe = regexp.MustCompile(`^\.param\s+\.(\w+)\s+(\w+)$`)
)

// parsePTXEntries returns the parameter list of every .entry of ptx. A parameter that is not a
// scalar (.param .align N .b8 name[size]: a struct by value) is an error: launchers pass
// scalars only.
func parsePTXEntries(ptx string) (map[string][]ptxParam, error) {
	entries := map[string][]ptxParam{}
	for _, m := range ptxEntry.FindAllStringSubmatch(ptx, -1) {
		var ps []ptxParam
		for _, p := range strings.Split(m[2], ",") {
			p = strings.Join(strings.Fields(p), " ")
			if p == "" {
				continue
			}
			pm := ptxParamRe.FindStringSubmatch(p)
			if pm == nil {
				return nil, fmt.Errorf("PTX entry %s: parameter %q is not a scalar .param", m[1], p)
			}
			ps = append(ps, ptxParam{typ: pm[1], name: pm[2]})
		}
		entries[m[1]] = ps
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("no .entry in the PTX")
	}
	return entries, nil
}

// launcherParam is one kernel parameter of a launcher: its Go name and type.
type launcherParam struct{ name, typ string }

// slotArg is one argument a launcher passes to b.launch after grid and threads: the function
// that encodes it (argPtr, argI32, ...) and the launcher parameter it encodes.
type slotArg struct{ fn, param string }

// launcherDesc describes a typed launcher as its Go source has it: the kernel it launches (the
// name given to b.launch), its kernel parameters (after grid and threads), and the slots it
// passes, in order.
type launcherDesc struct {
	method, kernel string
	pos            string
	params         []launcherParam
	args           []slotArg
}

// ptxTypes are the PTX parameter types each launcher Go type may meet: its size and kind.
// NVRTC writes a pointer and a long long alike as .u64: the C side of that difference is the
// generator's (kernelgen.GoType, TestGoType).
var ptxTypes = map[string][]string{
	"dptr":    {"u64", "b64"},
	"int64":   {"u64", "s64", "b64"},
	"uint64":  {"u64", "b64"},
	"int32":   {"u32", "s32", "b32"},
	"uint32":  {"u32", "b32"},
	"float32": {"f32"},
	"float64": {"f64"},
}

// checkLauncher checks one launcher against the parameters of its PTX entry: as many
// parameters, each of a Go type whose size and kind the PTX type has, passed to b.launch in
// order, each through the argX function of its type (so that its 8-byte slot holds its bits).
func checkLauncher(d launcherDesc, entry []ptxParam) error {
	if len(d.params) != len(entry) {
		return fmt.Errorf("%s (%s): %d kernel parameters, the PTX entry %s has %d", d.method, d.pos, len(d.params), d.kernel, len(entry))
	}
	if len(d.args) != len(d.params) {
		return fmt.Errorf("%s (%s): passes %d arguments for %d parameters", d.method, d.pos, len(d.args), len(d.params))
	}
	for i, p := range d.params {
		if !contains(ptxTypes[p.typ], entry[i].typ) {
			return fmt.Errorf("%s (%s): parameter %d (%s) is %s, the PTX entry %s has .%s there", d.method, d.pos, i, p.name, p.typ, d.kernel, entry[i].typ)
		}
		a := d.args[i]
		if a.param != p.name {
			return fmt.Errorf("%s (%s): slot %d gets %s, not parameter %d (%s)", d.method, d.pos, i, a.param, i, p.name)
		}
		if want := kernelgen.ArgFunc[p.typ]; a.fn != want {
			return fmt.Errorf("%s (%s): parameter %d (%s, %s) encoded by %s, not %s", d.method, d.pos, i, p.name, p.typ, a.fn, want)
		}
	}
	return nil
}

// checkLaunchers checks every launcher against the PTX entries, and that every entry has
// exactly one launcher.
func checkLaunchers(ds []launcherDesc, entries map[string][]ptxParam) []error {
	var errs []error
	seen := map[string]string{}
	for _, d := range ds {
		e, ok := entries[d.kernel]
		if !ok {
			errs = append(errs, fmt.Errorf("%s (%s) launches %q, which the PTX has no entry for", d.method, d.pos, d.kernel))
			continue
		}
		if prev, ok := seen[d.kernel]; ok {
			errs = append(errs, fmt.Errorf("%s (%s) launches %s, which %s launches too", d.method, d.pos, d.kernel, prev))
		}
		seen[d.kernel] = d.method
		if err := checkLauncher(d, e); err != nil {
			errs = append(errs, err)
		}
	}
	for k := range entries {
		if _, ok := seen[k]; !ok {
			errs = append(errs, fmt.Errorf("PTX entry %s has no launcher", k))
		}
	}
	return errs
}

// launchersFromSource reads the launchers from the package's Go files (not the tests): every
// function that calls b.launch must be a launcher, (b *Backend) name(grid [3]int, threads int,
// params...) { b.launch("kernel", grid, threads, argX(param)...) }, so that no kernel is
// launched with untyped arguments.
func launchersFromSource(dir string) ([]launcherDesc, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	var out []launcherDesc
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || strings.HasSuffix(f, "gen_launchers.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			return nil, err
		}
		for _, decl := range file.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Body == nil || fd.Name.Name == "launch" {
				continue
			}
			calls := false
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				if c, ok := n.(*ast.CallExpr); ok {
					if s, ok := c.Fun.(*ast.SelectorExpr); ok && s.Sel.Name == "launch" {
						calls = true
					}
				}
				return true
			})
			if !calls {
				continue
			}
			d, err := launcherOf(fd)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", fset.Position(fd.Pos()), fd.Name.Name, err)
			}
			d.pos = filepath.Base(fset.Position(fd.Pos()).String())
			out = append(out, d)
		}
	}
	return out, nil
}

// launcherOf describes a function that calls b.launch, or says why it is not a launcher.
func launcherOf(fd *ast.FuncDecl) (launcherDesc, error) {
	d := launcherDesc{method: fd.Name.Name}
	if fd.Recv == nil || len(fd.Recv.List) != 1 || exprString(fd.Recv.List[0].Type) != "*Backend" {
		return d, fmt.Errorf("calls launch but is not a method of *Backend")
	}
	var all []launcherParam
	for _, f := range fd.Type.Params.List {
		for _, n := range f.Names {
			all = append(all, launcherParam{n.Name, exprString(f.Type)})
		}
	}
	if len(all) < 2 || all[0] != (launcherParam{"grid", "[3]int"}) || all[1] != (launcherParam{"threads", "int"}) {
		return d, fmt.Errorf("calls launch, but its parameters do not begin (grid [3]int, threads int): an untyped launch")
	}
	d.params = all[2:]
	if len(fd.Body.List) != 1 {
		return d, fmt.Errorf("calls launch, but is not a launcher (one statement, b.launch(...))")
	}
	es, ok := fd.Body.List[0].(*ast.ExprStmt)
	call, ok2 := (*ast.CallExpr)(nil), false
	if ok {
		call, ok2 = es.X.(*ast.CallExpr)
	}
	if !ok2 || exprString(call.Fun) != "b.launch" || len(call.Args) < 3 {
		return d, fmt.Errorf("calls launch, but is not a launcher (one statement, b.launch(...))")
	}
	lit, ok := call.Args[0].(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING || exprString(call.Args[1]) != "grid" || exprString(call.Args[2]) != "threads" {
		return d, fmt.Errorf("b.launch must get a kernel name literal, grid, threads")
	}
	d.kernel = strings.Trim(lit.Value, "\"`")
	for i, a := range call.Args[3:] {
		c, ok := a.(*ast.CallExpr)
		if !ok || len(c.Args) != 1 {
			return d, fmt.Errorf("argument %d of b.launch is %s, not argX(parameter)", i, exprString(a))
		}
		id, ok := c.Args[0].(*ast.Ident)
		if !ok {
			return d, fmt.Errorf("argument %d of b.launch is %s, not argX(parameter)", i, exprString(a))
		}
		d.args = append(d.args, slotArg{fn: exprString(c.Fun), param: id.Name})
	}
	return d, nil
}

func exprString(e ast.Expr) string {
	var b bytes.Buffer
	switch v := e.(type) {
	case *ast.Ident:
		return v.Name
	case *ast.StarExpr:
		return "*" + exprString(v.X)
	case *ast.SelectorExpr:
		return exprString(v.X) + "." + v.Sel.Name
	case *ast.ArrayType:
		if v.Len != nil {
			return "[" + exprString(v.Len) + "]" + exprString(v.Elt)
		}
		return "[]" + exprString(v.Elt)
	case *ast.BasicLit:
		return v.Value
	case *ast.CallExpr:
		b.WriteString(exprString(v.Fun) + "(")
		for i, a := range v.Args {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(exprString(a))
		}
		b.WriteString(")")
		return b.String()
	}
	return fmt.Sprintf("%T", e)
}

// TestLaunchersMatchPTX: every kernel of the PTX NVRTC compiles (sm_80, sm_90) has one typed
// launcher whose parameters have the entry's parameter sizes and kinds in its order, and every
// launch in the package goes through one.
func TestLaunchersMatchPTX(t *testing.T) {
	n := openNVRTC(t)
	ds, err := launchersFromSource(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, arch := range []string{"compute_80", "compute_90"} {
		t.Run(arch, func(t *testing.T) {
			ptx, _, err := n.Compile(KernelSource(), "prolong_kernels.cu", arch)
			if err != nil {
				t.Fatal(err)
			}
			entries, err := parsePTXEntries(string(ptx))
			if err != nil {
				t.Fatal(err)
			}
			for _, err := range checkLaunchers(ds, entries) {
				t.Error(err)
			}
			if len(entries) != len(KernelNames()) || len(ds) != len(entries) {
				t.Errorf("%d PTX entries, %d kernels in the source, %d launchers", len(entries), len(KernelNames()), len(ds))
			}
			t.Logf("%d PTX entries, %d launchers checked", len(entries), len(ds))
		})
	}
}

// TestLaunchersMatchPTXMutated shows the check fails when a kernel's C signature no longer
// matches its launcher: three kernels changed (a long long made int, a parameter dropped, an
// int made float), compiled by NVRTC, are each reported, and only they.
func TestLaunchersMatchPTXMutated(t *testing.T) {
	n := openNVRTC(t)
	ds, err := launchersFromSource(".")
	if err != nil {
		t.Fatal(err)
	}
	src := KernelSource()
	for _, m := range []struct{ from, to string }{
		{"add_bias(float* x, const float* b, i64 n, int N)", "add_bias(float* x, const float* b, int n, int N)"},
		{"colsum_add(float* dw, const double* part, int Z, int n)", "colsum_add(float* dw, const double* part, int n)"},
		{"attn_softmax_causal(float* S, float* lse, int L, int t0, int nh, int h0)", "attn_softmax_causal(float* S, float* lse, int L, float t0, int nh, int h0)"},
	} {
		if strings.Count(src, m.from) != 1 {
			t.Fatalf("mutation %q: not once in the kernel source (stale test)", m.from)
		}
		src = strings.Replace(src, m.from, m.to, 1)
	}
	// The dropped Z: the kernel must still compile, so it becomes a constant.
	src = strings.Replace(src, "for (int z = 0; z < Z; z++) acc += part", "for (int z = 0; z < 1; z++) acc += part", 1)
	ptx, _, err := n.Compile(src, "mutated.cu", "compute_90")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := parsePTXEntries(string(ptx))
	if err != nil {
		t.Fatal(err)
	}
	errs := checkLaunchers(ds, entries)
	var got []string
	for _, e := range errs {
		got = append(got, e.Error())
	}
	all := strings.Join(got, "\n")
	for _, want := range []string{
		"launchAddBias (launchers_gen.go:", "parameter 2 (n) is int64, the PTX entry add_bias has .u32 there",
		"launchColsumAdd (launchers_gen.go:", "4 kernel parameters, the PTX entry colsum_add has 3",
		"launchAttnSoftmaxCausal (launchers_gen.go:", "parameter 3 (t0) is int32, the PTX entry attn_softmax_causal has .f32 there",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no error says %q; errors:\n%s", want, all)
		}
	}
	if len(errs) != 3 {
		t.Errorf("%d errors, want 3 (one per mutated kernel):\n%s", len(errs), all)
	}
}

// TestCheckLauncher: the check on a hand-written PTX entry, against the right launcher and
// mutated copies of it.
func TestCheckLauncher(t *testing.T) {
	const ptx = `
.visible .entry k(
	.param .u64 k_param_0,
	.param .u64 k_param_1,
	.param .u32 k_param_2,
	.param .f32 k_param_3,
	.param .f64 k_param_4
)
{
	ret;
}
.visible .entry other()
{
	ret;
}`
	entries, err := parsePTXEntries(ptx)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries["k"]) != 5 || entries["k"][2].typ != "u32" || len(entries["other"]) != 0 {
		t.Fatalf("parsed %v", entries)
	}
	good := func() launcherDesc {
		return launcherDesc{method: "launchK", kernel: "k", pos: "x.go:1",
			params: []launcherParam{{"out", "dptr"}, {"n", "int64"}, {"c", "int32"}, {"s", "float32"}, {"u", "float64"}},
			args:   []slotArg{{"argPtr", "out"}, {"argI64", "n"}, {"argI32", "c"}, {"argF32", "s"}, {"argF64", "u"}}}
	}
	other := launcherDesc{method: "launchOther", kernel: "other", pos: "x.go:9"}
	for _, c := range []struct {
		name   string
		mutate func(d *launcherDesc)
		want   string // "" for no error
	}{
		{"as compiled", func(d *launcherDesc) {}, ""},
		{"int32 made int64", func(d *launcherDesc) { d.params[2].typ, d.args[2].fn = "int64", "argI64" }, "parameter 2 (c) is int64, the PTX entry k has .u32 there"},
		{"float32 made int32 (same size)", func(d *launcherDesc) { d.params[3].typ, d.args[3].fn = "int32", "argI32" }, "parameter 3 (s) is int32, the PTX entry k has .f32 there"},
		{"float64 made int64 (same size)", func(d *launcherDesc) { d.params[4].typ, d.args[4].fn = "int64", "argI64" }, "parameter 4 (u) is int64, the PTX entry k has .f64 there"},
		{"pointer made int32", func(d *launcherDesc) { d.params[0].typ, d.args[0].fn = "int32", "argI32" }, "parameter 0 (out) is int32, the PTX entry k has .u64 there"},
		{"parameter dropped", func(d *launcherDesc) { d.params, d.args = d.params[:4], d.args[:4] }, "4 kernel parameters, the PTX entry k has 5"},
		{"parameter added", func(d *launcherDesc) {
			d.params = append(d.params, launcherParam{"x", "int32"})
			d.args = append(d.args, slotArg{"argI32", "x"})
		}, "6 kernel parameters, the PTX entry k has 5"},
		{"slots swapped", func(d *launcherDesc) { d.args[2], d.args[3] = d.args[3], d.args[2] }, "slot 2 gets s, not parameter 2 (c)"},
		{"slot dropped", func(d *launcherDesc) { d.args = d.args[:4] }, "passes 4 arguments for 5 parameters"},
		{"wrong encoder", func(d *launcherDesc) { d.args[1].fn = "argI32" }, "parameter 1 (n, int64) encoded by argI32, not argI64"},
		{"unknown kernel", func(d *launcherDesc) { d.kernel = "kk" }, `launches "kk", which the PTX has no entry for`},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := good()
			c.mutate(&d)
			errs := checkLaunchers([]launcherDesc{d, other}, entries)
			if c.want == "" {
				if len(errs) != 0 {
					t.Fatalf("errors for the right launcher: %v", errs)
				}
				return
			}
			if len(errs) == 0 || !strings.Contains(fmt.Sprint(errs), c.want) {
				t.Fatalf("errors %v, want one saying %q", errs, c.want)
			}
		})
	}
	if errs := checkLaunchers([]launcherDesc{good()}, entries); len(errs) != 1 || !strings.Contains(errs[0].Error(), "PTX entry other has no launcher") {
		t.Errorf("a kernel without a launcher: %v", errs)
	}
	if errs := checkLaunchers([]launcherDesc{good(), good(), other}, entries); len(errs) != 1 || !strings.Contains(errs[0].Error(), "which launchK launches too") {
		t.Errorf("a kernel with two launchers: %v", errs)
	}
	if _, err := parsePTXEntries(".entry s(\n\t.param .align 8 .b8 s_param_0[16]\n)"); err == nil || !strings.Contains(err.Error(), "not a scalar") {
		t.Errorf("a struct parameter: %v", err)
	}
}

// TestLaunchersFromSource: an untyped launch, a launch from an op body, or a launcher that
// converts its argument is refused, naming the function.
func TestLaunchersFromSource(t *testing.T) {
	for _, c := range []struct{ name, src, want string }{
		{"typed", `func (b *Backend) launchK(grid [3]int, threads int, x dptr, n int32) { b.launch("k", grid, threads, argPtr(x), argI32(n)) }`, ""},
		{"untyped", `func (b *Backend) launchAny(name string, grid [3]int, threads int, args ...uint64) { b.launch(name, grid, threads, args...) }`, "do not begin (grid [3]int, threads int)"},
		{"from an op", `func (b *Backend) Op(x dptr) { b.launch("k", [3]int{1, 1, 1}, 256, argPtr(x)) }`, "do not begin (grid [3]int, threads int)"},
		{"more than a launch", `func (b *Backend) launchK(grid [3]int, threads int, x dptr) { b.fail(nil); b.launch("k", grid, threads, argPtr(x)) }`, "not a launcher"},
		{"converted argument", `func (b *Backend) launchK(grid [3]int, threads int, n int32) { b.launch("k", grid, threads, argI64(int64(n))) }`, "not argX(parameter)"},
		{"name not a literal", `func (b *Backend) launchK(grid [3]int, threads int, x dptr) { b.launch(kname, grid, threads, argPtr(x)) }`, "kernel name literal"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "x.go"), []byte("package cuda\n\n"+c.src+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			ds, err := launchersFromSource(dir)
			if c.want == "" {
				if err != nil || len(ds) != 1 || ds[0].kernel != "k" || len(ds[0].args) != 2 || ds[0].args[1] != (slotArg{"argI32", "n"}) {
					t.Fatalf("got %+v, %v", ds, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "x.go:3") {
				t.Fatalf("error %v, want one at x.go:3 saying %q", err, c.want)
			}
		})
	}
}

// TestLaunchersUpToDate: launchers_gen.go is what `go generate ./cuda` writes from kernels/.
func TestLaunchersUpToDate(t *testing.T) {
	ks, err := kernelgen.ParseDir("kernels")
	if err != nil {
		t.Fatal(err)
	}
	want, err := kernelgen.Generate(ks)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("launchers_gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("launchers_gen.go is stale: run go generate ./cuda")
	}
	var names []string
	for _, k := range ks {
		names = append(names, k.Name)
	}
	if strings.Join(names, " ") != strings.Join(KernelNames(), " ") {
		t.Fatalf("kernelgen reads kernels %v, KernelNames has %v", names, KernelNames())
	}
}
