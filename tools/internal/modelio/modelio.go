// Package modelio is what the command-line tools share: finding and loading a model from the
// paths users give (an ONNX file, a Hugging Face directory, a training run or one of its
// steps), and carrying the tokenizer files along (package outdir writes the output).
package modelio

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/checkpoints/hub"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/grpo/modeldir"
	"github.com/prolong-rl/prolong/onnx"
)

// TokenizerFiles are the files of a Hugging Face tokenizer, copied along with a model
// (modeldir.TokenizerFiles).
var TokenizerFiles = modeldir.TokenizerFiles

// SideFiles are the files that travel with a model when it is converted or exported: the
// tokenizer's, and generation_config.json (modeldir.SideFiles).
var SideFiles = modeldir.SideFiles

// Model is a loaded model and where it came from.
type Model struct {
	Config  *engine.Config
	Weights map[string]engine.HostTensor
	// Kind says what the input was: "onnx", "safetensors", or "run state step N".
	Kind string
	// ONNX is the ONNX file when the input was one.
	ONNX string
	// TokenizerDir is the directory holding the model's tokenizer.json ("" when none).
	TokenizerDir string
	// FilesDir is the directory whose SideFiles travel with the model: the input's own
	// directory, or a training run's RUN/tokenizer/.
	FilesDir string
	// LoRA is a LoRA run's adapters (Weights are then its base with them merged); nil else.
	LoRA *LoRA
}

// LoRA are the adapters of a LoRA run state.
type LoRA struct {
	Config    engine.LoRAConfig
	Adapters  map[string]engine.HostTensor // engine.LoRASpecs names
	BaseModel string                       // base_model_name_or_path
}

// Options select what Load reads from a training run.
type Options struct {
	// Step picks a run state's step (checkpoints.Latest for the newest).
	Step int64
	// Reference loads the run state's reference policy instead of the policy.
	Reference bool
	// ONNX configures the import of an ONNX input (a config to use, or hints for what the graph
	// does not tell).
	ONNX onnx.ImportOptions
	// Hub configures how a model id is resolved (see Resolve); nil: from the environment.
	Hub *hub.Options
}

var stepDirRe = regexp.MustCompile(`^step-(\d+)$`)

// Load reads the model at path, which may be
//   - an .onnx file, or a directory holding model.onnx (config.json beside it is used);
//   - a Hugging Face directory (config.json + model.safetensors or shards);
//   - a training run directory (RUN/state/ of tools/train), a run-state directory (holding
//     "latest"), or one step of it (step-NNNNNN with state.json);
//   - a Hugging Face model id (ORG/NAME[@REVISION]) that is not a local path: its snapshot in
//     the Hugging Face cache, downloaded from the Hub when not cached (see Resolve).
//
// Special token ids the model's config lacks (an ONNX import knows none) are taken from the
// generation_config.json beside it or from its tokenizer (see fillTokenIDs).
//
// Every file a model directory names (weights, external data, config, the SideFiles that
// travel with it) must be a regular file that resolves inside that directory, or, for a
// snapshot of the Hugging Face cache, inside its repository folder (see
// checkpoints.OpenModelFile): a symlink that leads elsewhere, or a named pipe, is an error
// naming the file, and is refused before anything is written.
func Load(path string, opts Options) (*Model, error) {
	m, err := load(path, opts)
	if err != nil {
		return nil, err
	}
	if err := modeldir.CheckSideFiles(m.FilesDir); err != nil {
		return nil, err
	}
	if err := fillTokenIDs(m); err != nil {
		return nil, err
	}
	return m, nil
}

