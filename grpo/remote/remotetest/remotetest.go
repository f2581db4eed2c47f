// Package remotetest starts real tools/rollout-server processes for the tests of packages that
// talk to them (grpo/remote, tools/train), the way a user starts them.
package remotetest

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Key is the API key the servers Start starts require.
const Key = "k"

// Start builds tools/rollout-server and starts count of them on free loopback ports, serving
// the model in modelDir with the API key Key and any further flags in args; it returns their
// URLs, read from each server's "listening on" line. The servers are killed when the test ends.
func Start(t testing.TB, modelDir string, count int, args ...string) []string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "rollout-server")
	build := exec.Command("go", "build", "-o", bin, "./tools/rollout-server")
	build.Dir = moduleRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./tools/rollout-server: %v\n%s", err, out)
	}
	var urls []string
	for range count {
		cmd := exec.Command(bin, append([]string{"--model", modelDir, "--addr", "127.0.0.1:0", "--api-key", Key}, args...)...)
		cmd.Stderr = io.Discard
		urls = append(urls, Listen(t, cmd))
	}
	return urls
}

// Listen starts a rollout-server command (stderr as the caller set it; the server's log) and
// returns its URL once its "listening on" line is out; the server is killed when the test ends.
func Listen(t testing.TB, cmd *exec.Cmd) string {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("rollout-server exited before listening: %v", err)
	}
	url, ok := strings.CutPrefix(strings.TrimSpace(line), "rollout-server listening on ")
	if !ok {
		t.Fatalf("rollout-server said %q, want its listening line", line)
	}
	go io.Copy(io.Discard, stdout)
	return url
}

// moduleRoot is the nearest folder above the working directory holding go.mod.
func moduleRoot(t testing.TB) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		up := filepath.Dir(dir)
		if up == dir {
			t.Fatal("remotetest: no go.mod above the working directory")
		}
		dir = up
	}
}
