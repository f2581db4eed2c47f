package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestREADME: the README's programs table lists every program under tools/, its local links
// lead to files of the repository (no design notes outside it), it names where the default
// job's exports go, and it says that the first run compiles.
func TestREADME(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	_, table, _ := strings.Cut(readme, "## The programs")
	table, _, _ = strings.Cut(table, "\n## ")
	dirs, err := os.ReadDir("..")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join("..", d.Name(), "main.go")); err != nil {
			continue
		}
		n++
		if !strings.Contains(table, "| `go run ./tools/"+d.Name()) {
			t.Errorf("README: the programs table has no row for tools/%s", d.Name())
		}
	}
	if n < 6 {
		t.Fatalf("found %d programs under tools/", n)
	}
	for _, m := range regexp.MustCompile(`\[([^\]]*)\]\(([^)]*)\)`).FindAllStringSubmatch(readme, -1) {
		text, target := m[1], m[2]
		if strings.HasPrefix(text, "../") || strings.HasPrefix(target, "../") {
			t.Errorf("README: the link [%s](%s) names a file outside the repository", text, target)
		}
		if strings.Contains(target, "://") || strings.HasPrefix(target, "#") {
			continue
		}
		if _, err := os.Stat(filepath.Join("../..", strings.SplitN(target, "#", 2)[0])); err != nil {
			t.Errorf("README: the link [%s](%s) leads nowhere: %v", text, target, err)
		}
	}
	if !strings.Contains(readme, "runs/<date-time>/checkpoints/step-000200/") || strings.Contains(readme, "`checkpoints/step-N/`") {
		t.Error("README: the default job's exports go to runs/<date-time>/checkpoints/step-000200/")
	}
	// The quick start's test command is the one CI runs, and it is not plain go test (which
	// skips without a word where a reference is missing).
	ci, err := os.ReadFile("../../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	qs := regexp.MustCompile("(?s)## Quick start.*?```sh\n(.*?)```").FindStringSubmatch(readme)
	if qs == nil {
		t.Fatal("README: no quick start commands")
	}
	cmds := strings.Split(strings.TrimSpace(qs[1]), "\n")
	if len(cmds) != 2 {
		t.Fatalf("README: the quick start has %d commands, want 2 (the main job, the tests)", len(cmds))
	}
	test := strings.TrimSpace(strings.SplitN(cmds[1], "#", 2)[0])
	if test != "scripts/test.sh" || !regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(test)+`$`).Match(ci) {
		t.Errorf("README: the quick start's test command %q is not scripts/test.sh as .ci/run calls it", test)
	}
	if !regexp.MustCompile(`first[^.]*compil`).MatchString(readme) {
		t.Error("README: no word that the first run compiles the program")
	}
}
