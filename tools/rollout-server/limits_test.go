package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/tools/internal/tooltest"
)

// hostOf is the host:port of a server URL.
func hostOf(url string) string { return strings.TrimPrefix(url, "http://") }

// waitClosed reads c until the server closes it (or resets it) and returns what came, when
// its first byte came and when it closed; it fails the test when c is still open after limit.
func waitClosed(t *testing.T, c net.Conn, limit time.Duration) (data string, first, closed time.Duration) {
	t.Helper()
	t0 := time.Now()
	c.SetReadDeadline(t0.Add(limit))
	var b bytes.Buffer
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 && b.Len() == 0 {
			first = time.Since(t0)
		}
		b.Write(buf[:n])
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("still open after %v; it sent %q", limit, b.String())
		}
		if err != nil {
			return b.String(), first, time.Since(t0)
		}
	}
}

// modelSafetensors is the served model's weights as a safetensors file.
func modelSafetensors(t *testing.T, w map[string]engine.HostTensor) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "w.safetensors")
	if err := checkpoints.WriteSafetensors(path, w, checkpoints.F32, nil); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestSlowClients: a request body that trickles in is cut after --body-timeout (408 when the
// handler reads it; 401 and 404, which do not, are answered and the connection closed), a
// /v1/weights body that stops coming after a valid header is cut likewise, and an idle
// keep-alive connection is closed after --idle-timeout; all on real sockets against the
// real binary.
func TestSlowClients(t *testing.T) {
	dir, _, w := modelDir(t, 21, false)
	st := modelSafetensors(t, w)
	head := st[:8+binary.LittleEndian.Uint64(st)+64] // the header and the first tensor bytes
	_, url := launch(t, "--model", dir, "--api-key", "sekret", "--body-timeout", "1s", "--idle-timeout", "1s")
	post := func(path, auth string, length int) string {
		return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", path, auth, length)
	}
	key := "Authorization: Bearer sekret\r\n"
	for _, tc := range []struct {
		name, head, want string
	}{
		{"completions with the key", post("/v1/completions", key, 1000), "HTTP/1.1 408"},
		{"completions without the key", post("/v1/completions", "", 1000), "HTTP/1.1 401"},
		{"unknown route", post("/nowhere", "", 1000), "HTTP/1.1 404"},
		{"weights after a valid header", post("/v1/weights", key, len(st)) + string(head), "HTTP/1.1 408"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", hostOf(url))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, tc.head); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			defer close(stop)
			go func() { // a byte every 100 ms
				for tick := time.NewTicker(100 * time.Millisecond); ; {
					select {
					case <-stop:
						tick.Stop()
						return
					case <-tick.C:
						if _, err := c.Write([]byte("x")); err != nil {
							return
						}
					}
				}
			}()
			got, first, closed := waitClosed(t, c, 15*time.Second)
			t.Logf("answered after %.2f s, closed after %.2f s: %.60q", first.Seconds(), closed.Seconds(), got)
			if !strings.HasPrefix(got, tc.want) {
				t.Errorf("answered %.300q, want %s", got, tc.want)
			}
		})
	}
	t.Run("idle keep-alive", func(t *testing.T) {
		c, err := net.Dial("tcp", hostOf(url))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
		r := bufio.NewReader(c)
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		t0 := time.Now()
		c.SetReadDeadline(t0.Add(15 * time.Second))
		if _, err := r.ReadByte(); err != io.EOF {
			t.Fatalf("idle connection: %v, want the server to close it", err)
		}
		t.Logf("idle connection closed after %.2f s", time.Since(t0).Seconds())
	})
}

// procFDs is the number of file descriptors process pid holds.
func procFDs(t *testing.T, pid int) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// openFileLimits is process pid's soft and hard RLIMIT_NOFILE.
func openFileLimits(t *testing.T, pid int) (soft, hard int) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			soft, _ = strconv.Atoi(f[0])
			hard, _ = strconv.Atoi(f[1])
			return soft, hard
		}
	}
	t.Fatalf("no open-file limit in /proc/%d/limits", pid)
	return 0, 0
}

