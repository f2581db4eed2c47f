package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo/modeldir"
)

// maxVersion is the highest weight version, 2^53-1: exact as a JSON number read by
// JavaScript and in the Prometheus gauge (a float64).
const maxVersion = 1<<53 - 1

// weights serves POST /v1/weights: new weights from a checkpoint directory on the server's
// machine ({"path": DIR}) or a safetensors body. Requests in flight finish on the weights they
// started with; requests arriving meanwhile wait and run on the new ones. The API key is
// always required here, and the version header is checked before the body is read.
func (s *server) weights(w http.ResponseWriter, r *http.Request) {
	if e := s.mayUpdate(r); e != nil {
		refuse(w, r, e)
		return
	}
	tensors, lora, source, path, e := s.newWeights(w, r)
	if e != nil {
		writeError(w, e)
		return
	}
	cur := s.sched.Model()
	var m *engine.Model
	var err error
	if lora != nil { // an adapter: the base runs it from now on
		m, err = cur.WithLoRA(*lora, tensors)
	} else {
		m, err = engine.NewModel(s.cfg, cur.Backend, tensors, cur.WeightDType)
	}
	if err != nil {
		writeError(w, badRequest("", "weights from %s: %v", source, err))
		return
	}
	s.swapMu.Lock()
	defer s.swapMu.Unlock()
	v, e := nextVersion(r.Header.Get("X-Weight-Version"), s.version.Load())
	if e != nil {
		writeError(w, e)
		return
	}
	t0 := time.Now()
	if err := s.sched.SwapModel(m, v); err != nil {
		writeError(w, &apiError{Status: 503, Type: "server_error", Message: err.Error()})
		return
	}
	s.version.Store(v)
	if err := s.rebaseAdapters(m, v); err != nil {
		writeError(w, &apiError{Status: 500, Type: "server_error", Message: err.Error()})
		return
	}
	if name := updatedName(path, r.Header.Get("X-Served-Model-Name")); name != "" && !s.fixedName {
		s.setModelName(name)
	}
	slog.Info("weights updated", "version", v, "model", s.modelName(), "from", source, "tensors", len(tensors), "wait_s", time.Since(t0).Seconds())
	writeJSON(w, 200, map[string]any{"weight_version": v, "tensors": len(tensors), "model": s.modelName()})
}

// weightInfo serves GET /v1/weights: the weight version and the dtype each weight is computed
// in ("BF16" for the linear weights of a --dtype bf16 server, "F32" otherwise). A trainer
// pushes each weight in its dtype: a bf16 server gets half the bytes and, since it rounds
// every linear weight to bf16 (nearest even) as it loads it, the same model as from fp32.
func (s *server) weightInfo(w http.ResponseWriter, r *http.Request) {
	dt := s.sched.Model().WeightDType
	dtypes := map[string]string{}
	for _, spec := range engine.NewWeightTable(s.cfg).Specs {
		dtypes[spec.Name] = "F32"
		if spec.Role == engine.RoleLinear && dt == engine.BF16 {
			dtypes[spec.Name] = "BF16"
		}
	}
	name := map[engine.DType]string{engine.F32: "f32", engine.BF16: "bf16"}[dt]
	writeJSON(w, 200, map[string]any{"weight_version": s.version.Load(), "dtype": name, "dtypes": dtypes})
}

// mayUpdate checks what an update needs before its body is read: a configured API key, the
// client's, and a usable X-Weight-Version.
func (s *server) mayUpdate(r *http.Request) *apiError {
	if s.apiKey == "" {
		return &apiError{Status: 403, Type: "permission_error", Message: "weight updates are disabled: start the server with --api-key (or PROLONG_API_KEY)"}
	}
	if !bearer(r, s.apiKey) {
		return &apiError{Status: 401, Type: "authentication_error", Code: "invalid_api_key", Message: "missing or wrong API key (Authorization: Bearer KEY)"}
	}
	_, e := nextVersion(r.Header.Get("X-Weight-Version"), s.version.Load())
	return e
}

