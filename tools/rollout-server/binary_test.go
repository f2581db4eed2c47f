package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/grpo/remote/remotetest"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds the real program once.
func serverBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rollout-server-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "rollout-server")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// launch starts the real server on a free port and returns its URL once it listens.
func launch(t *testing.T, args ...string) (*exec.Cmd, string) {
	t.Helper()
	return start(t, exec.Command(serverBinary(t), append([]string{"--addr", "127.0.0.1:0"}, args...)...))
}

// launchUnder is launch with shell commands run first (ulimit), in the shell that then
// becomes the server; stderr receives the server's log.
func launchUnder(t *testing.T, shell string, stderr io.Writer, args ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command("sh", append([]string{"-c", shell + ` && exec "$0" "$@"`, serverBinary(t), "--addr", "127.0.0.1:0"}, args...)...)
	cmd.Stderr = stderr
	return start(t, cmd)
}

// start runs the server command and returns its URL once it listens (stderr: the test's, unless
// set).
func start(t *testing.T, cmd *exec.Cmd) (*exec.Cmd, string) {
	t.Helper()
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	return cmd, remotetest.Listen(t, cmd)
}

// TestSIGTERM: on SIGTERM the server stops accepting, lets the request in flight finish, and
// exits with status 0.
func TestSIGTERM(t *testing.T) {
	dir, _, _ := longModelDir(t, 9) // the request takes about a second: in flight at SIGTERM
	cmd, url := launch(t, "--model", dir)
	req, _ := http.NewRequest("POST", url+"/v1/completions", strings.NewReader(`{"prompt": [1, 2], "max_tokens": 3000, "ignore_eos": true, "stream": true}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	if _, err := r.ReadString('\n'); err != nil { // the request runs
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(r)
	if n := strings.Count(string(rest), "data: {"); n != 2999 {
		t.Errorf("after SIGTERM the in-flight request streamed %d more tokens, want the other 2999", n)
	}
	if !strings.Contains(string(rest), `"finish_reason":"length"`) || !strings.HasSuffix(strings.TrimSpace(string(rest)), "data: [DONE]") {
		t.Errorf("the in-flight request did not finish:\n%.300s", rest)
	}
	done := make(chan error)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit 20 s after SIGTERM")
	}
	if _, err := http.Get(url + "/health"); err == nil {
		t.Error("still accepting connections after exit")
	}
}

// TestOpenAIClient runs the npm openai package, unchanged, against the real server
// (scripts/openai_client.mjs): completions with ids and text, n > 1, logprobs, streaming, chat
// (plain and streamed), errors, and the models list.
func TestOpenAIClient(t *testing.T) {
	nodeDir := os.Getenv("PROLONG_OPENAI_DIR")
	if nodeDir == "" {
		home, _ := os.UserHomeDir()
		nodeDir = filepath.Join(home, ".cache", "prolong", "openai")
	}
	_, errNode := exec.LookPath("node")
	_, errPkg := os.Stat(filepath.Join(nodeDir, "node_modules", "openai", "package.json"))
	if errNode != nil || errPkg != nil {
		if os.Getenv("PROLONG_REQUIRE_NODE") == "1" {
			t.Fatalf("PROLONG_REQUIRE_NODE=1 but node or the openai package is missing (scripts/setup-openai.sh): %v %v", errNode, errPkg)
		}
		t.Skipf("node or the npm openai package is missing (scripts/setup-openai.sh): %v %v", errNode, errPkg)
	}
	dir, cfg, w := modelDir(t, 10, true)
	_, url := launch(t, "--model", dir, "--api-key", "sekret", "--served-model-name", "tiny")
	cmd := exec.Command("node", "../../scripts/openai_client.mjs", nodeDir, url+"/v1", "sekret", "tiny")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("openai client: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	if !strings.Contains(string(out), "all checks passed") {
		t.Fatalf("client output:\n%s", out)
	}
	// The echoed prompt's log-probs, as the client read them, are engine.Score's.
	_, line, ok := strings.Cut(string(out), "echo logprobs: ")
	line, _, _ = strings.Cut(line, "\n")
	var echo []*float32
	if err := json.Unmarshal([]byte(line), &echo); !ok || err != nil || len(echo) != 5 || echo[0] != nil {
		t.Fatalf("echo log-probs %q: %v", line, err)
	}
	m, err := engine.NewModel(cfg, cpu.New(), w, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := m.Score(context.Background(), []engine.ScoreRequest{{Tokens: []int32{1, 6, 15, 7, 18}, Start: 1}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i, lp := range sc[0].LogProbs {
		if *echo[i+1] != lp {
			t.Errorf("echo log-prob %d through the openai client %g, engine.Score %g", i+1, *echo[i+1], lp)
		}
	}
}
