package reward

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// rewardServer is a test reward server: it scores 1 when the response equals the ground truth
// and misbehaves on purpose for some responses.
func rewardServer(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Batch []map[string]any }
		if ct := r.Header.Get("Content-Type"); r.Method != http.MethodPost || ct != "application/json" {
			http.Error(w, "want a JSON POST, got "+r.Method+" "+ct, http.StatusBadRequest)
			return
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var results []map[string]any
		for _, row := range req.Batch {
			switch row["response"] {
			case "hang":
				<-r.Context().Done()
				return
			case "boom":
				http.Error(w, "boom: the verifier is not loaded", http.StatusInternalServerError)
				return
			case "badjson":
				io.WriteString(w, "<html>not json</html>")
				return
			}
			res := map[string]any{"score": 0.0, "data_source": row["data_source"], "prompt": row["prompt"], "extra_info": row["extra_info"]}
			if row["response"] == row["ground_truth"] {
				res["score"] = 1.0
			}
			if row["response"] == "abc" {
				res["score"] = "abc"
			}
			results = append(results, res)
		}
		json.NewEncoder(w).Encode(map[string]any{"results": results})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestEndpoint: a batch is POSTed as JSON and answered row by row; a slow server, an error
// status and a malformed answer are errors naming the batch or the row; the server still
// answers afterwards.
func TestEndpoint(t *testing.T) {
	srv := rewardServer(t)
	e, err := NewEndpoint(EndpointConfig{URL: srv.URL + "/score", Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	short, err := NewEndpoint(EndpointConfig{URL: srv.URL + "/score", Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	res := mustScore(t, e, rows("ok", "no", "ok"))
	got := fmt.Sprintf("%v %v %v | %v | %v | %v", res[0].Score, res[1].Score, res[2].Score, res[1].Details["data_source"], res[2].Details["prompt"], res[1].Details["extra_info"])
	if want := "1 0 1 | code | prompt 2 | map[index:1]"; got != want {
		t.Errorf("answers %s, want %s", got, want)
	}
	for _, c := range []struct {
		e              *Endpoint
		response, want string
	}{
		{short, "hang", `batch of 2 rows (data_source "code", "math"): no answer within 300ms`},
		{e, "boom", `batch of 2 rows (data_source "code", "math"): HTTP status 500 Internal Server Error; the body begins "boom: the verifier is not loaded\n"`},
		{e, "badjson", `batch of 2 rows (data_source "code", "math"): malformed answer: not a JSON object`},
		{e, "abc", `row 1 (data_source "code"): score "abc" is not a number`},
	} {
		_, err := c.e.ScoreBatch(context.Background(), rows("ok", c.response))
		t.Log(err)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), srv.URL) {
			t.Errorf("%s: error %v, want %s", c.response, err, c.want)
		}
		mustScore(t, e, rows("ok"))
	}
	one, err := e.Score(context.Background(), "x", "x", nil)
	if err != nil || one.Score != 1 {
		t.Errorf("Score: %+v, %v", one, err)
	}
	for _, bad := range []string{"", "localhost:8000", "ftp://host/x", "http:///path"} {
		if _, err := NewEndpoint(EndpointConfig{URL: bad}); err == nil {
			t.Errorf("URL %q accepted", bad)
		}
	}
}