// nextVersion is the version of an update from version cur: the X-Weight-Version header's,
// which must lie above cur and not above maxVersion, or cur+1 without one.
func nextVersion(header string, cur uint64) (uint64, *apiError) {
	if header == "" {
		if cur >= maxVersion {
			return 0, badRequest("X-Weight-Version", "the weight version %d is the highest there is (2^53-1)", cur)
		}
		return cur + 1, nil
	}
	v, err := strconv.ParseUint(header, 10, 64)
	if err != nil || v <= cur || v > maxVersion {
		return 0, badRequest("X-Weight-Version", "X-Weight-Version %q: want an integer above the current version %d and at most %d (2^53-1)", header, cur, uint64(maxVersion))
	}
	return v, nil
}

// newWeights reads an update's weights: from the directory a JSON body names, or from a
// safetensors body, which must keep arriving at --weights-min-mibps.
//
// With lora non-nil the weights are a LoRA adapter (engine.LoRASpecs names) over the base
// weights: a PEFT adapter directory ({"path": DIR} with adapter_config.json), or a safetensors
// body with PEFT's keys whose __metadata__ holds the adapter_config.json as "lora_config"
// (what a LoRA run's trainer pushes).
func (s *server) newWeights(w http.ResponseWriter, r *http.Request) (tensors map[string]engine.HostTensor, lora *engine.LoRAConfig, source, path string, e *apiError) {
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		return s.weightsFromPath(w, r)
	}
	body := &pacedBody{r: r.Body, rc: http.NewResponseController(w), start: time.Now(), base: s.bodyTimeout, rate: s.weightsRate}
	tensors, lora, err := s.readSafetensors(body, r.ContentLength)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil, nil, "", "", bodyError(w, err, fmt.Sprintf("--body-timeout (%v) plus its size at --weights-min-mibps (%g MiB/s)", s.bodyTimeout, s.weightsRate/(1<<20)))
	case err != nil:
		w.Header().Set("Connection", "close") // the rest of the body is not read
		return nil, nil, "", "", badRequest("", "safetensors body: %v", err)
	}
	return tensors, lora, "request body", "", nil
}

// weightsFromPath loads the checkpoint directory a JSON body names ({"path": DIR}).
func (s *server) weightsFromPath(w http.ResponseWriter, r *http.Request) (map[string]engine.HostTensor, *engine.LoRAConfig, string, string, *apiError) {
	body, e := s.readBody(w, r, s.maxBody)
	if e != nil {
		return nil, nil, "", "", e
	}
	var req struct {
		Path string `json:"path"`
	}
	if e := decodeStrict(body, &req); e != nil {
		return nil, nil, "", "", e
	}
	if req.Path == "" {
		return nil, nil, "", "", badRequest("path", "path is required (a model directory with config.json and safetensors)")
	}
	if _, err := os.Stat(filepath.Join(req.Path, modeldir.AdapterConfigFile)); err == nil {
		lc, ad, _, err := modeldir.ReadAdapter(req.Path, s.cfg)
		if err != nil {
			return nil, nil, "", "", badRequest("path", "%v", err)
		}
		return ad, &lc, req.Path, "", nil // the served name stays the base's
	}
	cfg, wts, err := checkpoints.Load(req.Path)
	if err != nil {
		return nil, nil, "", "", badRequest("path", "%v", err)
	}
	if e := sameArch(s.cfg, cfg); e != nil {
		return nil, nil, "", "", e
	}
	return wts, nil, req.Path, req.Path, nil
}

