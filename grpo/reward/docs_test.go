package reward

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The examples of docs/reward-programs.md, run through Program and Endpoint so that the
// documentation stays true.
const examples = "../../docs/examples/"

// exampleRows are responses with hand-worked answers of the examples' compute_score: 1 when the
// last number of the response equals the ground truth.
var exampleRows = []struct {
	response, truth string
	score           float64
	pred            any
}{
	{"The answer is 42.", "42", 1, "42"},
	{"12 apples, then 13", "12", 0, "13"},
	{"no number here", "3", 0, nil},
	{"total: 1,234.50", "1234.5", 1, "1234.50"},
	{"so x = -7", "-7", 1, "-7"},
}

func checkExampleAnswers(t *testing.T, rw BatchReward) {
	t.Helper()
	reqs := make([]Request, len(exampleRows))
	for i, r := range exampleRows {
		reqs[i] = Request{Kind: "openai/gsm8k", Prompt: "Q?", Response: r.response, GroundTruth: r.truth}
	}
	res, err := rw.ScoreBatch(context.Background(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range exampleRows {
		d := res[i].Details
		if res[i].Score != r.score || d["pred"] != r.pred || d["response_chars"] != float64(len(r.response)) {
			t.Errorf("%q (truth %s): %+v, want score %v, pred %v, %d chars", r.response, r.truth, res[i], r.score, r.pred, len(r.response))
		}
	}
}

// TestExampleRewardProgram runs docs/examples/reward.py as a reward program.
func TestExampleRewardProgram(t *testing.T) {
	logs := &logBuffer{}
	p, err := NewProgram(ProgramConfig{Command: python3(t) + " reward.py", Dir: examples, Timeout: 20 * time.Second,
		Logger: newTextLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	checkExampleAnswers(t, p)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), `line="reward.py: ready"`) {
		t.Errorf("the example's stderr is not in the log:\n%s", logs)
	}
}

// TestExampleRewardServer runs docs/examples/reward_server.py and scores through Endpoint.
func TestExampleRewardServer(t *testing.T) {
	cmd := exec.Command(python3(t), examples+"reward_server.py", "--port", "0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	first := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		first <- line
	}()
	var url string
	select {
	case line := <-first:
		if _, err := fmt.Sscanf(line, "serving on %s", &url); err != nil {
			t.Fatalf("reward_server.py printed %q: %v", line, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("reward_server.py did not start within 30 s")
	}
	e, err := NewEndpoint(EndpointConfig{URL: url, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	checkExampleAnswers(t, e)
}
