package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// refTop is the reference for top log-probs: the k most likely tokens of a row of logits [V]
// in rank order (ties to the lower id) and their log-probs under the distribution the engine
// samples from — softmax(logits/temperature) cut to the top_k most likely and then to the
// smallest set whose mass reaches top_p, renormalised (temperature 0: the plain softmax) —
// with -9999 for tokens cut, computed directly in float64.
func refTop(row []float32, temperature float64, topK int, topP float64, k int) ([]int32, []float64) {
	if temperature <= 0 {
		temperature, topK, topP = 1, 0, 1
	}
	V := len(row)
	m := math.Inf(-1)
	for _, l := range row {
		m = max(m, float64(l)/temperature)
	}
	p := make([]float64, V)
	order := make([]int32, V)
	for i, l := range row {
		p[i] = math.Exp(float64(l)/temperature - m)
		order[i] = int32(i)
	}
	sort.SliceStable(order, func(a, b int) bool { return p[order[a]] > p[order[b]] })
	kept := V
	if topK > 0 && topK < V {
		kept = topK
	}
	if topP < 1 {
		var mass, cum float64
		for _, id := range order[:kept] {
			mass += p[id]
		}
		for i, id := range order[:kept] {
			if cum += p[id]; cum >= topP*mass {
				kept = i + 1
				break
			}
		}
	}
	var z float64
	for _, id := range order[:kept] {
		z += p[id]
	}
	ids, lps := order[:min(k, V)], make([]float64, min(k, V))
	for i, id := range ids {
		lps[i] = -9999
		if i < kept {
			lps[i] = math.Log(p[id] / z)
		}
	}
	return ids, lps
}

// orderedTop is one top_logprobs object of a completion, its entries in the order written.
type orderedTop struct {
	ids []int32
	lps []float64
}

// parseTop reads a top_logprobs object of a server without a tokenizer ("token_id:N" keys) in
// its written order; null is a nil entry.
func parseTop(t *testing.T, raw json.RawMessage) *orderedTop {
	t.Helper()
	if string(raw) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("top_logprobs entry %s is not an object", raw)
	}
	out := &orderedTop{}
	for dec.More() {
		key, _ := dec.Token()
		val, _ := dec.Token()
		id, err := strconv.Atoi(strings.TrimPrefix(key.(string), "token_id:"))
		if err != nil {
			t.Fatalf("top_logprobs key %q", key)
		}
		lp, _ := val.(json.Number).Float64()
		out.ids, out.lps = append(out.ids, int32(id)), append(out.lps, lp)
	}
	return out
}

// topChoice is a completion choice with its log-probs as written.
type topChoice struct {
	Index          int     `json:"index"`
	TokenIDs       []int32 `json:"token_ids"`
	PromptTokenIDs []int32 `json:"prompt_token_ids"`
	Logprobs       struct {
		TokenLogprobs []*float64        `json:"token_logprobs"`
		TopLogprobs   []json.RawMessage `json:"top_logprobs"`
	} `json:"logprobs"`
}

// postTop posts a completions request and returns its choices; with stream set it adds up the
// streamed chunks of each of n choices, checks that every chunk of a sampled token carries that
// token's log-prob and top_logprobs, and checks that they come as the tokens are generated:
// token t of every sample before token t+1 of any (n samples decode in step).
func postTop(t *testing.T, url, body string, stream bool, n int) []topChoice {
	t.Helper()
	if stream {
		body = strings.Replace(body, "{", `{"stream": true,`, 1)
	}
	resp := send(t, url+"/v1/completions", strings.NewReader(body))
	defer resp.Body.Close()
	if !stream {
		data, _ := io.ReadAll(resp.Body)
		var r struct{ Choices []topChoice }
		if resp.StatusCode != 200 || json.Unmarshal(data, &r) != nil {
			t.Fatalf("HTTP %d: %s", resp.StatusCode, data)
		}
		return r.Choices
	}
	got := make([]topChoice, n)
	last := 0 // the latest token position streamed
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || line == "[DONE]" {
			continue
		}
		var chunk struct{ Choices []topChoice }
		if err := json.Unmarshal([]byte(line), &chunk); err != nil {
			t.Fatal(err, line)
		}
		for _, c := range chunk.Choices {
			g := &got[c.Index]
			if lp := c.Logprobs; len(c.TokenIDs) > 0 && (len(c.TokenIDs) != 1 || len(lp.TokenLogprobs) != 1 || len(lp.TopLogprobs) != 1 || string(lp.TopLogprobs[0]) == "null") {
				t.Errorf("%s: the chunk of choice %d token %d has %d tokens, %d log-probs, top_logprobs %s: want one of each", body, c.Index, len(g.TokenIDs), len(c.TokenIDs), len(lp.TokenLogprobs), lp.TopLogprobs)
			}
			if len(c.TokenIDs) > 0 && len(g.TokenIDs) < last {
				t.Errorf("%s: choice %d's token %d streamed after another choice's token %d", body, c.Index, len(g.TokenIDs), last)
			}
			last = max(last, len(g.TokenIDs))
			g.TokenIDs = append(g.TokenIDs, c.TokenIDs...)
			g.Logprobs.TokenLogprobs = append(g.Logprobs.TokenLogprobs, c.Logprobs.TokenLogprobs...)
			g.Logprobs.TopLogprobs = append(g.Logprobs.TopLogprobs, c.Logprobs.TopLogprobs...)
		}
	}
	return got
}

