// Package rollouttest runs the trainer's default job with rollout servers under mpirun with 2
// ranks (issue 32): each rank generates on its share of --rollout-servers.
package rollouttest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	neturl "net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo/quickstart"
	"github.com/prolong-rl/prolong/grpo/remote/remotetest"
	"github.com/prolong-rl/prolong/tools/train/disttest/internal/disthelp"
)

// front is a proxy before one rollout server that counts its completion requests by their
// "user" field (who asked).
type front struct {
	url, server string
	mu          sync.Mutex
	byUser      map[string]int
}

func newFront(t *testing.T, server string) *front {
	target, err := neturl.Parse(server)
	if err != nil {
		t.Fatal(err)
	}
	f := &front{server: server, byUser: map[string]int{}}
	proxy := httputil.NewSingleHostReverseProxy(target)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" && r.URL.Path == "/v1/completions" {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			var req struct {
				User string `json:"user"`
			}
			json.Unmarshal(body, &req)
			f.mu.Lock()
			f.byUser[req.User]++
			f.mu.Unlock()
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	f.url = ts.URL
	return f
}

// take returns the counts by user so far and starts counting afresh.
func (f *front) take() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.byUser
	f.byUser = map[string]int{}
	return m
}

// served is the server's own count of completion requests answered 200 (its /metrics).
func served(t *testing.T, server string) int {
	t.Helper()
	resp, err := http.Get(server + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "prolong_requests_total{") && strings.Contains(line, `code="200"`) && strings.Contains(line, `endpoint="completions"`) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatalf("%s/metrics: %q: %v", server, line, err)
			}
			n += int(v)
		}
	}
	return n
}

// TestDataParallelRolloutServers runs the default job `--steps 2 --seed 1` with three real
// rollout servers (tools/rollout-server, each behind a proxy that counts its requests by
// their user field), in one process and under mpirun -np 2: rank 0 generates on the first
// server alone and rank 1 on the other two (grpo.ServerShare: 3 servers split 1, 2), each
// logging its share; every server answers requests of its rank only, as many as its
// /metrics counts; and the 2-rank run logs the 1-process run's step-1 metrics (1e-6 relative)
// and ends with the same weights on both ranks.
func TestDataParallelRolloutServers(t *testing.T) {
	launcher := disthelp.Mpirun(t)
	bin := disthelp.Trainer(t)
	modelDir := t.TempDir() // a random model: the run pushes its own weights first
	if err := checkpoints.Save(modelDir, quickstart.ModelConfig(), engine.RandomWeights(quickstart.ModelConfig(), 1, 0.02), checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	servers := remotetest.Start(t, modelDir, 3)
	var fronts []*front
	var urls []string
	for _, s := range servers {
		f := newFront(t, s)
		fronts = append(fronts, f)
		urls = append(urls, f.url)
	}
	t.Setenv("PROLONG_API_KEY", remotetest.Key)
	tmp := t.TempDir()
	one, two := filepath.Join(tmp, "one"), filepath.Join(tmp, "two")
	args := []string{"--quiet", "--steps", "2", "--seed", "1", "--rollout-servers", strings.Join(urls, ","), "--overlap", "off", "--out"}
	disthelp.Run(t, disthelp.Command(bin, append(args, one)...))
	count := make([]int, len(fronts)) // each server's completion requests, both runs
	for i, f := range fronts {
		m := f.take()
		if len(m) != 1 || m[""] == 0 {
			t.Errorf("1 process: server %d saw requests by user %v, want some, untagged", i, m)
		}
		count[i] = m[""]
	}
	_, stderr := disthelp.Run(t, disthelp.Command(launcher, disthelp.MPIArgs(2, bin, append(args, two)...)...))
	disthelp.CheckDefaultJob(t, two, 2, disthelp.Metrics(t, one), stderr, disthelp.DefaultJobTolerances(1e-6))

	for r, want := range []string{urls[0], urls[1] + "," + urls[2]} {
		if line := fmt.Sprintf("dist: rollout servers rank=%d size=2 servers=%s", r, want); !strings.Contains(stderr, line) {
			t.Errorf("the ranks' log lacks %q", line)
		}
	}
	for i, f := range fronts {
		m := f.take()
		user := fmt.Sprintf("rank %d", min(i, 1))
		if len(m) != 1 || m[user] == 0 {
			t.Errorf("2 ranks: server %d saw requests by user %v, want %q's alone", i, m, user)
		}
		t.Logf("2 ranks: server %d answered %v", i, m)
		for _, n := range m {
			count[i] += n
		}
		if got := served(t, servers[i]); got != count[i] {
			t.Errorf("server %d's /metrics counts %d completions, its proxy %d", i, got, count[i])
		}
	}
}
