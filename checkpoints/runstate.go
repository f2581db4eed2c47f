package checkpoints

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/prolong-rl/prolong/engine"
)

// A run directory holds one subdirectory per saved step and a pointer to the newest:
//
//	RUN/
//	  latest                     "step-000120\n", replaced atomically after each save
//	  step-000100/               one whole checkpoint (written as .step-000100.tmp-*, renamed;
//	                             older runs: step-00000100/, still read)
//	    config.json              the model's config.json  } also a Hugging Face model directory:
//	    generation_config.json                            } checkpoints.Load(step dir) reads it
//	    model.safetensors        policy weights, F32      }
//	    reference.safetensors    reference weights, F32 (when the run has them)
//	    adapter.safetensors      a LoRA run's adapters, F32 (model.safetensors is then its
//	                             frozen base, and reference_adapter.safetensors the
//	                             reference's adapters over that base)
//	    optimizer.safetensors    optimizer tensors as "group/parameter" (e.g. "m/model.norm.weight")
//	    state.json               written last: format version, step, RNG, data position,
//	                             metrics, and the size and sha256 of every other file
//
// A step directory is complete exactly when it has its final name: it is built under a
// temporary name, every file fsynced, the directory fsynced, then renamed, and the run
// directory fsynced. A crash at any moment leaves earlier steps as they were.

// RunStateVersion is the format version written to state.json; LoadRunState refuses newer ones.
const RunStateVersion = 1

// File names inside a run directory and its step directories.
const (
	LatestFile    = "latest"
	StateFile     = "state.json"
	ReferenceFile = "reference.safetensors"
	// AdapterFile and ReferenceAdapterFile hold a LoRA run's adapters (policy and reference)
	// by the engine's names (engine.LoRASpecs), F32.
	AdapterFile          = "adapter.safetensors"
	ReferenceAdapterFile = "reference_adapter.safetensors"
	OptimizerFile        = "optimizer.safetensors"
)

// RunState is what a training run needs to resume exactly where it stopped. The package does
// not interpret the optimizer, the RNG or the data position: the trainer fills them and gets
// them back unchanged.
type RunState struct {
	// Step is the number of training steps taken; it names the step directory.
	Step int64
	// Config is the policy's model config; Weights must match it (engine.WeightNames).
	Config *engine.Config
	// Weights are the policy's weights by HF name, stored as F32 (bit-exact).
	Weights map[string]engine.HostTensor
	// Reference are the reference policy's weights (same names as Weights), or nil.
	Reference map[string]engine.HostTensor
	// Adapters and ReferenceAdapters are a LoRA run's adapters of the policy and of the
	// reference policy (engine.LoRASpecs names), or nil. The package checks only that their
	// values are finite: their shapes follow the run's LoRA settings, which the trainer keeps.
	Adapters, ReferenceAdapters map[string]engine.HostTensor
	// Optimizer is the optimizer's state, or nil.
	Optimizer *OptimizerState
	// RNG holds named random-number-generator states (e.g. a math/rand/v2 PCG's
	// MarshalBinary), stored as given.
	RNG map[string][]byte
	// DataPosition is where the run is in its data (any JSON value, e.g. {"epoch":1,"index":40}).
	// JSON values come back from LoadRunState compacted (no insignificant white space).
	DataPosition json.RawMessage
	// Metrics are the metrics so far (any JSON value).
	Metrics json.RawMessage
	// Extra holds further named JSON values the trainer wants back (e.g. its options).
	Extra map[string]json.RawMessage
}

// OptimizerState is an optimizer's state as named tensors in groups, e.g. AdamW's first and
// second moments as groups "m" and "v", each keyed by parameter name, plus its step count.
type OptimizerState struct {
	// Step is the optimizer's own step count (it may differ from RunState.Step after a reset).
	Step int64
	// Groups maps a group name (no "/") to its tensors by parameter name.
	Groups map[string]map[string]engine.HostTensor
}

// SaveRunOptions tunes SaveRunState.
type SaveRunOptions struct {
	// Keep, when positive, removes the oldest step directories after a successful save so that
	// at most Keep remain (the new one always stays).
	Keep int
}

// stateJSON is the content of state.json.
type stateJSON struct {
	Format       string                     `json:"format"`
	Version      int                        `json:"version"`
	Step         int64                      `json:"step"`
	OptimizerSt  *int64                     `json:"optimizer_step,omitempty"`
	RNG          map[string][]byte          `json:"rng,omitempty"` // base64 in JSON
	DataPosition json.RawMessage            `json:"data_position,omitempty"`
	Metrics      json.RawMessage            `json:"metrics,omitempty"`
	Extra        map[string]json.RawMessage `json:"extra,omitempty"`
	Files        map[string]fileDigest      `json:"files"`
}