func load(path string, opts Options) (*Model, error) {
	path, err := Resolve(context.Background(), path, opts.Hub)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		if !strings.HasSuffix(path, ".onnx") {
			return nil, fmt.Errorf("%s: not an .onnx file nor a model directory", path)
		}
		return loadONNX(path, opts)
	}
	// A directory this process may not look into is not "no model here".
	var denied error
	exists := func(name string) bool {
		_, err := os.Stat(filepath.Join(path, name))
		if errors.Is(err, fs.ErrPermission) && denied == nil {
			denied = err
		}
		return err == nil
	}
	switch {
	case exists(checkpoints.StateFile): // one step of a run state
		m := stepDirRe.FindStringSubmatch(filepath.Base(filepath.Clean(path)))
		if m == nil {
			return nil, fmt.Errorf("%s: holds %s but is not named step-N", path, checkpoints.StateFile)
		}
		step, _ := strconv.ParseInt(m[1], 10, 64)
		if opts.Step != checkpoints.Latest && opts.Step != step {
			return nil, fmt.Errorf("%s is step %d, but --step %d was asked for", path, step, opts.Step)
		}
		return loadRunState(filepath.Dir(filepath.Clean(path)), step, opts)
	case exists(checkpoints.LatestFile):
		return loadRunState(path, opts.Step, opts)
	case exists(filepath.Join("state", checkpoints.LatestFile)):
		if opts.Step != checkpoints.Latest {
			return loadRunStep(path, opts)
		}
		return loadRunState(filepath.Join(path, "state"), opts.Step, opts)
	case exists(checkpoints.ConfigFile) && (exists(checkpoints.WeightsFile) || exists(checkpoints.IndexFile)):
		if opts.Reference || opts.Step != checkpoints.Latest {
			return nil, fmt.Errorf("%s is a model directory: --step and --weights reference apply to training runs", path)
		}
		cfg, w, err := checkpoints.Load(path)
		if err != nil {
			return nil, err
		}
		return &Model{Config: cfg, Weights: w, Kind: "safetensors", TokenizerDir: tokenizerDir(path), FilesDir: path}, nil
	case exists("model.onnx"):
		f, err := checkpoints.OpenModelFile(path, "model.onnx")
		if err != nil {
			return nil, err
		}
		f.Close()
		return loadONNX(filepath.Join(path, "model.onnx"), opts)
	}
	if denied != nil {
		return nil, fmt.Errorf("%s: cannot look inside the directory: %w", path, denied)
	}
	return nil, fmt.Errorf("%s: no model here (want model.onnx, config.json with model.safetensors, or a training run's state/)", path)
}

func loadONNX(path string, opts Options) (*Model, error) {
	cfg, w, err := onnx.Import(path, opts.ONNX)
	if err != nil {
		return nil, err
	}
	return &Model{Config: cfg, Weights: w, Kind: "onnx", ONNX: path, TokenizerDir: tokenizerDir(filepath.Dir(path)), FilesDir: filepath.Dir(path)}, nil
}

// exportDirRe names the exported checkpoints of a run (RUN/checkpoints/step-NNNNNN).
var exportDirRe = regexp.MustCompile(`^step-(\d+)$`)

// loadRunStep loads step opts.Step of the training run run: its run state (RUN/state/) when
// one has that step, else its exported checkpoint (RUN/checkpoints/step-NNNNNN, the policy
// only). When neither has it, the error lists the steps of both.
func loadRunStep(run string, opts Options) (*Model, error) {
	state := filepath.Join(run, "state")
	steps, err := checkpoints.ListSteps(state)
	if err != nil {
		return nil, err
	}
	if slices.Contains(steps, opts.Step) {
		return loadRunState(state, opts.Step, opts)
	}
	exports, err := exportedSteps(run)
	if err != nil {
		return nil, err
	}
	if dir, ok := exports[opts.Step]; ok {
		if opts.Reference {
			return nil, fmt.Errorf("%s has step %d only as the exported checkpoint %s, which holds the policy, not the reference weights", run, opts.Step, dir)
		}
		cfg, w, err := checkpoints.Load(dir)
		if err != nil {
			return nil, err
		}
		return &Model{Config: cfg, Weights: w, Kind: fmt.Sprintf("exported checkpoint step %d", opts.Step), TokenizerDir: tokenizerDir(dir), FilesDir: dir}, nil
	}
	list := func(s []int64) string {
		if len(s) == 0 {
			return "none"
		}
		out := make([]string, len(s))
		for i, v := range s {
			out[i] = strconv.FormatInt(v, 10)
		}
		return strings.Join(out, ", ")
	}
	var ex []int64
	for s := range exports {
		ex = append(ex, s)
	}
	slices.Sort(ex)
	return nil, fmt.Errorf("%s has no step %d (run states in state/: %s; exported checkpoints in checkpoints/: %s)", run, opts.Step, list(steps), list(ex))
}

// exportedSteps returns the exported checkpoints of the training run run by step: the
// directories RUN/checkpoints/step-N that hold config.json (none when there is no checkpoints/).
func exportedSteps(run string) (map[int64]string, error) {
	dir := filepath.Join(run, "checkpoints")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[int64]string{}
	for _, e := range entries {
		m := exportDirRe.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		s, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, e.Name(), checkpoints.ConfigFile)); err == nil {
			out[s] = filepath.Join(dir, e.Name())
		}
	}
	return out, nil
}

