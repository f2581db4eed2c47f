package reward

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestClaimUIDs: claims never overlap while held (flock conflicts between open files, in one
// process as across processes), and a released uid is claimed again.
func TestClaimUIDs(t *testing.T) {
	dir := t.TempDir()
	a, fa, err := claimUIDs(dir, 100, 3)
	if err != nil {
		t.Fatal(err)
	}
	b, fb, err := claimUIDs(dir, 100, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a, []int{100, 101, 102}) || !slices.Equal(b, []int{103, 104}) {
		t.Fatalf("claims %v and %v, want [100 101 102] and [103 104]", a, b)
	}
	fa[1].Close() // the first sandbox lets 101 go
	c, _, err := claimUIDs(dir, 100, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c, []int{101, 105}) {
		t.Errorf("after 101 was released: %v, want [101 105]", c)
	}
	_ = fb
	if _, _, err := claimUIDs("/proc/no-such-dir", 100, 1); err == nil {
		t.Error("a claim in a directory that cannot be made succeeded")
	}
}

// TestSandboxesOnOneHostOwnUsers: two sandboxes of one process (as two ranks of a node would
// be) running at once map their runs to different host users, read from inside the runs.
func TestSandboxesOnOneHostOwnUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		skipUnlessRequired(t, "runs have users of their own only as root")
	}
	cfg := SandboxConfig{Timeout: 3 * time.Second, Concurrency: 2, BaseUID: testBaseUID}
	sbs := []*Sandbox{NewSandbox(cfg), NewSandbox(cfg)}
	for _, sb := range sbs {
		if _, err := sb.Isolation(); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[int]int{} // host uid → runs
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := sbs[i%2].Run(context.Background(), map[string]string{"main.py": "print(open('/proc/self/uid_map').read().split()[1])"}, nil)
			id, perr := strconv.Atoi(strings.TrimSpace(string(r.Stdout)))
			mu.Lock()
			defer mu.Unlock()
			if err != nil || r.ExitCode != 0 || perr != nil {
				t.Errorf("run %d: %v, exit %d, stdout %q stderr %s", i, err, r.ExitCode, r.Stdout, r.Stderr)
				return
			}
			seen[id]++
		}()
	}
	wg.Wait()
	u0, u1 := sbs[0].slotUIDs(), sbs[1].slotUIDs()
	for _, u := range u0 {
		if slices.Contains(u1, u) {
			t.Fatalf("both sandboxes run as host uid %d (%v, %v)", u, u0, u1)
		}
	}
	for id := range seen {
		if !slices.Contains(u0, id) && !slices.Contains(u1, id) {
			t.Errorf("a run was host uid %d, not one of the claimed %v %v", id, u0, u1)
		}
	}
	if len(seen) < 2 {
		t.Errorf("the runs of two sandboxes saw %d host uid(s): %v", len(seen), seen)
	}
	t.Logf("host uids of the runs: %v (claimed %v and %v)", seen, u0, u1)
}