// fileDigest is the size and sha256 (hex) of a file.
type fileDigest struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

const stateFormat = "prolong-run-state"

// StepDirName is the name of step's directory in a run directory ("step-000120"): the width of
// the exports' checkpoints/step-NNNNNN names.
func StepDirName(step int64) string { return fmt.Sprintf("step-%06d", step) }

// legacyStepDirName is the name run states were saved under before they took the exports'
// width ("step-00000120"); such run directories still resume.
func legacyStepDirName(step int64) string { return fmt.Sprintf("step-%08d", step) }

// stepDir is the path of step's directory in the run directory dir: StepDirName, or the legacy
// name where only that exists.
func stepDir(dir string, step int64) string {
	p := filepath.Join(dir, StepDirName(step))
	if _, err := os.Stat(p); err != nil {
		if old := filepath.Join(dir, legacyStepDirName(step)); fileExists(old) {
			return old
		}
	}
	return p
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

var stepDirRE = regexp.MustCompile(`^step-([0-9]{6,19})$`)

// testHookRunState, when set (by tests), runs after each file of a step directory is written;
// an error it returns aborts the save as a crash would.
var testHookRunState func(file string) error

// SaveRunState writes st as the step directory RUN/step-NNNNNN and then points RUN/latest
// at it. The step directory is complete or absent: it is built under a temporary name and
// renamed once every file is fsynced, so a crash or an error at any point leaves the previous
// checkpoints and the latest pointer intact. Saving a step that already exists replaces it
// atomically. Errors name the directory and the file or tensor at fault.
func SaveRunState(dir string, st *RunState, opts SaveRunOptions) (err error) {
	if st == nil {
		return fmt.Errorf("save run state %s: nil state", dir)
	}
	if st.Step < 0 {
		return fmt.Errorf("save run state %s: negative step %d", dir, st.Step)
	}
	if st.Config == nil {
		return fmt.Errorf("save run state %s: no model config", dir)
	}
	arch, ok := architectures[st.Config.ModelType]
	if !ok {
		return fmt.Errorf("save run state %s: config field \"model_type\": %q is not supported", dir, st.Config.ModelType)
	}
	if err := st.Config.Validate(); err != nil {
		return fmt.Errorf("save run state %s: config: %w", dir, err)
	}
	w, err := checkWeights(st.Config, st.Weights)
	if err != nil {
		return fmt.Errorf("save run state %s: weights: %w", dir, err)
	}
	var ref map[string]engine.HostTensor
	if st.Reference != nil {
		if ref, err = checkWeights(st.Config, st.Reference); err != nil {
			return fmt.Errorf("save run state %s: reference weights: %w", dir, err)
		}
	}
	var opt map[string]engine.HostTensor
	if st.Optimizer != nil {
		if opt, err = flattenOptimizer(st.Optimizer); err != nil {
			return fmt.Errorf("save run state %s: %w", dir, err)
		}
	}
	for name, raw := range map[string]json.RawMessage{"data position": st.DataPosition, "metrics": st.Metrics} {
		if len(raw) > 0 && !json.Valid(raw) {
			return fmt.Errorf("save run state %s: %s is not valid JSON", dir, name)
		}
	}
	for k, raw := range st.Extra {
		if !json.Valid(raw) {
			return fmt.Errorf("save run state %s: extra %q is not valid JSON", dir, k)
		}
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("save run state %s: %w", dir, err)
	}
	name := StepDirName(st.Step)
	final := filepath.Join(dir, name)
	removeStaleSteps(dir)
	hook := func(file string) error {
		if testHookRunState != nil {
			return testHookRunState(file)
		}
		return nil
	}
	meta := map[string]string{"format": "pt", "step": strconv.FormatInt(st.Step, 10)}
	steps := []struct {
		file  string
		write func(path string) error
	}{
		{ConfigFile, func(p string) error { return writeJSON(p, configJSON(st.Config, arch, F32)) }},
		{GenerationConfigFile, func(p string) error { return writeJSON(p, generationConfig(st.Config)) }},
		{WeightsFile, func(p string) error { return WriteSafetensors(p, w, F32, meta) }},
	}
	if ref != nil {
		steps = append(steps, struct {
			file  string
			write func(path string) error
		}{ReferenceFile, func(p string) error { return WriteSafetensors(p, ref, F32, meta) }})
	}
	for _, a := range []struct {
		file string
		w    map[string]engine.HostTensor
	}{{AdapterFile, st.Adapters}, {ReferenceAdapterFile, st.ReferenceAdapters}} {
		if a.w == nil {
			continue
		}
		if err := checkFinite(a.w); err != nil {
			return fmt.Errorf("save run state %s: %s: %w", dir, a.file, err)
		}
		steps = append(steps, struct {
			file  string
			write func(path string) error
		}{a.file, func(p string) error { return WriteSafetensors(p, a.w, F32, meta) }})
	}
	if opt != nil {
		steps = append(steps, struct {
			file  string
			write func(path string) error
		}{OptimizerFile, func(p string) error { return WriteSafetensors(p, opt, F32, meta) }})
	}
	state := stateJSON{Format: stateFormat, Version: RunStateVersion, Step: st.Step, RNG: st.RNG,
		DataPosition: st.DataPosition, Metrics: st.Metrics, Extra: st.Extra, Files: map[string]fileDigest{}}
	if st.Optimizer != nil {
		s := st.Optimizer.Step
		state.OptimizerSt = &s
	}
	err = ReplaceDir(final, "."+name+".tmp-", func(tmp string) error {
		for _, s := range steps {
			p := filepath.Join(tmp, s.file)
			if err := s.write(p); err != nil {
				return err
			}
			d, err := digestFile(p)
			if err != nil {
				return err
			}
			state.Files[s.file] = d
			if err := hook(s.file); err != nil {
				return fmt.Errorf("after %s: %w", s.file, err)
			}
		}
		if err := writeJSON(filepath.Join(tmp, StateFile), state); err != nil {
			return err
		}
		if err := hook(StateFile); err != nil {
			return fmt.Errorf("after %s: %w", StateFile, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save run state %s: %w", dir, err)
	}
	if err := hook("rename"); err != nil {
		return fmt.Errorf("save run state %s: after the rename to %s: %w", dir, name, err)
	}
	if err := writeAtomic(filepath.Join(dir, LatestFile), func(w io.Writer) error {
		_, err := io.WriteString(w, name+"\n")
		return err
	}); err != nil {
		return fmt.Errorf("save run state %s: %w", dir, err)
	}
	slog.Debug("checkpoints: saved run state", "dir", final, "step", st.Step)
	if opts.Keep > 0 {
		pruneSteps(dir, opts.Keep, st.Step)
	}
	return nil
}

// generationConfig is generation_config.json for cfg.
func generationConfig(cfg *engine.Config) map[string]any {
	gen := map[string]any{}
	if cfg.BOSTokenID != nil {
		gen["bos_token_id"] = *cfg.BOSTokenID
	}
	if v := EOSValue(cfg.EOSTokenIDs); v != nil {
		gen["eos_token_id"] = v
	}
	if cfg.PadTokenID != nil {
		gen["pad_token_id"] = *cfg.PadTokenID
	}
	return gen
}

// flattenOptimizer names each optimizer tensor "group/parameter".
func flattenOptimizer(o *OptimizerState) (map[string]engine.HostTensor, error) {
	if o.Step < 0 {
		return nil, fmt.Errorf("optimizer state: negative step %d", o.Step)
	}
	out := map[string]engine.HostTensor{}
	for g, ts := range o.Groups {
		if g == "" || strings.Contains(g, "/") {
			return nil, fmt.Errorf("optimizer group %q: a group name must be non-empty and have no \"/\"", g)
		}
		for n, t := range ts {
			if n == "" {
				return nil, fmt.Errorf("optimizer group %q: a tensor has an empty name", g)
			}
			if engine.NumElements(t.Shape) != len(t.Data) {
				return nil, fmt.Errorf("optimizer tensor %q of group %q has %d values for shape %v", n, g, len(t.Data), t.Shape)
			}
			out[g+"/"+n] = t
		}
	}
	return out, nil
}

// digestFile returns the size and sha256 of the file at path, a regular file (OpenRegular).
func digestFile(path string) (fileDigest, error) {
	f, err := OpenRegular(path)
	if err != nil {
		return fileDigest{}, err
	}
	return digest(f, path)
}

// digest returns the size and sha256 of f, named path in errors, and closes it.
func digest(f *os.File, path string) (fileDigest, error) {
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fileDigest{}, fmt.Errorf("%s: %w", path, err)
	}
	return fileDigest{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// removeStaleSteps removes the temporary step directories that killed saves left in dir. A
// ".old" one (the previous copy of a step being replaced, see swapDir) is removed only where
// its step directory exists.
func removeStaleSteps(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		n := e.Name()
		if !strings.HasPrefix(n, ".step-") || !strings.Contains(n, ".tmp-") {
			continue
		}
		if strings.HasSuffix(n, ".old") {
			step := strings.TrimPrefix(n[:strings.Index(n, ".tmp-")], ".")
			if _, err := os.Stat(filepath.Join(dir, step, StateFile)); err != nil {
				continue
			}
		}
		os.RemoveAll(filepath.Join(dir, n))
	}
}

// pruneSteps removes the oldest step directories so that keep remain; the step just saved and
// the one latest names are never removed.
func pruneSteps(dir string, keep int, saved int64) {
	steps, err := ListSteps(dir)
	if err != nil {
		return
	}
	latest, _ := readLatest(dir)
	for len(steps) > keep {
		s := steps[0]
		steps = steps[1:]
		if s == saved || s == latest {
			continue
		}
		// Rename first, so that a crash mid-removal never leaves a half-deleted step under
		// its real name.
		p := stepDir(dir, s)
		gone := filepath.Join(dir, "."+filepath.Base(p)+".tmp-pruned")
		if err := os.Rename(p, gone); err != nil {
			slog.Warn("checkpoints: pruning an old step", "dir", p, "err", err)
			continue
		}
		os.RemoveAll(gone)
	}
	syncDir(dir)
}

// ListSteps returns the steps saved in the run directory dir, ascending: the step directories
// that have a state.json (temporary ones of interrupted saves are not listed).
func ListSteps(dir string) ([]int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list steps: %w", err)
	}
	var steps []int64
	for _, e := range entries {
		m := stepDirRE.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		s, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, e.Name(), StateFile)); err == nil {
			steps = append(steps, s)
		}
	}
	sort.Slice(steps, func(i, j int) bool { return steps[i] < steps[j] })
	return steps, nil
}

// readLatest returns the step that RUN/latest names.
func readLatest(dir string) (int64, error) {
	p := filepath.Join(dir, LatestFile)
	b, err := ReadModelFile(dir, LatestFile)
	if err != nil {
		return 0, err
	}
	m := stepDirRE.FindStringSubmatch(strings.TrimSpace(string(b)))
	if m == nil {
		return 0, fmt.Errorf("%s: %q does not name a step directory", p, strings.TrimSpace(string(b)))
	}
	return strconv.ParseInt(m[1], 10, 64)
}

// LatestStep returns the step that RUN/latest points to, or, where that file is missing, the
// highest complete step in dir.
func LatestStep(dir string) (int64, error) {
	s, err := readLatest(dir)
	if err == nil {
		return s, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	steps, lerr := ListSteps(dir)
	if lerr != nil {
		return 0, lerr
	}
	if len(steps) == 0 {
		return 0, fmt.Errorf("%s: no saved steps", dir)
	}
	return steps[len(steps)-1], nil
}

// Latest asks LoadRunState for the newest step.
const Latest int64 = -1

// LoadRunState reads the step directory of step (or of the newest step, for Latest) from the
// run directory dir. Every file is checked against the size and sha256 that state.json
// records, and the weights against the config; errors name the file and tensor at fault.
// Every file must be a regular file inside its directory (see OpenModelFile).
func LoadRunState(dir string, step int64) (*RunState, error) {
	if step == Latest {
		s, err := LatestStep(dir)
		if err != nil {
			return nil, fmt.Errorf("load run state: %w", err)
		}
		step = s
	}
	if step < 0 {
		return nil, fmt.Errorf("load run state %s: bad step %d", dir, step)
	}
	sd := stepDir(dir, step)
	statePath := filepath.Join(sd, StateFile)
	raw, err := ReadModelFile(sd, StateFile)
	if err != nil {
		return nil, fmt.Errorf("load run state: %w", err)
	}
	state, err := parseState(raw)
	if err != nil {
		return nil, fmt.Errorf("load run state: %s: %w", statePath, err)
	}
	if state.Step != step {
		return nil, fmt.Errorf("load run state: %s: field \"step\" is %d in the directory of step %d", statePath, state.Step, step)
	}
	for _, f := range []string{ConfigFile, WeightsFile} {
		if _, ok := state.Files[f]; !ok {
			return nil, fmt.Errorf("load run state: %s: field \"files\" does not list %s", statePath, f)
		}
	}
	for _, f := range slices.Sorted(maps.Keys(state.Files)) {
		want := state.Files[f]
		fh, err := OpenModelFile(sd, f)
		if err != nil {
			return nil, fmt.Errorf("load run state: %w", err)
		}
		got, err := digest(fh, filepath.Join(sd, f))
		if err != nil {
			return nil, fmt.Errorf("load run state: %w", err)
		}
		if got != want {
			return nil, fmt.Errorf("load run state: %s: %d bytes with sha256 %s, but %s records %d bytes with sha256 %s (corrupted)",
				filepath.Join(sd, f), got.Size, got.SHA256, StateFile, want.Size, want.SHA256)
		}
	}
	cfg, w, err := Load(sd)
	if err != nil {
		return nil, fmt.Errorf("load run state: %w", err)
	}
	st := &RunState{Step: state.Step, Config: cfg, Weights: w, RNG: state.RNG, DataPosition: compactJSON(state.DataPosition),
		Metrics: compactJSON(state.Metrics)}
	for k, v := range state.Extra {
		if st.Extra == nil {
			st.Extra = map[string]json.RawMessage{}
		}
		st.Extra[k] = compactJSON(v)
	}
	if _, ok := state.Files[ReferenceFile]; ok {
		p := filepath.Join(sd, ReferenceFile)
		f, err := ReadSafetensors(p)
		if err != nil {
			return nil, fmt.Errorf("load run state: %w", err)
		}
		if _, err := checkWeights(cfg, f.Tensors); err != nil {
			return nil, fmt.Errorf("load run state: %s: %w", p, err)
		}
		st.Reference = f.Tensors
	}
	for _, a := range []struct {
		file string
		dst  *map[string]engine.HostTensor
	}{{AdapterFile, &st.Adapters}, {ReferenceAdapterFile, &st.ReferenceAdapters}} {
		if _, ok := state.Files[a.file]; !ok {
			continue
		}
		p := filepath.Join(sd, a.file)
		f, err := ReadSafetensors(p)
		if err != nil {
			return nil, fmt.Errorf("load run state: %w", err)
		}
		if err := checkFinite(f.Tensors); err != nil {
			return nil, fmt.Errorf("load run state: %s: %w", p, err)
		}
		*a.dst = f.Tensors
	}
	if _, ok := state.Files[OptimizerFile]; ok {
		p := filepath.Join(sd, OptimizerFile)
		f, err := ReadSafetensors(p)
		if err != nil {
			return nil, fmt.Errorf("load run state: %w", err)
		}
		o := &OptimizerState{Groups: map[string]map[string]engine.HostTensor{}}
		if state.OptimizerSt != nil {
			o.Step = *state.OptimizerSt
		}
		for n, t := range f.Tensors {
			g, param, ok := strings.Cut(n, "/")
			if !ok || g == "" || param == "" {
				return nil, fmt.Errorf("load run state: %s: tensor %q is not named group/parameter", p, n)
			}
			if o.Groups[g] == nil {
				o.Groups[g] = map[string]engine.HostTensor{}
			}
			o.Groups[g][param] = t
		}
		st.Optimizer = o
	}
	return st, nil
}

// compactJSON returns raw without insignificant white space (nil for nil).
func compactJSON(raw json.RawMessage) json.RawMessage {
	if raw == nil {
		return nil
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}

// parseState parses and checks state.json.
func parseState(raw []byte) (*stateJSON, error) {
	var s stateJSON
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("bad JSON: %w", err)
	}
	switch {
	case s.Format != stateFormat:
		return nil, fmt.Errorf("field \"format\" is %q, want %q", s.Format, stateFormat)
	case s.Version < 1 || s.Version > RunStateVersion:
		return nil, fmt.Errorf("field \"version\" is %d; this build reads versions 1 to %d", s.Version, RunStateVersion)
	case s.Step < 0:
		return nil, fmt.Errorf("field \"step\" is negative (%d)", s.Step)
	case s.OptimizerSt != nil && *s.OptimizerSt < 0:
		return nil, fmt.Errorf("field \"optimizer_step\" is negative (%d)", *s.OptimizerSt)
	}
	for f, d := range s.Files {
		if f == "" || f != filepath.Base(f) || f == "." || f == ".." || f == StateFile || strings.ContainsAny(f, `/\`) {
			return nil, fmt.Errorf("field \"files\": %q is not a plain file name in the step directory", f)
		}
		if d.Size < 0 || len(d.SHA256) != 64 {
			return nil, fmt.Errorf("field \"files\": %q has a bad size or sha256", f)
		}
	}
	return &s, nil
}

// checkFinite checks that every tensor's length matches its shape and that its values are
// finite; the error names the tensor.
func checkFinite(w map[string]engine.HostTensor) error {
	for n, t := range w {
		if len(t.Data) != engine.NumElements(t.Shape) {
			return fmt.Errorf("tensor %q has %d values for shape %v", n, len(t.Data), t.Shape)
		}
		for _, v := range t.Data {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("tensor %q holds NaN or Inf", n)
			}
		}
	}
	return nil
}
