// Command testsummary reads `go test -json` on stdin and writes what plain `go test` writes (a
// line per package, and the output of each failing test), then one last line that counts the
// tests that passed, failed and skipped, and, for the skipped ones, says why and how to get
// what they need, grouped by reason. Its exit status is 1 when a test or a build failed.
//
//	go test -json ./... | go run ./scripts/testsummary
//
// scripts/test.sh, README's test command, runs it after setting up the tests' references.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json's TestEvent).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string
}

// summary is what the events add up to.
type summary struct {
	passed, failed, skipped int
	failedBuild             bool
	// failedIn counts the failed tests of each package.
	failedIn map[string]int
	// skips maps a skip reason to the tests skipped for it.
	skips map[string][]string
	// output buffers each running test's output, printed only if it fails.
	output map[string][]string
}

func main() {
	s, err := run(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
	if s.failed > 0 || s.failedBuild {
		os.Exit(1)
	}
}

// run copies the plain test output of the events in r to w and ends with the summary line(s).
func run(r io.Reader, w io.Writer) (*summary, error) {
	s := &summary{skips: map[string][]string{}, output: map[string][]string{}, failedIn: map[string]int{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// Not an event (go vet or the go command itself): pass it through.
			fmt.Fprintf(w, "%s\n", line)
			continue
		}
		s.add(e, w)
	}
	if err := sc.Err(); err != nil {
		return s, err
	}
	s.report(w)
	return s, nil
}

// add takes one event.
func (s *summary) add(e event, w io.Writer) {
	key := e.Package + " " + e.Test
	switch {
	case e.Action == "build-output":
		fmt.Fprint(w, e.Output)
	case e.Action == "build-fail":
		s.failedBuild = true
	case e.Test == "":
		// Package-level lines: "ok  pkg 1.2s", "FAIL pkg", "? pkg [no test files]", and the
		// output of a package that failed outside any test (a panic in TestMain, say).
		// "PASS" and "testing: warning: no tests to run" are what go test prints only with -v.
		if e.Action == "output" && e.Output != "PASS\n" && !strings.HasPrefix(e.Output, "testing: warning: no tests to run") {
			fmt.Fprint(w, e.Output)
		}
		if e.Action == "fail" && s.failedIn[e.Package] == 0 {
			s.failedBuild = true
		}
	case e.Action == "output":
		s.output[key] = append(s.output[key], e.Output)
	case e.Action == "pass":
		if !strings.Contains(e.Test, "/") {
			s.passed++
		}
		delete(s.output, key)
	case e.Action == "fail":
		if !strings.Contains(e.Test, "/") {
			s.failed++
		}
		s.failedIn[e.Package]++
		for _, o := range s.output[key] {
			fmt.Fprint(w, o)
		}
		delete(s.output, key)
	case e.Action == "skip":
		s.skipped++
		why := skipReason(s.output[key])
		s.skips[why] = append(s.skips[why], shortPkg(e.Package)+"."+e.Test)
		delete(s.output, key)
	}
}

// skipReason finds the message a skipped test gave t.Skip: the last output line that is not
// go test's own "=== RUN" / "--- SKIP" framing, without its file:line prefix.
func skipReason(out []string) string {
	why := ""
	for _, o := range out {
		t := strings.TrimSpace(o)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		// "file_test.go:123: message"
		if i := strings.Index(t, ": "); i > 0 && strings.Contains(t[:i], ".go:") {
			t = t[i+2:]
		}
		why = t
	}
	if why == "" {
		why = "(no reason given)"
	}
	return why
}

// shortPkg drops the module path.
func shortPkg(p string) string {
	return strings.TrimPrefix(p, "github.com/prolong-rl/prolong/")
}

// report writes the closing lines: the counts, then each skip reason with its tests.
func (s *summary) report(w io.Writer) {
	status := "all passed"
	switch {
	case s.failedBuild:
		status = "FAILED (a package did not build or failed outside a test)"
	case s.failed > 0:
		status = "FAILED"
	}
	fmt.Fprintf(w, "\ntests: %d passed, %d failed, %d skipped: %s\n", s.passed, s.failed, s.skipped, status)
	reasons := make([]string, 0, len(s.skips))
	for r := range s.skips {
		reasons = append(reasons, r)
	}
	sort.Slice(reasons, func(i, j int) bool {
		if len(s.skips[reasons[i]]) != len(s.skips[reasons[j]]) {
			return len(s.skips[reasons[i]]) > len(s.skips[reasons[j]])
		}
		return reasons[i] < reasons[j]
	})
	for _, r := range reasons {
		tests := s.skips[r]
		shown := tests
		if len(shown) > 3 {
			shown = shown[:3]
		}
		more := ""
		if len(tests) > len(shown) {
			more = fmt.Sprintf(" and %d more", len(tests)-len(shown))
		}
		fmt.Fprintf(w, "  skipped %d: %s (%s%s)\n", len(tests), r, strings.Join(shown, ", "), more)
	}
}
