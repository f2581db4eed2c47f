package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo/modeldir"
)

// loraAdapter is a PEFT LoRA adapter served over the base model under its own name (--lora
// NAME=DIR, POST /v1/load_lora_adapter): an engine model that shares the base's weights and
// holds only the adapter's tensors, with its own scheduler (and KV cache), since one batch
// runs one model.
type loraAdapter struct {
	name, dir string
	lc        engine.LoRAConfig
	w         map[string]engine.HostTensor
	sched     *engine.Scheduler
}

// parseLoRAFlag splits a --lora value NAME=DIR.
func parseLoRAFlag(v string) (name, dir string, err error) {
	name, dir, ok := strings.Cut(v, "=")
	if !ok || name == "" || dir == "" {
		return "", "", fmt.Errorf("--lora %q: want NAME=DIR (a PEFT adapter directory)", v)
	}
	return name, dir, nil
}

// newAdapter reads the PEFT adapter directory dir and starts serving it over base as name.
func (s *server) newAdapter(name, dir string, base *engine.Model) (*loraAdapter, error) {
	lc, w, _, err := modeldir.ReadAdapter(dir, s.cfg)
	if err != nil {
		return nil, err
	}
	m, err := base.WithLoRA(lc, w)
	if err != nil {
		return nil, fmt.Errorf("adapter %s: %w", dir, err)
	}
	sched, err := engine.NewScheduler(m, s.version.Load(), s.schedOpts)
	if err != nil {
		return nil, fmt.Errorf("adapter %s: %w", dir, err)
	}
	slog.Info("lora adapter loaded", "name", name, "dir", dir, "rank", lc.Rank, "alpha", lc.Alpha, "targets", len(w)/2/s.cfg.NumHiddenLayers, "kv", sched.KVChoice().String())
	return &loraAdapter{name: name, dir: dir, lc: lc, w: w, sched: sched}, nil
}

// nameTaken is the error of a load naming an adapter or model already served.
type nameTaken string

func (e nameTaken) Error() string { return string(e) }

// addAdapter loads and registers an adapter; a name already served (base or adapter) is an
// error.
func (s *server) addAdapter(name, dir string) error {
	s.swapMu.RLock() // the base does not change under it (lock order: swapMu, then loraMu)
	defer s.swapMu.RUnlock()
	s.loraMu.Lock()
	defer s.loraMu.Unlock()
	if _, ok := s.loras[name]; ok {
		return nameTaken(fmt.Sprintf("the lora adapter '%s' has already been loaded", name))
	}
	s.namesMu.Lock()
	base := s.names[name]
	s.namesMu.Unlock()
	if base {
		return nameTaken(fmt.Sprintf("the name '%s' is the base model's", name))
	}
	a, err := s.newAdapter(name, dir, s.sched.Model())
	if err != nil {
		return err
	}
	if s.loras == nil {
		s.loras = map[string]*loraAdapter{}
	}
	s.loras[name] = a
	return nil
}

// removeAdapter stops serving an adapter: requests in flight on it fail (503).
func (s *server) removeAdapter(name string) bool {
	s.loraMu.Lock()
	a, ok := s.loras[name]
	delete(s.loras, name)
	s.loraMu.Unlock()
	if ok {
		a.sched.Close()
		st := a.sched.Stats()
		s.loraMu.Lock() // its counters stay in the server's totals, which never go down
		s.retired.TokensGenerated += st.TokensGenerated
		s.retired.Preemptions += st.Preemptions
		s.retired.Steps += st.Steps
		s.loraMu.Unlock()
		slog.Info("lora adapter unloaded", "name", name, "dir", a.dir)
	}
	return ok
}

// schedStats adds up the schedulers' figures: the base model's, every adapter's (each has its
// own queue, batch and KV cache), and the counters of adapters unloaded before. The weight
// version is the base's.
func (s *server) schedStats() engine.SchedulerStats {
	t := s.sched.Stats()
	s.loraMu.Lock()
	defer s.loraMu.Unlock()
	t.TokensGenerated += s.retired.TokensGenerated
	t.Preemptions += s.retired.Preemptions
	t.Steps += s.retired.Steps
	for _, a := range s.loras {
		st := a.sched.Stats()
		t.Queued += st.Queued
		t.Running += st.Running
		t.KVBlocksUsed += st.KVBlocksUsed
		t.KVBlocksTotal += st.KVBlocksTotal
		t.TokensGenerated += st.TokensGenerated
		t.Preempted += st.Preempted
		t.Preemptions += st.Preemptions
		t.Steps += st.Steps
	}
	return t
}

// adapterStats is every adapter's own figures, by name.
func (s *server) adapterStats() []adapterStat {
	var out []adapterStat
	for _, a := range s.adapterList() {
		out = append(out, adapterStat{a.name, a.sched.Stats()})
	}
	return out
}