func loadRunState(dir string, step int64, opts Options) (*Model, error) {
	if step != checkpoints.Latest {
		steps, err := checkpoints.ListSteps(dir)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(steps, step) {
			saved := make([]string, len(steps))
			for i, s := range steps {
				saved[i] = strconv.FormatInt(s, 10)
			}
			return nil, fmt.Errorf("%s has no step %d (%s missing; steps saved: %s)", dir, step, checkpoints.StepDirName(step), strings.Join(saved, ", "))
		}
	}
	rs, err := checkpoints.LoadRunState(dir, step)
	if err != nil {
		return nil, err
	}
	w := rs.Weights
	kind := fmt.Sprintf("run state step %d (policy)", rs.Step)
	// tools/train keeps the run's tokenizer in RUN/tokenizer/ beside RUN/state/.
	tok := filepath.Join(filepath.Dir(dir), "tokenizer")
	if rs.Adapters != nil {
		return loadLoRAState(dir, rs, opts, tok)
	}
	if opts.Reference {
		if rs.Reference == nil {
			return nil, fmt.Errorf("%s step %d has no reference weights (the run had no KL term)", dir, rs.Step)
		}
		w, kind = rs.Reference, fmt.Sprintf("run state step %d (reference)", rs.Step)
	}
	return &Model{Config: rs.Config, Weights: w, Kind: kind, TokenizerDir: tokenizerDir(tok), FilesDir: tok}, nil
}

// loadLoRAState loads the run state of a LoRA run: the base merged with the policy's (or the
// reference's) adapters as Weights, and the adapters themselves.
func loadLoRAState(dir string, rs *checkpoints.RunState, opts Options, tok string) (*Model, error) {
	raw, ok := rs.Extra[modeldir.RunStateLoRAKey]
	if !ok {
		return nil, fmt.Errorf("%s step %d holds adapters but no LoRA settings (state.json extra %q)", dir, rs.Step, modeldir.RunStateLoRAKey)
	}
	lc, ac, err := modeldir.ParseAdapterConfig(raw, fmt.Sprintf("%s step %d: state.json extra %q", dir, rs.Step, modeldir.RunStateLoRAKey))
	if err != nil {
		return nil, err
	}
	ad, kind := rs.Adapters, fmt.Sprintf("run state step %d (policy, LoRA r%d)", rs.Step, lc.Rank)
	if opts.Reference {
		if rs.ReferenceAdapters == nil {
			return nil, fmt.Errorf("%s step %d has no reference adapters (the run had no KL term)", dir, rs.Step)
		}
		ad, kind = rs.ReferenceAdapters, fmt.Sprintf("run state step %d (reference, LoRA r%d)", rs.Step, lc.Rank)
	}
	merged, err := engine.MergeLoRA(rs.Config, lc, rs.Weights, ad)
	if err != nil {
		return nil, fmt.Errorf("%s step %d: %w", dir, rs.Step, err)
	}
	return &Model{Config: rs.Config, Weights: merged, Kind: kind, TokenizerDir: tokenizerDir(tok), FilesDir: tok,
		LoRA: &LoRA{Config: lc, Adapters: ad, BaseModel: ac.BaseModel}}, nil
}

// tokenizerDir returns dir when it holds tokenizer.json.
func tokenizerDir(dir string) string {
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err == nil {
		return dir
	}
	return ""
}

// CopyTokenizer copies the tokenizer files of from (if any) into to.
func CopyTokenizer(from, to string) ([]string, error) {
	return modeldir.CopyFiles(from, to, TokenizerFiles)
}

// CopySideFiles copies the SideFiles that exist in from (none when from is "") into to,
// replacing files of the same name there, and returns their names.
func CopySideFiles(from, to string) ([]string, error) {
	return modeldir.CopyFiles(from, to, SideFiles)
}

// ParseDType maps a --dtype value to the safetensors dtype.
func ParseDType(s string) (checkpoints.DType, error) {
	switch strings.ToLower(s) {
	case "f32", "fp32", "float32":
		return checkpoints.F32, nil
	case "bf16", "bfloat16":
		return checkpoints.BF16, nil
	case "f16", "fp16", "float16":
		return checkpoints.F16, nil
	}
	return "", fmt.Errorf("--dtype %q: want f32, bf16 or f16", s)
}

// SampleTokens is the fixed input --verify runs: ids spread over the vocabulary.
func SampleTokens(cfg *engine.Config, n int) []int32 {
	ids := make([]int32, n)
	for i := range ids {
		ids[i] = int32((i*7919 + 1) % cfg.VocabSize)
	}
	return ids
}

// EngineLogits runs the engine's CPU backend on ids from position 0.
func EngineLogits(cfg *engine.Config, w map[string]engine.HostTensor, ids []int32) ([]float32, error) {
	m, err := engine.NewModel(cfg, cpu.New(), w, engine.F32)
	if err != nil {
		return nil, err
	}
	out, err := m.Logits(context.Background(), [][]int32{ids})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}
