// Package slurmtest runs docs/distributed.md's sbatch script (issue 32) on a one-node Slurm
// cluster that the test starts itself: its own munged, slurmctld and slurmd, its own slurm.conf,
// ports and spool folders in a temporary folder, stopped at the end whatever happened.
package slurmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/tools/train/disttest/internal/disthelp"
)

// slurmPrograms are what the test runs: Debian's slurm-wlm (slurmctld, slurmd and the client
// commands) and munge.
var slurmPrograms = []string{"munged", "munge", "slurmctld", "slurmd", "sinfo", "sbatch", "scancel", "squeue"}

// requireSlurm fails when a program is missing and PROLONG_REQUIRE_SLURM=1 (CI sets it),
// else skips saying what to install.
func requireSlurm(t *testing.T) {
	t.Helper()
	for _, p := range slurmPrograms {
		if _, err := exec.LookPath(p); err != nil {
			if os.Getenv("PROLONG_REQUIRE_SLURM") == "1" {
				t.Fatalf("PROLONG_REQUIRE_SLURM=1 but %s is not on PATH (apt-get install slurm-wlm munge)", p)
			}
			t.Skipf("%s not found: apt-get install slurm-wlm munge (set PROLONG_REQUIRE_SLURM=1 to make this a failure)", p)
		}
	}
	if os.Geteuid() != 0 {
		// slurmd starts the job's processes as their owner, which needs root.
		if os.Getenv("PROLONG_REQUIRE_SLURM") == "1" {
			t.Fatal("PROLONG_REQUIRE_SLURM=1 but the test does not run as root (slurmd must)")
		}
		t.Skip("slurmd needs root: run as root (set PROLONG_REQUIRE_SLURM=1 to make this a failure)")
	}
}

// sbatchScript is docs/distributed.md's prolong.sbatch: the bash block of its "On a Slurm
// cluster" section.
func sbatchScript(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile("../../../../docs/distributed.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)### On a Slurm cluster\n.*?```bash\n(.*?)```").FindStringSubmatch(string(doc))
	if m == nil {
		t.Fatal(`docs/distributed.md's "On a Slurm cluster" section lacks its bash block`)
	}
	return m[1]
}

// freePort is a TCP port nobody listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// daemon starts a program that runs in the foreground, stopped (SIGTERM, then SIGKILL after
// 10 s) at the test's end; its output goes to log.
func daemon(t *testing.T, log string, env []string, name string, args ...string) {
	t.Helper()
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); f.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
}

// cluster is a one-node Slurm cluster of this machine, started by startCluster.
type cluster struct {
	dir  string   // its files
	env  []string // the environment its client commands need (SLURM_CONF)
	node string   // the node's name: this host's short name
}