// adapter returns the adapter served as name, or nil.
func (s *server) adapter(name string) *loraAdapter {
	s.loraMu.Lock()
	defer s.loraMu.Unlock()
	return s.loras[name]
}

// adapterList is the adapters by name.
func (s *server) adapterList() []*loraAdapter {
	s.loraMu.Lock()
	defer s.loraMu.Unlock()
	var out []*loraAdapter
	for _, a := range s.loras {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b *loraAdapter) int { return strings.Compare(a.name, b.name) })
	return out
}

// rebaseAdapters puts every adapter over the new base m as weight version v (a weight update;
// the caller holds swapMu exclusively).
func (s *server) rebaseAdapters(m *engine.Model, v uint64) error {
	for _, a := range s.adapterList() {
		am, err := m.WithLoRA(a.lc, a.w)
		if err != nil {
			return fmt.Errorf("lora adapter %q over the new weights: %w", a.name, err)
		}
		if err := a.sched.SwapModel(am, v); err != nil {
			return fmt.Errorf("lora adapter %q: %w", a.name, err)
		}
	}
	return nil
}

// schedOf is the scheduler of requests to adapter a (nil: the base model).
func (s *server) schedOf(a *loraAdapter) *engine.Scheduler {
	if a == nil {
		return s.sched
	}
	return a.sched
}

// closeAdapters stops every adapter's scheduler (shutdown).
func (s *server) closeAdapters() {
	for _, a := range s.adapterList() {
		a.sched.Close()
	}
}

// mayManageLoRA checks the API key of a load or unload: one must be configured, and sent.
func (s *server) mayManageLoRA(r *http.Request) *apiError {
	if s.apiKey == "" {
		return &apiError{Status: 403, Type: "permission_error", Message: "loading and unloading LoRA adapters is disabled: start the server with --api-key (or PROLONG_API_KEY)"}
	}
	if !bearer(r, s.apiKey) {
		return &apiError{Status: 401, Type: "authentication_error", Code: "invalid_api_key", Message: "missing or wrong API key (Authorization: Bearer KEY)"}
	}
	return nil
}

// loraRequest is the body of POST /v1/load_lora_adapter ({"lora_name", "lora_path"}) and
// /v1/unload_lora_adapter ({"lora_name"}), as vLLM's.
type loraRequest struct {
	Name string `json:"lora_name"`
	Path string `json:"lora_path"`
}

// readLoRARequest checks the key and reads a load or unload body.
func (s *server) readLoRARequest(w http.ResponseWriter, r *http.Request) (*loraRequest, *apiError) {
	if e := s.mayManageLoRA(r); e != nil {
		return nil, e
	}
	body, e := s.readBody(w, r, s.maxBody)
	if e != nil {
		return nil, e
	}
	var req loraRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, &apiError{Status: 400, Type: "InvalidUserInput", Message: fmt.Sprintf("%s body: %v", r.URL.Path, err)}
	}
	return &req, nil
}

// loadAdapter serves POST /v1/load_lora_adapter as vLLM does: 200 with a text line on
// success; 400 InvalidUserInput without a name and path or for a name already served; 404
// NotFoundError when the adapter files are not there; 400 for an adapter that cannot run
// over this model (the error names the file, field or tensor).
func (s *server) loadAdapter(w http.ResponseWriter, r *http.Request) {
	req, e := s.readLoRARequest(w, r)
	if e != nil {
		writeError(w, e)
		return
	}
	if req.Name == "" || req.Path == "" {
		writeError(w, &apiError{Status: 400, Type: "InvalidUserInput", Message: "Both 'lora_name' and 'lora_path' must be provided."})
		return
	}
	if err := s.addAdapter(req.Name, req.Path); err != nil {
		e := &apiError{Status: 400, Type: "BadRequestError", Message: err.Error()}
		switch {
		case errors.As(err, new(nameTaken)):
			e.Type = "InvalidUserInput"
		case errors.Is(err, fs.ErrNotExist):
			e.Status, e.Type = 404, "NotFoundError"
		}
		writeError(w, e)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "Success: LoRA adapter '%s' added successfully.", req.Name)
}

// unloadAdapter serves POST /v1/unload_lora_adapter as vLLM does: 200 with a text line, 400
// without a name, 404 NotFoundError for a name not served. Requests in flight on the adapter
// fail with 503.
func (s *server) unloadAdapter(w http.ResponseWriter, r *http.Request) {
	req, e := s.readLoRARequest(w, r)
	if e != nil {
		writeError(w, e)
		return
	}
	if req.Name == "" {
		writeError(w, &apiError{Status: 400, Type: "InvalidUserInput", Message: "'lora_name' must be provided."})
		return
	}
	if !s.removeAdapter(req.Name) {
		writeError(w, &apiError{Status: 404, Type: "NotFoundError", Message: fmt.Sprintf("The lora adapter '%s' cannot be found.", req.Name)})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "Success: LoRA adapter '%s' removed successfully.", req.Name)
}
