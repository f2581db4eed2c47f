package main

import (
	"strings"
	"testing"
)

// A stream as `go test -json` writes it (trimmed from a real run): package a passes one test and
// skips two for one reason; package b fails one test and skips one; package c does not build.
const stream = `{"Action":"start","Package":"m/a"}
{"Action":"run","Package":"m/a","Test":"TestOK"}
{"Action":"output","Package":"m/a","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"pass","Package":"m/a","Test":"TestOK"}
{"Action":"run","Package":"m/a","Test":"TestORT"}
{"Action":"output","Package":"m/a","Test":"TestORT","Output":"=== RUN   TestORT\n"}
{"Action":"output","Package":"m/a","Test":"TestORT","Output":"    ort_test.go:55: skipping: ONNX Runtime unavailable (run scripts/setup-ort.sh)\n"}
{"Action":"output","Package":"m/a","Test":"TestORT","Output":"--- SKIP: TestORT (0.00s)\n"}
{"Action":"skip","Package":"m/a","Test":"TestORT"}
{"Action":"run","Package":"m/a","Test":"TestORT2"}
{"Action":"output","Package":"m/a","Test":"TestORT2","Output":"    ort_test.go:55: skipping: ONNX Runtime unavailable (run scripts/setup-ort.sh)\n"}
{"Action":"skip","Package":"m/a","Test":"TestORT2"}
{"Action":"output","Package":"m/a","Output":"PASS\n"}
{"Action":"output","Package":"m/a","Output":"ok  \tm/a\t0.1s\n"}
{"Action":"pass","Package":"m/a"}
{"Action":"run","Package":"m/b","Test":"TestBad"}
{"Action":"output","Package":"m/b","Test":"TestBad","Output":"    x_test.go:9: got 2, want 3\n"}
{"Action":"fail","Package":"m/b","Test":"TestBad"}
{"Action":"run","Package":"m/b","Test":"TestGPU"}
{"Action":"output","Package":"m/b","Test":"TestGPU","Output":"    gpu_test.go:23: no GPU: libcuda.so.1 not found\n"}
{"Action":"skip","Package":"m/b","Test":"TestGPU"}
{"Action":"output","Package":"m/b","Output":"FAIL\tm/b\t0.2s\n"}
{"Action":"fail","Package":"m/b"}
`

func TestSummary(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string // lines the output must hold
		fail     bool
	}{
		{"passes and skips", strings.Join(strings.SplitAfterN(stream, "\n", 16)[:15], ""),
			[]string{"ok  \tm/a\t0.1s", "tests: 1 passed, 0 failed, 2 skipped: all passed",
				"  skipped 2: skipping: ONNX Runtime unavailable (run scripts/setup-ort.sh) (m/a.TestORT, m/a.TestORT2)"}, false},
		{"a failure", stream,
			[]string{"x_test.go:9: got 2, want 3", "FAIL\tm/b\t0.2s", "tests: 1 passed, 1 failed, 3 skipped: FAILED",
				"  skipped 1: no GPU: libcuda.so.1 not found (m/b.TestGPU)"}, true},
		{"a build failure", `{"ImportPath":"m/c","Action":"build-output","Output":"c.go:3:1: syntax error\n"}
{"ImportPath":"m/c","Action":"build-fail"}
{"Action":"output","Package":"m/c","Output":"FAIL\tm/c [build failed]\n"}
{"Action":"fail","Package":"m/c"}
`, []string{"c.go:3:1: syntax error", "tests: 0 passed, 0 failed, 0 skipped: FAILED (a package did not build"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			s, err := run(strings.NewReader(tc.in), &out)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if fail := s.failed > 0 || s.failedBuild; fail != tc.fail {
				t.Errorf("failed = %v, want %v", fail, tc.fail)
			}
			if strings.Contains(out.String(), "TestOK") || strings.Contains(out.String(), "PASS\n") {
				t.Errorf("a passing test's output was shown:\n%s", out.String())
			}
		})
	}
}