// TestConnectionFlood: 400 connections that never finish their headers, against the real
// binary: the server holds at most --max-connections of them plus a few (its file descriptors
// stay bounded), /health and /metrics still answer within seconds, and the API does not
// answer beyond the cap. With a hard open-file limit of 200 (ulimit -n 200) the cap is lowered
// to fit it; with a soft limit of 150 Go raises it to the hard limit at start.
func TestConnectionFlood(t *testing.T) {
	dir, _, _ := modelDir(t, 22, false)
	for _, tc := range []struct {
		name, shell, maxConns string
		maxFDs                int
		lowered               bool
	}{
		{"soft limit 150, --max-connections 100", "ulimit -Sn 150", "100", 100 + reserveConns + fdMargin, false},
		{"hard limit 200, --max-connections 1000", "ulimit -n 200", "1000", 200, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log tooltest.SyncBuffer
			cmd, url := launchUnder(t, tc.shell, &log, "--model", dir, "--api-key", "sekret", "--header-timeout", "60s", "--max-connections", tc.maxConns)
			pid := cmd.Process.Pid
			soft, hard := openFileLimits(t, pid)
			if tc.shell == "ulimit -Sn 150" && soft < hard-1 {
				t.Errorf("soft open-file limit %d, hard %d: Go did not raise it", soft, hard)
			}
			// The log reaches the buffer through a pipe that exec copies on its own goroutine: on
			// a loaded machine it may lag behind the listening line. Wait for the "serving" line
			// the server logs once it listens, after any lowering.
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(log.String(), "serving") && time.Now().Before(deadline); {
				time.Sleep(20 * time.Millisecond)
			}
			if got := strings.Contains(log.String(), "--max-connections lowered"); got != tc.lowered {
				t.Errorf("--max-connections lowered: %v, want %v; log:\n%s", got, tc.lowered, log.String())
			}
			var flood []net.Conn
			defer func() {
				for _, c := range flood {
					c.Close()
				}
			}()
			for range 400 {
				c, err := net.Dial("tcp", hostOf(url))
				if err != nil {
					t.Fatalf("connection %d: %v", len(flood), err)
				}
				io.WriteString(c, "GET /health HTTP/1.1\r\n") // and never the rest
				flood = append(flood, c)
			}
			fds := procFDs(t, pid)
			t0 := time.Now()
			status, metrics := healthDuringFlood(t, url)
			t.Logf("soft limit %d hard %d; 400 slow connections: the server holds %d file descriptors (bound %d); /health answered after %.2f s: %s",
				soft, hard, fds, tc.maxFDs, time.Since(t0).Seconds(), status)
			if fds > tc.maxFDs {
				t.Errorf("%d file descriptors, want at most %d", fds, tc.maxFDs)
			}
			if !strings.Contains(metrics, "prolong_connections_refused_total") {
				t.Errorf("/metrics lacks prolong_connections_refused_total")
			}
			if resp, err := http.Get(url + "/v1/models"); err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 503 || !strings.Contains(string(body), "too_many_connections") {
					t.Errorf("API beyond the connection cap: HTTP %d %s", resp.StatusCode, body)
				}
			}
		})
	}
}

// healthDuringFlood asks /health, on fresh connections, until it answers (at most 20 s),
// then /metrics.
func healthDuringFlood(t *testing.T, url string) (health, metrics string) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(path string) (string, error) {
		resp, err := client.Get(url + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return "", fmt.Errorf("HTTP %d %s", resp.StatusCode, body)
		}
		return string(body), err
	}
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if health, err = get("/health"); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("/health during the flood: %v", err)
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if metrics, err = get("/metrics"); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("/metrics during the flood: %v", err)
	}
	return strings.TrimSpace(health), metrics
}

// smallWindowConn dials with a 4 KiB receive buffer, so that a response the client does not
// read soon fills the socket buffers.
func smallWindowConn(t *testing.T, url string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", hostOf(url))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestClientThatDoesNotRead: with --max-concurrent 1, a client sends a request with a large
// answer (streamed or not) and never reads it. Its serving slot is freed (the non-streamed
// one when its generation is done; the streamed one when a chunk cannot be written within
// --write-timeout), so another client is served, and its connection is cut: what it can read
// afterwards is not the whole answer.
func TestClientThatDoesNotRead(t *testing.T) {
	dir, _, _ := longModelDir(t, 23)
	prompt := make([]int32, 1000)
	for i := range prompt {
		prompt[i] = int32(5 + i%20)
	}
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			_, url := launch(t, "--model", dir, "--api-key", "sekret", "--max-concurrent", "1", "--write-timeout", "1s", "--max-n", "512", "--max-seqs", "512")
			c := smallWindowConn(t, url)
			// 512 echoes of a 1000-token prompt: about 7 MB of answer.
			body := fmt.Sprintf(`{"prompt": %s, "n": 512, "max_tokens": 1, "echo": true, "stream": %v}`, ids(prompt), stream)
			fmt.Fprintf(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekret\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			waitMetric(t, url, func(m map[string]float64) bool { // it holds the slot, or has
				return m["prolong_requests_running"] == 1 || m["prolong_generated_tokens_total"] >= 512
			})
			t0 := time.Now()
			code, limited := 429, 0
			for ; code == 429 && time.Since(t0) < 60*time.Second; limited++ {
				code, _, _ = postJSON(t, url+"/v1/completions", `{"prompt": [1], "max_tokens": 1}`)
				time.Sleep(50 * time.Millisecond)
			}
			t.Logf("another client served (HTTP %d) after %d answers 429 in %.2f s", code, limited-1, time.Since(t0).Seconds())
			if code != 200 {
				t.Fatalf("another client: HTTP %d for %.0f s: the client that does not read holds the slot", code, time.Since(t0).Seconds())
			}
			time.Sleep(3 * time.Second) // past the write deadline
			got, _, _ := waitClosed(t, c, 30*time.Second)
			t.Logf("the client that did not read can then read %d bytes", len(got))
			if !strings.HasPrefix(got, "HTTP/1.1 200") || strings.HasSuffix(got, "0\r\n\r\n") {
				t.Errorf("the client that did not read got %d bytes, %.100q ... %q: want the start of an answer, cut", len(got), got, got[max(0, len(got)-100):])
			}
		})
	}
}

