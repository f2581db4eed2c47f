package dist

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// need skips (or, with the variable set to 1, fails) a test whose launcher is missing.
func need(t *testing.T, launcher, requireVar, install string) string {
	t.Helper()
	p, err := exec.LookPath(launcher)
	if err == nil {
		return p
	}
	if os.Getenv(requireVar) == "1" {
		t.Fatalf("%s=1 but %s is not on PATH (%s)", requireVar, launcher, install)
	}
	t.Skipf("%s not found: %s (set %s=1 to make this a failure)", launcher, install, requireVar)
	return ""
}

var mpitest struct {
	once sync.Once
	bin  string
	err  error
}

// buildMPITest builds the test program (once per test binary) as every shipped binary is
// built: without cgo.
func buildMPITest(t *testing.T) string {
	t.Helper()
	mpitest.once.Do(func() {
		dir, err := os.MkdirTemp("", "dist-mpitest")
		if err != nil {
			mpitest.err = err
			return
		}
		mpitest.bin = filepath.Join(dir, "mpitest")
		cmd := exec.Command("go", "build", "-o", mpitest.bin, "./internal/mpitest")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			mpitest.err = fmt.Errorf("go build ./internal/mpitest with CGO_ENABLED=0: %v\n%s", err, out)
		}
	})
	if mpitest.err != nil {
		t.Fatal(mpitest.err)
	}
	return mpitest.bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if mpitest.bin != "" {
		os.RemoveAll(filepath.Dir(mpitest.bin))
	}
	os.Exit(code)
}

// runJob runs a launcher command with a hang guard; it returns the exit code and the output.
func runJob(t *testing.T, guard time.Duration, name string, args ...string) (int, string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// GOGC=5: the collector runs often while MPI holds the buffers' addresses (both launchers
	// pass the environment on to the ranks).
	cmd.Env = append(os.Environ(), "GOGC=5")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("%s %s still running after %v (killed):\n%s", name, strings.Join(args, " "), guard, out)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return code, string(out), took
}

type launcherCase struct {
	name, bin, requireVar, install string
	args                           func(np int) []string
}

var launchers = []launcherCase{
	{"Open MPI", "mpirun.openmpi", "PROLONG_REQUIRE_MPI", "apt-get install openmpi-bin libopenmpi-dev",
		func(np int) []string {
			return []string{"--allow-run-as-root", "--oversubscribe", "-np", itoa(np)}
		}},
	{"MPICH", "mpirun.mpich", "PROLONG_REQUIRE_MPICH", "apt-get install mpich",
		func(np int) []string { return []string{"-np", itoa(np)} }},
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestMPICollectives runs every collective under mpirun (-np 2 and 3) and checks each rank's
// results against the local backend fed the same inputs, plus hand-worked sums (see
// internal/mpitest).
func TestMPICollectives(t *testing.T) {
	for _, l := range launchers {
		t.Run(l.name, func(t *testing.T) {
			launcher := l.bin
			if l.bin == "mpirun.openmpi" {
				if _, err := exec.LookPath(launcher); err != nil {
					launcher = "mpirun"
				}
			}
			path := need(t, launcher, l.requireVar, l.install)
			bin := buildMPITest(t)
			for _, np := range []int{2, 3} {
				code, out, took := runJob(t, 3*time.Minute, path, append(l.args(np), bin)...)
				if code != 0 {
					t.Fatalf("-np %d: exit %d:\n%s", np, code, out)
				}
				for r := range np {
					if want := "rank " + itoa(r) + " of " + itoa(np); !strings.Contains(out, want) || strings.Count(out, ": ok 34 checks") != np {
						t.Fatalf("-np %d: want every rank to print ok 34 checks (%q missing):\n%s", np, want, out)
					}
				}
				t.Logf("-np %d: every rank passed 34 checks (%v)", np, took.Round(time.Millisecond))
			}
		})
	}
}

// TestMPITimeoutAborts: rank 1 never joins rank 0's all-reduce, so rank 0's watchdog calls
// MPI_Abort after the 2 s timeout, naming the collective, the rank and the wait, and the
// launcher ends the whole job with a non-zero status (the hang guard allows timeout + 30 s).
func TestMPITimeoutAborts(t *testing.T) {
	for _, l := range launchers {
		t.Run(l.name, func(t *testing.T) {
			launcher := l.bin
			if l.bin == "mpirun.openmpi" {
				if _, err := exec.LookPath(launcher); err != nil {
					launcher = "mpirun"
				}
			}
			path := need(t, launcher, l.requireVar, l.install)
			bin := buildMPITest(t)
			code, out, took := runJob(t, 32*time.Second, path, append(l.args(2), bin, "-mode", "timeout", "-timeout", "2s")...)
			if code == 0 {
				t.Fatalf("exit 0, want the job aborted:\n%s", out)
			}
			want := "dist: aborting the job (rank 0 of 2): all-reduce of fp32×16 did not complete on rank 0 of 2 after waiting 2"
			if !strings.Contains(out, want) || !strings.Contains(out, "(timeout 2s)") {
				t.Fatalf("output lacks %q:\n%s", want, out)
			}
			if strings.Contains(out, "instead of aborting") {
				t.Fatalf("a collective returned instead of aborting:\n%s", out)
			}
			t.Logf("job ended with exit %d after %v", code, took.Round(time.Millisecond))
		})
	}
}

// TestTorchrunStyleRendezvous starts three processes as torchrun would (RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR, MASTER_PORT; rank 0 last, so the others retry) and checks that rank
// 0's 128 bytes reach each of them over TCP. No MPI involved.
func TestTorchrunStyleRendezvous(t *testing.T) {
	bin := buildMPITest(t)
	port := freePort(t)
	const size = 3
	outs := make([][]byte, size)
	errs := make([]error, size)
	var wg sync.WaitGroup
	for r := size - 1; r >= 0; r-- {
		cmd := exec.Command(bin, "-mode", "rendezvous", "-timeout", "60s")
		cmd.Env = append(os.Environ(), "RANK="+itoa(r), "WORLD_SIZE="+itoa(size), "LOCAL_RANK="+itoa(r),
			"MASTER_ADDR=127.0.0.1", "MASTER_PORT="+itoa(port))
		wg.Go(func() { outs[r], errs[r] = cmd.CombinedOutput() })
		if r > 0 {
			time.Sleep(100 * time.Millisecond)
		}
	}
	wg.Wait()
	for r := range size {
		want := "rank " + itoa(r) + " of 3: 128 bytes, first 3, last " + itoa((127*7+3)&0xff) + "\n"
		if errs[r] != nil || string(outs[r]) != want {
			t.Errorf("rank %d: %v, output %q, want %q", r, errs[r], outs[r], want)
		}
	}
}