// TestTopLogprobs: completions with logprobs k (up to 20), sampled and greedy, with echo,
// plain and streamed. Each position's top_logprobs is vLLM's: the chosen token first with its
// token_logprob, then the k most likely tokens under the distribution the token was drawn from
// (a direct softmax of the engine's logits with temperature, top_k and top_p; -9999 for tokens
// they cut), and the echoed prompt's under the plain softmax, its token_logprobs equal to
// engine.Score's and its first token's null. Streamed, every token's chunk carries its own
// log-probs as it is generated (postTop), equal to the unstreamed answer's.
func TestTopLogprobs(t *testing.T) {
	dir, _, _ := modelDir(t, 21, false)
	s, ts := startServer(t, testOptions(dir))
	prompt := []int32{1, 6, 15, 7, 18}
	for _, tc := range []struct {
		temperature, topP float64
		topK, k, n        int
	}{{0.8, 0.9, 8, 12, 2}, {0, 1, 0, 20, 1}, {1.3, 1, 0, 3, 3}} {
		body := fmt.Sprintf(`{"prompt": %s, "n": %d, "max_tokens": 10, "temperature": %g, "top_k": %d, "top_p": %g, "seed": 3, "logprobs": %d, "echo": true, "ignore_eos": true}`,
			ids(prompt), tc.n, tc.temperature, tc.topK, tc.topP, tc.k)
		whole := postTop(t, ts.URL, body, false, tc.n)
		streamed := postTop(t, ts.URL, body, true, tc.n)
		if len(whole) != tc.n {
			t.Fatalf("%s: %d choices", body, len(whole))
		}
		sc, err := s.sched.Model().Score(context.Background(), []engine.ScoreRequest{{Tokens: prompt, Start: 1}}, 1)
		if err != nil {
			t.Fatal(err)
		}
		for ci, c := range whole {
			seq := append(slices.Clone(prompt), c.TokenIDs...)
			lg, err := s.sched.Model().Logits(context.Background(), [][]int32{seq})
			if err != nil {
				t.Fatal(err)
			}
			V := s.cfg.VocabSize
			lps, tops := c.Logprobs.TokenLogprobs, c.Logprobs.TopLogprobs
			if len(lps) != len(seq) || len(tops) != len(seq) || lps[0] != nil || string(tops[0]) != "null" {
				t.Fatalf("%s choice %d: %d log-probs and %d top entries for %d tokens (first %v %s)", body, ci, len(lps), len(tops), len(seq), lps[0], tops[0])
			}
			for pos := 1; pos < len(seq); pos++ {
				temp, topK, topP := tc.temperature, tc.topK, tc.topP
				if pos < len(prompt) { // the echoed prompt: the plain softmax
					temp, topK, topP = 1, 0, 1
					if float32(*lps[pos]) != sc[0].LogProbs[pos-1] {
						t.Errorf("echo log-prob %d = %g, engine.Score %g", pos, *lps[pos], sc[0].LogProbs[pos-1])
					}
				}
				wantIDs, wantLPs := refTop(lg[0][(pos-1)*V:pos*V], temp, topK, topP, tc.k)
				got := parseTop(t, tops[pos])
				what := fmt.Sprintf("%s choice %d position %d", body, ci, pos)
				if got == nil || got.ids[0] != seq[pos] || got.lps[0] != *lps[pos] {
					t.Fatalf("%s: top_logprobs %s does not begin with the chosen token %d (%g)", what, tops[pos], seq[pos], *lps[pos])
				}
				// The chosen token's own log-prob is the reference's too.
				_, all := refTop(lg[0][(pos-1)*V:pos*V], temp, topK, topP, V)
				allIDs, _ := refTop(lg[0][(pos-1)*V:pos*V], temp, topK, topP, V)
				if r := all[slices.Index(allIDs, seq[pos])]; math.Abs(*lps[pos]-r) > 1e-4 {
					t.Errorf("%s: chosen token's log-prob %g, softmax %g", what, *lps[pos], r)
				}
				var alts []int32
				var altLPs []float64
				for i, id := range wantIDs {
					if id != seq[pos] {
						alts, altLPs = append(alts, id), append(altLPs, wantLPs[i])
					}
				}
				if !slices.Equal(got.ids[1:], alts) {
					t.Fatalf("%s: alternatives %v, softmax's top %d %v", what, got.ids[1:], tc.k, alts)
				}
				if pos >= len(prompt) && tc.topK > 0 && tc.topK < tc.k && got.lps[len(got.lps)-1] != -9999 {
					t.Errorf("%s: the last of %d alternatives is outside top_k %d but has %g, not -9999", what, tc.k, tc.topK, got.lps[len(got.lps)-1])
				}
				for i := range alts {
					if math.Abs(got.lps[1+i]-altLPs[i]) > 1e-4 {
						t.Errorf("%s: token %d log-prob %g, softmax %g", what, alts[i], got.lps[1+i], altLPs[i])
					}
				}
			}
			// Streamed: the same tokens, log-probs and top log-probs, bit for bit.
			st := streamed[ci]
			if !slices.Equal(st.TokenIDs, c.TokenIDs) || len(st.Logprobs.TopLogprobs) != len(seq) {
				t.Fatalf("%s streamed choice %d: tokens %v (%d top entries), whole %v", body, ci, st.TokenIDs, len(st.Logprobs.TopLogprobs), c.TokenIDs)
			}
			for pos := 1; pos < len(seq); pos++ {
				a, b := parseTop(t, st.Logprobs.TopLogprobs[pos]), parseTop(t, tops[pos])
				if !slices.Equal(a.ids, b.ids) || !slices.Equal(a.lps, b.lps) {
					t.Errorf("%s streamed choice %d position %d: %s, whole %s", body, ci, pos, st.Logprobs.TopLogprobs[pos], tops[pos])
				}
			}
		}
	}
}

