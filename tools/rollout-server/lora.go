package main

import (
	"fmt"
	"log/slog"
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

// addAdapter loads and registers an adapter; a name already served (base or adapter) is an
// error.
func (s *server) addAdapter(name, dir string) error {
	s.loraMu.Lock()
	defer s.loraMu.Unlock()
	if _, ok := s.loras[name]; ok {
		return fmt.Errorf("the lora adapter %q has already been loaded", name)
	}
	s.namesMu.Lock()
	base := s.names[name]
	s.namesMu.Unlock()
	if base {
		return fmt.Errorf("the name %q is the base model's", name)
	}
	s.swapMu.RLock() // the base does not change under it
	defer s.swapMu.RUnlock()
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
		slog.Info("lora adapter unloaded", "name", name, "dir", a.dir)
	}
	return ok
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
