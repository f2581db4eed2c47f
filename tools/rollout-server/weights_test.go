package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestWeightVersions: X-Weight-Version must lie above the current version and at most 2^53-1
// (exact as a JSON number in JavaScript and in the Prometheus gauge): 2^64-1, which the next
// update without the header wrapped to version 0, is a 400 naming the header, as are 2^53, a
// version not above the current one, and text; at 2^53-1 an update without the header is
// refused instead of wrapping. /health reports the version after each try.
func TestWeightVersions(t *testing.T) {
	dir, _, _ := modelDir(t, 25, false)
	_, ts := startServer(t, testOptions(dir))
	for _, tc := range []struct {
		header  string
		code    int
		version uint64 // /health's after the push
	}{
		{"18446744073709551615", 400, 1},
		{"9007199254740992", 400, 1},
		{"1", 400, 1},
		{"-1", 400, 1},
		{"two", 400, 1},
		{"", 200, 2},
		{"9007199254740991", 200, 9007199254740991},
		{"", 400, 9007199254740991},
	} {
		req, _ := http.NewRequest("POST", ts.URL+"/v1/weights", strings.NewReader(fmt.Sprintf(`{"path": %q}`, dir)))
		req.Header.Set("Authorization", "Bearer sekret")
		req.Header.Set("Content-Type", "application/json")
		if tc.header != "" {
			req.Header.Set("X-Weight-Version", tc.header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var answer struct {
			Error *apiError `json:"error"`
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		json.Unmarshal(body, &answer)
		if resp.StatusCode != tc.code || (tc.code == 400 && (answer.Error == nil || answer.Error.Param != "X-Weight-Version")) {
			t.Errorf("X-Weight-Version %q: HTTP %d %s, want %d (400: naming the header)", tc.header, resp.StatusCode, body, tc.code)
		}
		t.Logf("X-Weight-Version %q: HTTP %d %s", tc.header, resp.StatusCode, strings.TrimSpace(string(body)))
		resp, err = http.Get(ts.URL + "/health")
		if err != nil {
			t.Fatal(err)
		}
		var health struct {
			Version uint64 `json:"weight_version"`
		}
		json.NewDecoder(resp.Body).Decode(&health)
		resp.Body.Close()
		if health.Version != tc.version {
			t.Errorf("after X-Weight-Version %q: version %d, want %d", tc.header, health.Version, tc.version)
		}
	}
}