// TestChatTopLogprobs: chat's top_logprobs are the k most likely tokens under the sampling
// distribution (a direct softmax of the engine's logits), the sampled token's entry carrying
// its own log-prob; streamed, the same in every token's chunk, as the tokens are generated.
func TestChatTopLogprobs(t *testing.T) {
	dir, _, _ := modelDir(t, 22, true)
	s, ts := startServer(t, testOptions(dir))
	id := func(tok string) int32 { return int32(slices.Index(charTokens, tok)) }
	prompt := chatPrompt12()
	body := `{"messages": [{"role": "user", "content": "1+2="}], "n": 2, "max_tokens": 8, "seed": 4, "temperature": 0.7, "top_p": 0.95, "logprobs": true, "top_logprobs": 4}`
	type entry struct {
		Token   string
		Logprob float64
	}
	type content struct {
		Token       string
		Logprob     float64
		TopLogprobs []entry `json:"top_logprobs"`
	}
	get := func(stream bool) [][]content {
		b := body
		if stream {
			b = strings.Replace(body, "{", `{"stream": true,`, 1)
		}
		resp := send(t, ts.URL+"/v1/chat/completions", strings.NewReader(b))
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		out := make([][]content, 2)
		var lines []string
		if stream {
			for _, l := range strings.Split(string(data), "\n") {
				if d, ok := strings.CutPrefix(l, "data: "); ok && d != "[DONE]" {
					lines = append(lines, d)
				}
			}
		} else {
			lines = []string{string(data)}
		}
		last := 0 // the latest token position streamed
		for _, l := range lines {
			var r struct {
				Choices []struct {
					Index    int
					TokenIDs []int32 `json:"token_ids"`
					Logprobs *struct{ Content []content }
				}
			}
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatalf("HTTP %d: %s", resp.StatusCode, l)
			}
			for _, c := range r.Choices {
				if stream && len(c.TokenIDs) > 0 {
					if c.Logprobs == nil || len(c.Logprobs.Content) != 1 || len(c.Logprobs.Content[0].TopLogprobs) != 4 {
						t.Errorf("streamed chunk %s: want its token's log-prob with 4 top log-probs", l)
					}
					if len(out[c.Index]) < last {
						t.Errorf("choice %d's token %d streamed after another choice's token %d", c.Index, len(out[c.Index]), last)
					}
					last = max(last, len(out[c.Index]))
				}
				if c.Logprobs != nil {
					out[c.Index] = append(out[c.Index], c.Logprobs.Content...)
				}
			}
		}
		return out
	}
	whole, streamed := get(false), get(true)
	V := s.cfg.VocabSize
	for ci, cs := range whole {
		seq := slices.Clone(prompt)
		for _, c := range cs {
			seq = append(seq, id(c.Token))
		}
		lg, err := s.sched.Model().Logits(context.Background(), [][]int32{seq})
		if err != nil {
			t.Fatal(err)
		}
		if len(cs) == 0 || len(streamed[ci]) != len(cs) {
			t.Fatalf("choice %d: %d tokens, streamed %d", ci, len(cs), len(streamed[ci]))
		}
		for i, c := range cs {
			pos := len(prompt) + i
			wantIDs, wantLPs := refTop(lg[0][(pos-1)*V:pos*V], 0.7, 0, 0.95, 4)
			if len(c.TopLogprobs) != 4 {
				t.Fatalf("choice %d token %d: %d top log-probs, want 4", ci, i, len(c.TopLogprobs))
			}
			for j, e := range c.TopLogprobs {
				if id(e.Token) != wantIDs[j] || math.Abs(e.Logprob-wantLPs[j]) > 1e-4 {
					t.Errorf("choice %d token %d: top %d is %q %g, softmax %q %g", ci, i, j, e.Token, e.Logprob, charTokens[wantIDs[j]], wantLPs[j])
				}
				if e.Token == c.Token && e.Logprob != c.Logprob {
					t.Errorf("choice %d token %d: the sampled token's top entry %g differs from its log-prob %g", ci, i, e.Logprob, c.Logprob)
				}
				if sc := streamed[ci][i].TopLogprobs[j]; sc != e {
					t.Errorf("choice %d token %d: streamed top %d %q %g, whole %q %g", ci, i, j, sc.Token, sc.Logprob, e.Token, e.Logprob)
				}
			}
		}
	}
}

