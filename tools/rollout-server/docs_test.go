package main

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDocs runs the commands of docs/rollout-server.md from the repository root, in order:
// the training run and the load generator with the go command, the server as the real binary
// (on a free port instead of 8000; its output directory under a temporary one), and every
// curl line with bash; then SIGTERM, and the exit status must be 0.
func TestDocs(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		if os.Getenv("PROLONG_REQUIRE_NODE") == "1" { // CI: .ci/run installs curl with node's packages
			t.Fatal("curl is not installed")
		}
		t.Skip("curl is not installed")
	}
	page, err := os.ReadFile("../../docs/rollout-server.md")
	if err != nil {
		t.Fatal(err)
	}
	bin := serverBinary(t)
	tmp := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	t.Chdir("../..")
	fix := func(s string) string {
		s = strings.ReplaceAll(s, "out/", tmp+"/")
		return strings.ReplaceAll(s, "127.0.0.1:8000", addr)
	}
	var server *exec.Cmd
	ran := map[string]int{}
	for _, b := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(page), -1) {
		for _, line := range strings.Split(strings.TrimSpace(b[1]), "\n") {
			line = fix(strings.TrimSpace(line))
			switch {
			case strings.HasPrefix(line, "go run ./tools/rollout-server "):
				args := strings.Fields(strings.TrimPrefix(line, "go run ./tools/rollout-server "))
				server = exec.Command(bin, append(args, "--addr", addr)...)
				if err := server.Start(); err != nil {
					t.Fatal(err)
				}
				defer server.Process.Kill()
				for i := 0; ; i++ {
					if resp, err := http.Get("http://" + addr + "/health"); err == nil {
						resp.Body.Close()
						break
					}
					if i > 100 {
						t.Fatal("the server did not come up")
					}
					time.Sleep(100 * time.Millisecond)
				}
				ran["server"]++
			default:
				out, err := exec.Command("bash", "-c", line).CombinedOutput()
				if err != nil {
					t.Fatalf("docs/rollout-server.md: %s: %v\n%s", line, err, out)
				}
				if strings.HasPrefix(line, "curl") && (len(out) == 0 || strings.Contains(string(out), `"error"`)) {
					t.Fatalf("docs/rollout-server.md: %s answered:\n%.500s", line, out)
				}
				if strings.Contains(line, "loadgen") && !strings.Contains(string(out), "failed 0") {
					t.Fatalf("loadgen:\n%s", out)
				}
				ran[strings.Fields(line)[0]]++
			}
		}
	}
	if ran["server"] != 1 || ran["curl"] != 7 || ran["go"] != 2 {
		t.Fatalf("ran %v", ran)
	}
	server.Process.Signal(syscall.SIGTERM)
	if err := server.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}
