// Package kernelgen reads the `extern "C" __global__` signatures of the CUDA kernels in
// cuda/kernels/*.cu and writes cuda/launchers_gen.go: one typed Go launcher per kernel, whose
// parameters have the Go types of the kernel's C parameters (see GoType), so that a call with a
// wrong argument type or count does not compile. `go generate ./cuda` runs it (cuda/gen.go).
package kernelgen

import (
	"bytes"
	"fmt"
	"go/format"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"unicode"
)

// Param is one parameter of a kernel: its C type as written (spaces normalised), its C name,
// and the Go type of its launcher argument.
type Param struct {
	CType, Name, GoType string
}

// Kernel is one `extern "C" __global__` entry point.
type Kernel struct {
	Name   string
	File   string // base name of the .cu file, e.g. "softmax.cu"
	Params []Param
}

// scalarTypes maps the C scalar types the kernels may take to the Go types whose bits
// cuLaunchKernel must copy: the widths are those of CUDA's LP64 data model. i64 and u32 are the
// typedefs of kernels/common.cuh. Types with no entry (char, short, bool, long, size_t, structs)
// are refused, so that no width is guessed.
var scalarTypes = map[string]string{
	"int":                "int32",
	"signed":             "int32",
	"signed int":         "int32",
	"unsigned":           "uint32",
	"unsigned int":       "uint32",
	"u32":                "uint32",
	"long long":          "int64",
	"long long int":      "int64",
	"signed long long":   "int64",
	"i64":                "int64",
	"unsigned long long": "uint64",
	"float":              "float32",
	"double":             "float64",
}

// DevicePtr is the Go type of every pointer parameter (a CUdeviceptr).
const DevicePtr = "dptr"

// GoType returns the Go type of a kernel parameter of C type ctype (qualifiers such as const
// and __restrict__ ignored): DevicePtr for any pointer, else the entry of scalarTypes.
func GoType(ctype string) (string, error) {
	var words []string
	for _, w := range strings.Fields(strings.ReplaceAll(ctype, "*", " * ")) {
		switch w {
		case "const", "volatile", "__restrict__", "__restrict":
			continue
		}
		words = append(words, w)
	}
	if len(words) > 1 && words[len(words)-1] == "*" {
		return DevicePtr, nil
	}
	if g, ok := scalarTypes[strings.Join(words, " ")]; ok {
		return g, nil
	}
	return "", fmt.Errorf("C type %q has no Go launcher type (pointers, int, unsigned, long long, unsigned long long, float, double and the typedefs i64, u32 have)", ctype)
}

var (
	kernelStart = regexp.MustCompile(`extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(`)
	paramRe     = regexp.MustCompile(`^(.*?)\s*\b(\w+)$`)
	comments    = regexp.MustCompile(`(?s)/\*.*?\*/|//[^\n]*`)
)

// Parse returns the kernels declared in src, the text of file (a base name), in order.
func Parse(file string, src []byte) ([]Kernel, error) {
	text := comments.ReplaceAllStringFunc(string(src), func(c string) string {
		return strings.Repeat(" ", len(c)) // keep offsets
	})
	var out []Kernel
	for _, m := range kernelStart.FindAllStringSubmatchIndex(text, -1) {
		name := text[m[2]:m[3]]
		end := strings.IndexByte(text[m[1]:], ')')
		if end < 0 {
			return nil, fmt.Errorf("%s: kernel %s: no ')' closes its parameter list", file, name)
		}
		k := Kernel{Name: name, File: file}
		list := strings.TrimSpace(text[m[1] : m[1]+end])
		if list != "" && list != "void" {
			for i, p := range strings.Split(list, ",") {
				p = strings.Join(strings.Fields(p), " ")
				pm := paramRe.FindStringSubmatch(p)
				if pm == nil || pm[1] == "" {
					return nil, fmt.Errorf("%s: kernel %s: parameter %d %q is not \"type name\"", file, name, i, p)
				}
				g, err := GoType(pm[1])
				if err != nil {
					return nil, fmt.Errorf("%s: kernel %s: parameter %d (%s): %w", file, name, i, pm[2], err)
				}
				k.Params = append(k.Params, Param{CType: strings.ReplaceAll(pm[1], " *", "*"), Name: pm[2], GoType: g})
			}
		}
		out = append(out, k)
	}
	return out, nil
}

