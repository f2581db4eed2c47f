package dist

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDistributedDoc runs the commands of docs/distributed.md's "Try it" section as written
// (the binary's path moved into a temporary folder) and checks every output line it shows.
func TestDistributedDoc(t *testing.T) {
	need(t, "mpirun", "PROLONG_REQUIRE_MPI", "apt-get install openmpi-bin libopenmpi-dev")
	doc, err := os.ReadFile("../../docs/distributed.md")
	if err != nil {
		t.Fatal(err)
	}
	sec := string(doc)
	i := strings.Index(sec, "## Try it")
	if i < 0 {
		t.Fatal(`docs/distributed.md has no "## Try it" section`)
	}
	sec = sec[i:]
	blocks := strings.Split(sec, "```")
	if len(blocks) < 4 || !strings.HasPrefix(blocks[1], "sh\n") {
		t.Fatal(`docs/distributed.md's "Try it" section lacks its sh block and output block`)
	}
	script := strings.TrimPrefix(blocks[1], "sh\n")
	shown := strings.Split(strings.TrimSpace(blocks[3]), "\n")
	bin := filepath.Join(t.TempDir(), "mpitest")
	script = strings.ReplaceAll(script, "/tmp/mpitest", bin)
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = "../.."
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(5 * time.Minute):
			cmd.Process.Kill()
		}
	}()
	out, err := cmd.CombinedOutput()
	close(done)
	if err != nil {
		t.Fatalf("the guide's commands failed: %v\n%s", err, out)
	}
	for _, line := range shown {
		if !strings.Contains(string(out), line+"\n") {
			t.Errorf("output lacks the guide's line %q:\n%s", line, out)
		}
	}
}
