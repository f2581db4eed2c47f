package main

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	neturl "net/url"
	"sync"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo/quickstart"
)

// TestLoRARolloutServers: a LoRA run with --rollout-servers sends the servers its frozen base
// once, then only the adapters (their fp32 bytes and a header) after every step, and logs the
// same metrics, step for step, as the same run generating in process.
func TestLoRARolloutServers(t *testing.T) {
	server := startRolloutServers(t, 1)[0] // a random model: the run pushes its base first
	// A front that counts the bytes of each weight push.
	target, _ := neturl.Parse(server)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var mu sync.Mutex
	var pushes []int64
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" && r.URL.Path == "/v1/weights" {
			mu.Lock()
			pushes = append(pushes, r.ContentLength)
			mu.Unlock()
		}
		proxy.ServeHTTP(w, r)
	}))
	defer front.Close()
	url := front.URL
	t.Setenv("PROLONG_API_KEY", "k")
	servedMatchesInProcess(t, url, "--lora-rank", "4", "--lora-alpha", "8", "--lr", "5e-3", "--lora-base-dtype", "fp32")
	cfg := quickstart.ModelConfig()
	specs, err := engine.LoRASpecs(cfg, engine.LoRAConfig{Rank: 4, Alpha: 8})
	if err != nil {
		t.Fatal(err)
	}
	var adapter, model int64
	for _, s := range specs {
		adapter += 4 * int64(s.Shape[0]*s.Shape[1])
	}
	for _, s := range engine.NewWeightTable(cfg).Specs {
		n := int64(4)
		for _, d := range s.Shape {
			n *= int64(d)
		}
		model += n
	}
	// The first sync (before step 1) sends the base and the adapters, each later one the adapters.
	if len(pushes) < 4 || pushes[0] < model || pushes[0] > model+64<<10 {
		t.Fatalf("pushes of %v bytes, want the base (%d bytes and a header) then one of the adapters (%d) per sync", pushes, model, adapter)
	}
	for i, n := range pushes[1:] {
		if n < adapter || n > adapter+64<<10 {
			t.Errorf("push %d: %d bytes, want the adapters' %d and a header (the model is %d)", i+2, n, adapter, model)
		}
	}
	t.Logf("bytes per push: base %d, then adapters %v (rank 4)", pushes[0], pushes[1:])
}