// TestUnknownCharacter: a text prompt with a character the tokenizer cannot represent (no
// unknown token) is refused naming the character and where it is, not dropped silently.
func TestUnknownCharacter(t *testing.T) {
	dir, _, _ := modelDir(t, 23, true)
	_, ts := startServer(t, testOptions(dir))
	for _, tc := range []struct{ url, body, param, want string }{
		{"/v1/completions", `{"prompt": "<bos>1+2=\u00e9", "max_tokens": 2}`, "prompt", `prompt: character 'é' (U+00E9) at position 9`},
		{"/v1/completions", `{"prompt": ["1+2=", "<bos>a\u2603"], "max_tokens": 2}`, "prompt", `prompt[1]: character '☃' (U+2603) at position 6`},
		{"/v1/chat/completions", `{"messages": [{"role": "user", "content": "1+2="}, {"role": "user", "content": "ab\u00e9"}], "max_tokens": 2}`, "messages[1].content", `messages[1].content: character 'é' (U+00E9) at position 2`},
	} {
		code, v, _ := post(t, ts.URL+tc.url, tc.body)
		e, _ := v["error"].(map[string]any)
		if code != 400 || e == nil || e["param"] != tc.param || !strings.Contains(fmt.Sprint(e["message"]), tc.want) {
			t.Errorf("%s: HTTP %d %v, want 400 naming %q with %q", tc.body, code, v, tc.param, tc.want)
		}
	}
}
