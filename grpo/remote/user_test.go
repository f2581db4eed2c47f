package remote

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo"
)

// TestUserField: a client's User goes in every completion request as the OpenAI "user" field,
// and a client without one sends no such field (the requests of before).
func TestUserField(t *testing.T) {
	var mu sync.Mutex
	var bodies []map[string]any
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		mu.Lock()
		bodies = append(bodies, m)
		mu.Unlock()
		io.WriteString(w, `{"choices": [{"index": 0, "token_ids": [5], "finish_reason": "length", "logprobs": {"token_logprobs": [-1]}}]}`)
	}))
	defer ts.Close()
	for _, user := range []string{"rank 1", ""} {
		bodies = nil
		c, err := New([]string{ts.URL}, "k")
		if err != nil {
			t.Fatal(err)
		}
		c.User = user
		prompts := []grpo.Prompt{{Tokens: []int32{1, 2}}, {Tokens: []int32{3}}}
		if _, err := c.Rollout(context.Background(), prompts, engine.SamplingParams{N: 1, MaxNewTokens: 1}); err != nil {
			t.Fatal(err)
		}
		if len(bodies) != 2 {
			t.Fatalf("user %q: %d requests, want 2", user, len(bodies))
		}
		for _, m := range bodies {
			got, ok := m["user"]
			if (user == "" && ok) || (user != "" && got != user) {
				t.Errorf("User %q: request's user field %v (present %v)", user, got, ok)
			}
		}
	}
}
