package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/grpo/knob"
)

var update = flag.Bool("update", false, "rewrite docs/train.md's flag table")

// The markers around docs/train.md's flag table.
const (
	tableStart = "<!-- flags: written by go test ./tools/train -run TestFlagTable -update -->"
	tableEnd   = "<!-- end of flags -->"
)

// flagTable is the table of every flag of the program, from the knobs' definitions: name,
// default (and the default job's), range, help.
func flagTable() string {
	o := newOptions()
	fs := newFlags(o)
	ranges := map[string]string{}
	ks := knob.List(o)
	for _, k := range ks {
		ranges[k.Name] = k.Range(ks)
	}
	var b strings.Builder
	b.WriteString("| flag | default | range | what |\n| --- | --- | --- | --- |\n")
	cell := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	fs.VisitAll(func(f *pflag.Flag) {
		def := f.DefValue
		switch {
		case f.Value.Type() == "stringSlice" && def == "[]", def == "":
			def = ""
		default:
			def = "`" + def + "`"
		}
		if v, ok := defaultJobFlags[f.Name]; ok {
			def += fmt.Sprintf(" (default job: `%s`)", v)
		}
		fmt.Fprintf(&b, "| `--%s` | %s | %s | %s |\n", f.Name, def, cell(ranges[f.Name]), cell(f.Usage))
	})
	return b.String()
}

// TestFlagTable: docs/train.md's table of flags is the one the knobs' definitions give
// (rewrite it with -update).
func TestFlagTable(t *testing.T) {
	const path = "../../docs/train.md"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	i, j := strings.Index(doc, tableStart), strings.Index(doc, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("%s: no flag table between %q and %q", path, tableStart, tableEnd)
	}
	want := doc[:i+len(tableStart)] + "\n" + flagTable() + doc[j:]
	if want == doc {
		return
	}
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("%s: the flag table is not the flags' (go test ./tools/train -run TestFlagTable -update rewrites it)", path)
}
