// Command export turns a training checkpoint into models other tools load: a Hugging Face
// directory (model.safetensors + config.json + generation_config.json + tokenizer files, for
// transformers' from_pretrained) and an ONNX decoder with KV-cache inputs and outputs (for ONNX
// Runtime), side by side in one directory.
//
//	go run ./tools/export -i runs/RUN -o OUTDIR                       # the run's latest state
//	go run ./tools/export -i runs/RUN -o OUTDIR --step 100 --format onnx
//	go run ./tools/export -i runs/RUN -o OUTDIR --weights reference
//	go run ./tools/export -i HFDIR -o OUTDIR --dtype bf16             # a plain model directory
package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"time"

	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/grpo/modeldir"
	"github.com/prolong-rl/prolong/tools/internal/clilog"
	"github.com/prolong-rl/prolong/tools/internal/modelio"
	"github.com/prolong-rl/prolong/tools/internal/outdir"
)

type options struct {
	in, out, weights, dtype string
	loraForm                string
	formats                 []string
	step                    int64
	force, verify, quiet    bool
	tolerance               float64
	shardBytes              int64
}

func newFlags(o *options, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet("export", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: go run ./tools/export -i CHECKPOINT -o OUTDIR [--format onnx,safetensors] [--step N] [--weights policy|reference] [flags]

Exports a checkpoint to one directory that both ONNX Runtime and Hugging Face transformers load:
  model.onnx              the decoder in optimum's KV-cache convention (input_ids,
                          attention_mask, position_ids, past_key_values.N.key/value -> logits,
                          present.N.key/value); f32; weights in model.onnx.data when over 2 GiB
  model.safetensors       the weights under Hugging Face names (shards + index when large)
  config.json, generation_config.json, and the tokenizer files of the run or model

CHECKPOINT is
  - a training run directory of tools/train (RUN/, holding RUN/state/ and RUN/tokenizer/) or
    its run-state directory (RUN/state/): the latest step, or the one --step names (from a
    training run, a step with no run state is taken from its exported checkpoint
    RUN/checkpoints/step-NNNNNN, which holds the policy only);
  - one step of a run state (RUN/state/step-NNNNNN);
  - a plain model directory (config.json + model.safetensors or shards) or an .onnx file.
--weights reference exports a run state's reference policy (the KL anchor) instead of the
policy. A LoRA run (tools/train --lora-rank) exports its base with the adapters merged and,
with --lora-form both (the default) or adapter, the adapters in PEFT's format (adapter/).

OUTDIR is built under a temporary name and renamed when complete: a failed or interrupted
(Ctrl-C, SIGTERM) export leaves nothing behind. An existing non-empty OUTDIR is an error
unless --force, which replaces it only once the new one is complete (and refuses an OUTDIR that
holds the input). The exit status is 0 on success, 1 on any error (the error names the file,
tensor, field or flag at fault), and 130 or 143 when stopped by SIGINT or SIGTERM.

Examples:
  go run ./tools/export -i runs/mine -o release/ --verify           latest step, both formats, checked in ONNX Runtime
  go run ./tools/export -i runs/mine -o old/ --step 100 --format onnx
  go run ./tools/export -i runs/mine -o ref/ --weights reference --format safetensors
  go run ./tools/export -i release/ -o release-bf16/ --format safetensors --dtype bf16

Flags:
`)
		fs.PrintDefaults()
	}
	fs.StringVarP(&o.in, "input", "i", "", "checkpoint: a training run, a run-state step directory, or a model directory / .onnx file (required)")
	fs.StringVarP(&o.out, "output", "o", "", "output directory (required); must not exist or be empty unless --force")
	fs.StringSliceVar(&o.formats, "format", []string{"onnx", "safetensors"}, "formats to write, comma-separated: onnx, safetensors, or both")
	fs.StringVar(&o.loraForm, "lora-form", "both", "from a LoRA run: merged (the base with the adapters merged, W + alpha/r·B·A), adapter (OUTDIR is a PEFT adapter directory: adapter_config.json + adapter_model.safetensors) or both (the merged model, with the adapter in OUTDIR/adapter/)")
	fs.Int64Var(&o.step, "step", checkpoints.Latest, "training step to export from a run (-1: the latest saved step)")
	fs.StringVar(&o.weights, "weights", "policy", "from a run state: policy (the trained weights) or reference (the KL reference policy)")
	fs.StringVar(&o.dtype, "dtype", "f32", "element type of model.safetensors: f32, bf16 or f16 (model.onnx is always f32)")
	fs.Int64Var(&o.shardBytes, "shard-size", modelio.DefaultShardBytes, "largest safetensors file in bytes: bigger models are split into shards of at most this size with model.safetensors.index.json, as transformers' save_pretrained does (0: always one file)")
	fs.BoolVar(&o.verify, "verify", false, "run the exported model.onnx in ONNX Runtime and the engine on the weights on a sample input, print the max |logit difference|, and fail above --tolerance (needs onnx in --format)")
	fs.Float64Var(&o.tolerance, "tolerance", 1e-3, "largest |logit difference| --verify accepts")
	fs.BoolVar(&o.force, "force", false, "replace a non-empty output directory (only once the new one is complete)")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress bar (on stderr: the tensors as they are checked, then the bytes as they are written)")
	return fs
}

func main() { modelio.Main("export", run) }

func run(args []string, stdout, stderr io.Writer) error {
	var o options
	if err := modelio.ParseInOut(newFlags(&o, io.Discard), args, stdout, &o.in, &o.out); err != nil {
		return err
	}
	switch {
	case o.weights != "policy" && o.weights != "reference":
		return fmt.Errorf("--weights %q: want policy or reference", o.weights)
	case len(o.formats) == 0:
		return errors.New("--format: give onnx, safetensors or both")
	case o.loraForm != "merged" && o.loraForm != "adapter" && o.loraForm != "both":
		return fmt.Errorf("--lora-form %q: want merged, adapter or both", o.loraForm)
	case o.step < checkpoints.Latest:
		return fmt.Errorf("--step %d: want a step number of the run (0 or more)", o.step)
	}
	for _, f := range o.formats {
		if f != "onnx" && f != "safetensors" {
			return fmt.Errorf("--format %q: want onnx and/or safetensors", f)
		}
	}
	if o.verify && !slices.Contains(o.formats, "onnx") {
		return errors.New("--verify checks model.onnx: add onnx to --format")
	}
	dtype, err := modelio.ParseDType(o.dtype)
	if err != nil {
		return err
	}
	if err := outdir.Check(o.in, o.out, o.force); err != nil {
		return err
	}
	t0 := time.Now()
	p := outdir.NewProgress(stderr, o.quiet)
	defer p.Finish()
	p.Stage("reading " + o.in)
	m, err := modelio.Load(o.in, modelio.Options{Step: o.step, Reference: o.weights == "reference"})
	if err != nil {
		return fmt.Errorf("-i %s: %w", o.in, err)
	}
	if m.Kind == "onnx" && (o.step != checkpoints.Latest || o.weights != "policy") {
		return fmt.Errorf("-i %s is an ONNX model: --step and --weights reference apply to training runs", o.in)
	}
	if m.LoRA == nil && o.loraForm == "adapter" {
		return fmt.Errorf("--lora-form adapter: -i %s holds no LoRA adapters (%s)", o.in, m.Kind)
	}
	if m.LoRA != nil && o.loraForm == "adapter" && o.verify {
		return errors.New("--verify checks model.onnx, which --lora-form adapter does not write")
	}
	p.Tensors(len(m.Weights))
	if err := modelio.CheckWeights(m.Weights, dtype, p.Tensor); err != nil {
		return fmt.Errorf("-i %s: %w", o.in, err)
	}
	noTokenizer := false
	err = outdir.Write(o.out, o.force, func(tmp string) error {
		if m.LoRA != nil && o.loraForm == "adapter" {
			p.Stage("writing the adapter")
			return writeAdapter(tmp, m)
		}
		// The trainer's checkpoints (RUN/checkpoints/step-NNNNNN) are written by the same
		// modeldir.Write: the same step exports to the same bytes either way.
		copied, err := modeldir.Write(tmp, m.Config, m.Weights, modeldir.Options{
			FilesDir:    m.FilesDir,
			Safetensors: slices.Contains(o.formats, "safetensors"), DType: dtype, ShardBytes: o.shardBytes,
			ONNX: slices.Contains(o.formats, "onnx"),
			Stage: func(part string) {
				switch part {
				case checkpoints.WeightsFile:
					p.Writing(tmp, "writing model.safetensors", outdir.WeightBytes(m.Weights, outdir.DTypeSize(dtype)))
				case modeldir.ONNXFile:
					p.Writing(tmp, "writing model.onnx", outdir.WeightBytes(m.Weights, 4))
				default:
					p.Stage("copying tokenizer files")
				}
			},
		})
		if err != nil {
			return err
		}
		noTokenizer = !slices.Contains(copied, "tokenizer.json")
		if m.LoRA != nil && o.loraForm == "both" {
			if err := writeAdapter(filepath.Join(tmp, modeldir.AdapterDir), m); err != nil {
				return err
			}
		}
		if o.verify {
			p.Stage("verifying in ONNX Runtime")
			ids := modelio.SampleTokens(m.Config, min(16, m.Config.MaxPositionEmbeddings))
			d, err := modelio.Verify(filepath.Join(tmp, "model.onnx"), m.Config, m.Weights, ids)
			if err != nil {
				return fmt.Errorf("--verify: %w", err)
			}
			fmt.Fprintf(stdout, "verify: max |logit difference| ONNX Runtime vs engine over %d positions x %d vocab: %.3g (tolerance %g)\n", len(ids), m.Config.VocabSize, d, o.tolerance)
			if d > o.tolerance {
				return fmt.Errorf("--verify: logits differ by %.3g, more than --tolerance %g (nothing was written)", d, o.tolerance)
			}
		}
		return nil
	})
	p.Finish()
	if err != nil {
		return err
	}
	if noTokenizer {
		clilog.Logger(stderr, "export").Warn("no tokenizer files found with the checkpoint: the export has no tokenizer", "input", o.in)
	}
	fmt.Fprintf(stdout, "exported %s (%s, %s, %s parameters) to %s in %.1fs:\n", o.in, m.Kind, m.Config.ModelType,
		modelio.HumanCount(m.Config.NumParams()), o.out, time.Since(t0).Seconds())
	return modelio.Summarize(stdout, o.out)
}

// writeAdapter writes a LoRA run's adapters as the PEFT adapter directory dir.
func writeAdapter(dir string, m *modelio.Model) error {
	return modeldir.WriteAdapter(dir, m.Config, m.LoRA.Config, m.LoRA.Adapters, m.LoRA.BaseModel)
}
