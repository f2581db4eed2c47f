package main

import (
	"errors"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestDocsCommands parses every `go run ./tools/train ...` command in docs/train.md and the
// README with the program's own flag set, so the docs cannot name a flag that does not exist.
func TestDocsCommands(t *testing.T) {
	re := regexp.MustCompile("go run ./tools/train([^\n`#]*)")
	n := 0
	for _, path := range []string{"../../docs/train.md", "../../README.md"} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllStringSubmatch(string(data), -1) {
			var o options
			fs := newFlags(&o)
			fs.SetOutput(io.Discard)
			if err := fs.Parse(strings.Fields(m[1])); err != nil && !errors.Is(err, pflag.ErrHelp) {
				t.Errorf("%s: `go run ./tools/train%s`: %v", path, m[1], err)
			}
			n++
		}
	}
	if n < 5 {
		t.Fatalf("found only %d commands in the docs", n)
	}
}