// startCluster writes a slurm.conf for one node (this host, all its CPUs, reached on the
// loopback address whatever the host's name resolves to) in a temporary folder and starts munged, slurmctld and slurmd on it, as root (SlurmUser=root), on free
// ports, with no accounting; it returns once sinfo reports the node idle, or fails after two
// minutes. The daemons are stopped at the test's end, after the cluster's jobs are cancelled.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	dir, err := os.MkdirTemp("", "slurm") // short: munge's socket path must fit in 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	host, _, _ = strings.Cut(host, ".") // the short name, as slurmd finds itself
	c := &cluster{dir: dir, node: host}
	key := make([]byte, 1024)
	if f, err := os.Open("/dev/urandom"); err != nil {
		t.Fatal(err)
	} else {
		_, err = f.Read(key)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "munge.sock")
	for _, err := range []error{
		os.WriteFile(filepath.Join(dir, "munge.key"), key, 0o600),
		os.Mkdir(filepath.Join(dir, "state"), 0o700),
		os.Mkdir(filepath.Join(dir, "spool"), 0o700),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf(`ClusterName=prolongtest
SlurmctldHost=%[1]s(127.0.0.1)
SlurmctldPort=%[3]d
SlurmdPort=%[4]d
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=%[2]s/munge.sock
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=%[2]s/state
SlurmdSpoolDir=%[2]s/spool
SlurmctldPidFile=%[2]s/slurmctld.pid
SlurmdPidFile=%[2]s/slurmd.pid
SlurmctldLogFile=%[2]s/slurmctld.log
SlurmdLogFile=%[2]s/slurmd.log
NodeName=%[1]s NodeAddr=127.0.0.1 CPUs=%[5]d State=UNKNOWN
PartitionName=test Nodes=%[1]s Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
`, c.node, dir, freePort(t), freePort(t), runtime.NumCPU())
	confPath := filepath.Join(dir, "slurm.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	c.env = append(os.Environ(), "SLURM_CONF="+confPath)
	t.Cleanup(func() {
		if t.Failed() {
			for _, f := range []string{"munged.log", "slurmctld.log", "slurmd.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				t.Logf("%s:\n%s", f, b)
			}
		}
	})

	start := time.Now()
	// munged refuses root without --force; the key and socket are the test's own.
	daemon(t, filepath.Join(dir, "munged.out"), c.env, "munged", "--foreground", "--force", "--socket="+sock,
		"--key-file="+filepath.Join(dir, "munge.key"), "--log-file="+filepath.Join(dir, "munged.log"),
		"--pid-file="+filepath.Join(dir, "munged.pid"), "--seed-file="+filepath.Join(dir, "munged.seed"))
	if err := waitFor(10*time.Second, func() error {
		return exec.Command("munge", "--socket="+sock, "--no-input").Run()
	}); err != nil {
		t.Fatalf("munged did not answer on %s: %v", sock, err)
	}
	// In the foreground (-D) as systemd's units start them; stopped by t.Cleanup.
	daemon(t, filepath.Join(dir, "slurmctld.out"), c.env, "slurmctld", "-D", "-f", confPath)
	daemon(t, filepath.Join(dir, "slurmd.out"), c.env, "slurmd", "-D", "-f", confPath)
	// Cancel the cluster's jobs before the daemons stop (cleanups run last first), so that no
	// rank outlives a failed test.
	t.Cleanup(func() {
		out, err := c.command("scancel", "--full", "--user=root").CombinedOutput()
		if err != nil {
			t.Logf("scancel: %v %s", err, out)
		}
		if err := waitFor(30*time.Second, func() error {
			out, err := c.command("squeue", "--noheader").Output()
			if err == nil && len(bytes.TrimSpace(out)) > 0 {
				err = fmt.Errorf("jobs left: %s", out)
			}
			return err
		}); err != nil {
			t.Logf("squeue after scancel: %v", err)
		}
	})
	var state string
	if err := waitFor(2*time.Minute, func() error {
		out, err := c.command("sinfo", "--noheader", "--nodes="+c.node, "--format=%t").Output()
		if state = strings.TrimSpace(string(out)); err == nil && state == "idle" {
			return nil
		}
		return fmt.Errorf("node %s is %q (%v)", c.node, state, err)
	}); err != nil {
		t.Fatalf("the one-node cluster did not start within 2 minutes: %v", err)
	}
	t.Logf("Slurm started: node %s idle %v after starting munged", c.node, time.Since(start).Round(time.Millisecond))
	return c
}

// command is a Slurm client command of the cluster.
func (c *cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = c.env
	return cmd
}

// waitFor calls try every 100 ms until it returns nil or limit passes (then its last error).
func waitFor(limit time.Duration, try func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := try()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sbatch submits script with opts and waits for the job's end (sbatch --wait); it returns the
// job's output file (its --output, in the cluster's folder).
func (c *cluster) sbatch(t *testing.T, script string, env []string, opts ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	args := append([]string{"--wait", "--parsable", "--output=" + filepath.Join(c.dir, "%x-%j.log")}, opts...)
	cmd := exec.CommandContext(ctx, "sbatch", append(args, script)...)
	cmd.Env = append(append(append([]string(nil), c.env...), "GOMAXPROCS="+disthelp.Threads,
		"OMPI_MCA_hwloc_base_binding_policy=none", "OMPI_MCA_mpi_yield_when_idle=1"), env...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = c.dir, &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	id := strings.TrimSpace(strings.Split(stdout.String(), ";")[0])
	log := filepath.Join(c.dir, "prolong-"+id+".log")
	out, _ := os.ReadFile(log)
	if err != nil {
		t.Fatalf("sbatch %s: %v\n%s%s\njob output (%s):\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String(), log, out)
	}
	if _, perr := strconv.Atoi(id); perr != nil {
		t.Fatalf("sbatch --parsable printed %q, not a job id", stdout.String())
	}
	t.Logf("sbatch job %s: %v", id, time.Since(start).Round(time.Second))
	return string(out)
}

// TestSbatchDoc starts a one-node Slurm cluster and submits docs/distributed.md's sbatch
// script as written, with the default job in the place of the 1.5B model (the script's TRAIN,
// RUN and JOB variables) and sbatch's command line shrinking its 4 nodes × 8 GPUs to 2 tasks
// on this node: srun --mpi=pmix starts 2 ranks that find Open MPI through PMIx. The run must
// be the 1-process run's, as under mpirun (disthelp.CheckDefaultJob: one run directory, step
// 1's metrics to 1e-6, the same weights on both ranks). Submitting the script again with
// --steps 3 resumes the run (the script's --resume line) for one more step.
func TestSbatchDoc(t *testing.T) {
	requireSlurm(t)
	script := sbatchScript(t)
	for _, want := range []string{"srun --mpi=pmix ", `TRAIN=${TRAIN:-`, `RUN=${RUN:-`, `JOB=${JOB:-`, "--resume"} {
		if !strings.Contains(script, want) {
			t.Fatalf("the doc's sbatch script changed (no %q):\n%s", want, script)
		}
	}
	bin := disthelp.Trainer(t)
	tmp := t.TempDir()
	one, two := filepath.Join(tmp, "one"), filepath.Join(tmp, "two")
	job := []string{"--quiet", "--steps", "2", "--seed", "1"}
	// The 1-process run, beside the cluster's start and the job.
	ref := make(chan error, 1)
	var refOut bytes.Buffer
	go func() {
		cmd := disthelp.Command(bin, append(job, "--out", one)...)
		cmd.Stdout, cmd.Stderr = &refOut, &refOut
		ref <- cmd.Run()
	}()
	c := startCluster(t)
	path := filepath.Join(c.dir, "prolong.sbatch")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// One node, 2 tasks of one CPU, no GPU, 20 minutes: the command line overrides #SBATCH.
	opts := []string{"--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=20"}
	env := []string{"TRAIN=" + bin, "RUN=" + two, "JOB=" + strings.Join(job, " ")}
	log := c.sbatch(t, path, env, opts...)
	if err := <-ref; err != nil {
		t.Fatalf("the 1-process run: %v\n%s", err, refOut.String())
	}
	for r := range 2 {
		if want := fmt.Sprintf("dist: rank %d of 2 (local rank %d), launched by srun", r, r); !strings.Contains(log, want) {
			t.Errorf("the job's output lacks %q", want)
		}
	}
	if !strings.Contains(log, "backend mpi") {
		t.Errorf("the job's ranks did not open MPI:\n%s", log)
	}
	disthelp.CheckDefaultJob(t, two, 2, disthelp.Metrics(t, one), log, disthelp.DefaultJobTolerances(1e-6))
	if t.Failed() {
		t.Fatalf("job output:\n%s", log)
	}

	// Resubmitted, the script resumes from the run state of step 2 (without --resume the
	// trainer refuses a run directory that holds a run).
	env[len(env)-1] = "JOB=--quiet --steps 3 --seed 1"
	log = c.sbatch(t, path, env, opts...)
	m := disthelp.Metrics(t, two)
	if _, ok := m[3]; !ok || len(m) != 4 {
		t.Errorf("after resubmitting, metrics.jsonl has steps %v, want 0-3:\n%s", keys(m), log)
	}
	if _, err := os.Stat(filepath.Join(two, "checkpoints/step-000003/model.safetensors")); err != nil {
		t.Error(errors.Join(err, fmt.Errorf("job output:\n%s", log)))
	}
}

func keys(m map[int]map[string]any) []int {
	var ks []int
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