// readSafetensors reads a safetensors body of size bytes (-1: unknown) without trusting it:
// the 8-byte header length and the header's first byte first, then the header against the
// served model (checkHeader), and only then the data the header describes, into one buffer of
// that size. A body that is not this model's safetensors is refused after its first bytes.
func (s *server) readSafetensors(body io.Reader, size int64) (map[string]engine.HostTensor, *engine.LoRAConfig, error) {
	var lead [9]byte // the header length, and the header's first byte
	if _, err := io.ReadFull(body, lead[:]); err != nil {
		return nil, nil, fmt.Errorf("reading the header length: %w", err)
	}
	n := binary.LittleEndian.Uint64(lead[:8])
	switch {
	case n > checkpoints.MaxHeaderBytes:
		return nil, nil, fmt.Errorf("header length %d (the first 8 bytes, little-endian) is over the limit of %d bytes: not a safetensors file", n, checkpoints.MaxHeaderBytes)
	case size >= 0 && int64(n) > size-8:
		return nil, nil, fmt.Errorf("header length %d does not fit the body of %d bytes", n, size)
	case n == 0 || lead[8] != '{':
		return nil, nil, errors.New("the header does not start with '{': not a safetensors file")
	}
	rest, err := io.ReadAll(io.LimitReader(body, int64(n)-1))
	if err != nil {
		return nil, nil, fmt.Errorf("reading the header: %w", err)
	}
	hdr := append([]byte{'{'}, rest...)
	if uint64(len(hdr)) != n {
		return nil, nil, fmt.Errorf("the body ends inside its header of %d bytes", n)
	}
	dataLen, lora, err := s.checkHeader(hdr)
	if err != nil {
		return nil, nil, err
	}
	total := 8 + int64(n) + dataLen
	switch {
	case size >= 0 && total != size:
		return nil, nil, fmt.Errorf("the header describes %d bytes, the body has %d (Content-Length)", total, size)
	case total > s.maxWeight:
		return nil, nil, fmt.Errorf("the header describes %d bytes, over --max-weights-mib", total)
	}
	buf := make([]byte, total)
	copy(buf, lead[:8])
	copy(buf[8:], hdr)
	if _, err := io.ReadFull(body, buf[8+n:]); err != nil {
		return nil, nil, fmt.Errorf("reading the %d bytes of tensor data: %w", dataLen, err)
	}
	if k, _ := io.ReadFull(body, lead[:1]); k != 0 {
		return nil, nil, fmt.Errorf("the body goes on past the %d bytes its header describes", total)
	}
	f, err := checkpoints.ParseSafetensors(bytes.NewReader(buf), total)
	if err != nil {
		return nil, nil, err
	}
	if lora == nil {
		return f.Tensors, nil, nil
	}
	ad := make(map[string]engine.HostTensor, len(f.Tensors))
	for k, t := range f.Tensors {
		ad[strings.TrimPrefix(k, engine.LoRAPrefix)] = t
	}
	return ad, lora, nil
}

// checkAdapterHeader checks the entries of a header of adapter weights against the served
// model (checkHeader): every tensor one of the adapter's (PEFT keys), F32 or BF16, with its
// shape, none missing. cfg is the adapter_config.json the header's metadata carries.
func (s *server) checkAdapterHeader(entries map[string]json.RawMessage, cfg string) (int64, *engine.LoRAConfig, error) {
	lc, _, err := modeldir.ParseAdapterConfig([]byte(cfg), "__metadata__ "+modeldir.AdapterMetadataKey)
	if err != nil {
		return 0, nil, err
	}
	specs, err := engine.LoRASpecs(s.cfg, lc)
	if err != nil {
		return 0, nil, err
	}
	want := map[string][]int{}
	for _, sp := range specs {
		want[engine.LoRAPrefix+sp.Name] = sp.Shape
	}
	need, err := walkHeader(entries, func(name string, e headerEntry) (int64, error) {
		shape, ok := want[name]
		size, fok := floatSizes[e.DType]
		switch {
		case !ok:
			return 0, fmt.Errorf("tensor %q is not an adapter tensor of the served model (rank %d, targets %v)", name, lc.Rank, lc.Targets)
		case !fok:
			return 0, fmt.Errorf("tensor %q: dtype %q (want F32, BF16 or F16)", name, e.DType)
		case !slices.Equal(e.Shape, shape):
			return 0, fmt.Errorf("tensor %q has shape %v, want %v", name, e.Shape, shape)
		}
		return size * int64(shape[0]*shape[1]), nil
	}, func() error {
		for name := range want {
			if _, ok := entries[name]; !ok {
				return fmt.Errorf("adapter tensor %q is missing", name)
			}
		}
		return nil
	})
	if err != nil {
		return 0, nil, err
	}
	return need, &lc, nil
}

// floatSizes are the bytes per value of the dtypes a weight may have.
var floatSizes = map[string]int64{"F32": 4, "BF16": 2, "F16": 2}

// headerEntry is one tensor of a safetensors header.
type headerEntry struct {
	DType   string  `json:"dtype"`
	Shape   []int   `json:"shape"`
	Offsets []int64 `json:"data_offsets"`
}

