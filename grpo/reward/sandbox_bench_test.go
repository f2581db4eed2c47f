package reward

import (
	"context"
	"os"
	"os/exec"
	"testing"
)

// BenchmarkSandboxRun measures one run of an empty program three ways in the same benchmark
// run: the interpreter started bare (python3 -I -c pass), a run without isolation (the
// AllowUnsandboxed path: prelude, limits, a host directory), and a sandboxed run. The
// differences are the start overhead per run of the sandbox as a whole and of its isolation
// (namespaces, the re-executed init, mounts, teardown).
func BenchmarkSandboxRun(b *testing.B) {
	sb := NewSandbox(SandboxConfig{Concurrency: 1})
	if _, err := sb.Isolation(); err != nil {
		b.Skipf("code sandbox unavailable: %v", err)
	}
	plain := NewSandbox(SandboxConfig{Concurrency: 1})
	plain.once.Do(func() { plain.iso = Isolation{OwnUser: os.Geteuid() == 0} })
	perRun := func(b *testing.B, run func() error) float64 {
		for b.Loop() {
			if err := run(); err != nil {
				b.Fatal(err)
			}
		}
		ms := b.Elapsed().Seconds() * 1e3 / float64(b.N)
		b.ReportMetric(ms, "ms/run")
		return ms
	}
	sandboxRun := func(s *Sandbox) func() error {
		return func() error {
			r, err := s.Run(context.Background(), map[string]string{"main.py": "pass"}, nil)
			if err == nil && r.ExitCode != 0 {
				b.Fatalf("%+v %s", r, r.Stderr)
			}
			return err
		}
	}
	var bare, unsandboxed float64
	b.Run("bare", func(b *testing.B) {
		bare = perRun(b, func() error { return exec.Command(sb.Config().Python, "-I", "-c", "pass").Run() })
	})
	b.Run("unsandboxed", func(b *testing.B) {
		unsandboxed = perRun(b, sandboxRun(plain))
		b.ReportMetric(unsandboxed-bare, "ms-over-bare")
	})
	b.Run("sandbox", func(b *testing.B) {
		ms := perRun(b, sandboxRun(sb))
		b.ReportMetric(ms-bare, "ms-over-bare")
		b.ReportMetric(ms-unsandboxed, "ms-over-unsandboxed")
	})
}