// waitMetric scrapes the server's /metrics until ok holds for its unlabelled values (at most
// 30 s).
func waitMetric(t *testing.T, url string, ok func(map[string]float64) bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ok(scrapeMetrics(t, url)) {
			return
		}
	}
	t.Fatal("/metrics: the condition did not hold within 30 s")
}

// scrapeMetrics reads GET /metrics into series → value (a series with labels is keyed as
// written: name{label="value"}).
func scrapeMetrics(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	for sc := bufio.NewScanner(resp.Body); sc.Scan(); {
		if f := strings.Fields(sc.Text()); len(f) == 2 && !strings.HasPrefix(f[0], "#") {
			m[f[0]], _ = strconv.ParseFloat(f[1], 64)
		}
	}
	return m
}

// postJSON posts a body with the API key; it returns the status code and body.
func postJSON(t *testing.T, url, body string) (int, string, http.Header) {
	t.Helper()
	resp := send(t, url, strings.NewReader(body))
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data), resp.Header
}

// vmHWM is process pid's peak resident memory in KiB.
func vmHWM(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kib, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return kib
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// junk is an endless stream of non-safetensors bytes.
type junk struct{}

func (junk) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte('a' + i%26)
	}
	return len(p), nil
}

// TestJunkWeights: a 200 MB /v1/weights body that is not safetensors, and one whose header
// names another model's tensors, are refused with a 400 saying what is wrong, after its first
// bytes: the real binary's peak resident memory grows by less than 32 MiB.
func TestJunkWeights(t *testing.T) {
	dir, cfg, _ := modelDir(t, 24, false)
	other := *cfg
	other.NumHiddenLayers = 3
	wrong := modelSafetensors(t, engine.RandomWeights(&other, 1, 0.1))
	cmd, url := launch(t, "--model", dir, "--api-key", "sekret")
	const size = 200 << 20
	for _, tc := range []struct {
		name string
		body io.Reader
		want string
	}{
		{"200 MB of letters", junk{}, "safetensors body: header length 7523094288207667809 (the first 8 bytes, little-endian) is over the limit"},
		{"another model's header and 200 MB", io.MultiReader(bytes.NewReader(wrong), junk{}), `safetensors body: tensor \"model.layers.2.`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := vmHWM(t, cmd.Process.Pid)
			c, err := net.Dial("tcp", hostOf(url))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			sent := make(chan int64, 1)
			go func() { // the client sends the whole body, or until the server closes
				fmt.Fprintf(c, "POST /v1/weights HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekret\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", size)
				n, _ := io.Copy(c, io.LimitReader(tc.body, size))
				sent <- n
			}()
			t0 := time.Now()
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			msg, _ := io.ReadAll(resp.Body)
			took := time.Since(t0)
			c.Close()
			after := vmHWM(t, cmd.Process.Pid)
			t.Logf("HTTP %d after %.3f s, %d MB sent: %s; peak RSS %d -> %d KiB", resp.StatusCode, took.Seconds(), <-sent>>20, bytes.TrimSpace(msg), before, after)
			if resp.StatusCode != 400 || !strings.Contains(string(msg), tc.want) {
				t.Errorf("HTTP %d %s, want 400 with %s", resp.StatusCode, msg, tc.want)
			}
			if after-before > 32<<10 {
				t.Errorf("peak resident memory grew by %d KiB", after-before)
			}
		})
	}
}

// TestHelp: --help of both programs prints the usage on stdout and exits 0, and never shows
// the API key of PROLONG_API_KEY; an unknown flag is an error on stderr, exit status 2.
func TestHelp(t *testing.T) {
	loadgen := filepath.Join(t.TempDir(), "loadgen")
	if out, err := exec.Command("go", "build", "-o", loadgen, "../loadgen").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	const secret = "s3cret-key-from-the-environment"
	for _, bin := range []string{serverBinary(t), loadgen} {
		t.Run(filepath.Base(bin), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(bin, "--help")
			cmd.Env = append(os.Environ(), "PROLONG_API_KEY="+secret)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("--help: %v", err)
			}
			if !strings.Contains(stdout.String(), "--api-key") || !strings.Contains(stdout.String(), "$PROLONG_API_KEY") {
				t.Errorf("--help stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
			}
			if strings.Contains(stdout.String()+stderr.String(), secret) {
				t.Errorf("--help shows the API key")
			}
			stderr.Reset()
			cmd = exec.Command(bin, "--no-such-flag")
			cmd.Stderr = &stderr
			err := cmd.Run()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), "no-such-flag") {
				t.Errorf("unknown flag: %v, stderr %q", err, stderr.String())
			}
		})
	}
}