// checkHeader checks a safetensors header against the served model (every tensor one of its
// weights, with its shape and a float dtype; none missing; the data region exactly their
// size) and returns the data region's size, which is thereby bounded by the model's.
// checkpoints.ParseSafetensors checks the rest once the data is there.
func (s *server) checkHeader(hdr []byte) (int64, *engine.LoRAConfig, error) {
	var entries map[string]json.RawMessage
	if err := json.Unmarshal(hdr, &entries); err != nil {
		return 0, nil, fmt.Errorf("header is not a JSON object: %w", err)
	}
	var meta map[string]string
	if raw, ok := entries["__metadata__"]; ok {
		if err := json.Unmarshal(raw, &meta); err != nil {
			return 0, nil, fmt.Errorf("__metadata__: %w", err)
		}
	}
	if lc, ok := meta[modeldir.AdapterMetadataKey]; ok {
		return s.checkAdapterHeader(entries, lc)
	}
	n, err := s.checkModelHeader(entries)
	return n, nil, err
}

// checkModelHeader checks the entries of a header of model weights (checkHeader).
func (s *server) checkModelHeader(entries map[string]json.RawMessage) (int64, error) {
	table := engine.NewWeightTable(s.cfg)
	need, err := walkHeader(entries, func(name string, e headerEntry) (int64, error) {
		return s.entryBytes(table, name, e)
	}, func() error {
		for _, spec := range table.Specs {
			if _, ok := entries[spec.Name]; !ok {
				return fmt.Errorf("weight %q is missing", spec.Name)
			}
		}
		return nil
	})
	return need, err
}

// walkHeader parses each tensor entry of a safetensors header (__metadata__ aside) and sums
// the bytes entryBytes gives it; then complete checks that no tensor is missing, and the data
// offsets must end exactly at that sum. It returns that size.
func walkHeader(entries map[string]json.RawMessage, entryBytes func(name string, e headerEntry) (int64, error), complete func() error) (int64, error) {
	var need, end int64
	for name, raw := range entries {
		if name == "__metadata__" {
			continue
		}
		var e headerEntry
		if err := json.Unmarshal(raw, &e); err != nil || len(e.Offsets) != 2 {
			return 0, fmt.Errorf("tensor %q: bad header entry %.200s", name, raw)
		}
		nb, err := entryBytes(name, e)
		if err != nil {
			return 0, err
		}
		need += nb
		end = max(end, e.Offsets[1])
	}
	if err := complete(); err != nil {
		return 0, err
	}
	if end != need {
		return 0, fmt.Errorf("the data offsets end at %d, but the tensors hold %d bytes", end, need)
	}
	return need, nil
}

// entryBytes is the size of a header's tensor, which must be one of the model's weights (or a
// rotary inv_freq buffer, ignored) with a float dtype.
func (s *server) entryBytes(table *engine.WeightTable, name string, e headerEntry) (int64, error) {
	size, ok := floatSizes[e.DType]
	if !ok {
		return 0, fmt.Errorf("tensor %q: dtype %q (want F32, BF16 or F16)", name, e.DType)
	}
	spec, ok := table.Lookup(name)
	switch {
	case ok && !slices.Equal(e.Shape, spec.Shape):
		return 0, fmt.Errorf("tensor %q has shape %v, the served model's %v", name, e.Shape, spec.Shape)
	case !ok && (!strings.HasSuffix(name, "rotary_emb.inv_freq") || len(e.Shape) != 1 || e.Shape[0] < 0 || e.Shape[0] > s.cfg.HeadDim):
		return 0, fmt.Errorf("tensor %q is not a weight of the served model", name)
	}
	elems := int64(1)
	for _, d := range e.Shape {
		elems *= int64(d)
	}
	return elems * size, nil
}

// updatedName is the served name of weights loaded from path (its directory's name, a
// training run's step-NNNNNNNN included) or sent in the body with an X-Served-Model-Name
// header; "" keeps the current name.
func updatedName(path, header string) string {
	if h := strings.TrimSpace(header); h != "" {
		return h
	}
	if path == "" {
		return ""
	}
	return filepath.Base(filepath.Clean(path))
}

// sameArch refuses weights of another architecture.
func sameArch(a, b *engine.Config) *apiError {
	ka, kb := *a, *b
	ka.EOSTokenIDs, kb.EOSTokenIDs, ka.BOSTokenID, kb.BOSTokenID, ka.Architectures, kb.Architectures = nil, nil, nil, nil, nil, nil
	ka.PadTokenID, kb.PadTokenID = nil, nil
	ja, _ := json.Marshal(ka)
	jb, _ := json.Marshal(kb)
	if !bytes.Equal(ja, jb) {
		return badRequest("path", "config.json describes another model: %s, the server runs %s", jb, ja)
	}
	return nil
}
