package reward

import (
	"context"
	"os/exec"
	"testing"
)

// BenchmarkSandboxRun measures one sandboxed run of an empty program against the same
// interpreter started bare (python3 -I -c pass) in the same benchmark run; the difference is the
// sandbox's start overhead per run (namespaces, mounts, limits, clean-up).
func BenchmarkSandboxRun(b *testing.B) {
	sb := NewSandbox(SandboxConfig{Concurrency: 1})
	if _, err := sb.Isolation(); err != nil {
		b.Skipf("code sandbox unavailable: %v", err)
	}
	var bare, boxed float64
	b.Run("bare", func(b *testing.B) {
		for b.Loop() {
			if out, err := exec.Command(sb.Config().Python, "-I", "-c", "pass").CombinedOutput(); err != nil {
				b.Fatalf("%v %s", err, out)
			}
		}
		bare = b.Elapsed().Seconds() * 1e3 / float64(b.N)
		b.ReportMetric(bare, "ms/run")
	})
	b.Run("sandbox", func(b *testing.B) {
		for b.Loop() {
			r, err := sb.Run(context.Background(), map[string]string{"main.py": "pass"}, nil)
			if err != nil || r.ExitCode != 0 {
				b.Fatalf("%v %+v", err, r)
			}
		}
		boxed = b.Elapsed().Seconds() * 1e3 / float64(b.N)
		b.ReportMetric(boxed, "ms/run")
		if bare > 0 {
			b.ReportMetric(boxed-bare, "overhead-ms/run")
			b.ReportMetric(boxed/bare, "x-bare")
		}
	})
}