// ParseDir parses dir/*.cu in name order: the order of cuda.KernelSource.
func ParseDir(dir string) ([]Kernel, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.cu"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var all []Kernel
	seen := map[string]string{}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		ks, err := Parse(filepath.Base(f), src)
		if err != nil {
			return nil, err
		}
		for _, k := range ks {
			if prev, ok := seen[k.Name]; ok {
				return nil, fmt.Errorf("%s: kernel %s already declared in %s", k.File, k.Name, prev)
			}
			seen[k.Name] = k.File
		}
		all = append(all, ks...)
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("%s: no extern \"C\" __global__ kernels in *.cu", dir)
	}
	return all, nil
}

// ArgFunc is the function of package cuda that encodes a launcher argument of Go type goType
// into its 8-byte parameter slot (cuda/args.go).
var ArgFunc = map[string]string{
	DevicePtr: "argPtr",
	"int32":   "argI32",
	"uint32":  "argU32",
	"int64":   "argI64",
	"uint64":  "argU64",
	"float32": "argF32",
	"float64": "argF64",
}

// MethodName is the launcher's name: "launch" and the kernel's name in camel case
// (gather_rows: launchGatherRows).
func MethodName(kernel string) string {
	var b strings.Builder
	b.WriteString("launch")
	for _, part := range strings.Split(kernel, "_") {
		if part == "" {
			continue
		}
		r := []rune(part)
		r[0] = unicode.ToUpper(r[0])
		b.WriteString(string(r))
	}
	return b.String()
}

// goName is the launcher's name for a C parameter: the C name, unless it is a Go keyword or
// one of the launcher's own names (the receiver b, grid, threads, the argX functions); then
// the C name with "Arg" added.
func goName(c string) string {
	switch {
	case token.IsKeyword(c), c == "b", c == "grid", c == "threads", strings.HasPrefix(c, "arg"):
		return c + "Arg"
	}
	return c
}

// Generate returns the Go source of cuda/launchers_gen.go for kernels, gofmt-ed.
func Generate(kernels []Kernel) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("// Code generated by go generate (cuda/gen.go, cuda/internal/kernelgen) from kernels/*.cu; DO NOT EDIT.\n\n")
	b.WriteString("package cuda\n")
	for _, k := range kernels {
		var cparams, names, args []string
		for _, p := range k.Params {
			cparams = append(cparams, p.CType+" "+p.Name)
			f, ok := ArgFunc[p.GoType]
			if !ok {
				return nil, fmt.Errorf("%s: kernel %s: parameter %s: no argument function for Go type %s", k.File, k.Name, p.Name, p.GoType)
			}
			n := goName(p.Name)
			names = append(names, n)
			args = append(args, f+"("+n+")")
		}
		m := MethodName(k.Name)
		fmt.Fprintf(&b, "\n// %s enqueues %s (kernels/%s) on a grid of blocks of threads:\n//\n//\t%s(%s)\n",
			m, k.Name, k.File, k.Name, strings.Join(cparams, ", "))
		fmt.Fprintf(&b, "func (b *Backend) %s(grid [3]int, threads int", m)
		for i, n := range names {
			// Consecutive parameters of one type share it: out, x dptr, n int64.
			b.WriteString(", " + n)
			if i+1 == len(names) || k.Params[i+1].GoType != k.Params[i].GoType {
				b.WriteString(" " + k.Params[i].GoType)
			}
		}
		fmt.Fprintf(&b, ") {\n\tb.launch(%q, grid, threads", k.Name)
		for _, a := range args {
			b.WriteString(", " + a)
		}
		b.WriteString(")\n}\n")
	}
	src, err := format.Source(b.Bytes())
	if err != nil {
		return nil, fmt.Errorf("generated launchers do not parse: %w", err)
	}
	return src, nil
}
