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
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/onnx"
	"github.com/prolong-rl/prolong/tools/internal/modelio"
)

type options struct {
	in, out, weights, dtype string
	formats                 []string
	step                    int64
	force, verify           bool
	tolerance               float64
}

func newFlags(o *options, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet("export", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: go run ./tools/export -i CHECKPOINT -o OUTDIR [--format onnx,safetensors] [flags]

Exports a checkpoint to ONNX (model.onnx, optimum's KV-cache convention, ONNX Runtime loads it)
and to a Hugging Face directory (model.safetensors, config.json, generation_config.json,
tokenizer files). CHECKPOINT is a training run directory of tools/train (its latest run state,
or --step), a run-state step directory (RUN/state/step-NNNNNNNN), or a plain model directory
(config.json + safetensors) or ONNX file.

Examples:
  go run ./tools/export -i runs/mine -o release/                     latest step, both formats
  go run ./tools/export -i runs/mine -o ref/ --step 100 --weights reference
  go run ./tools/export -i runs/mine -o hf/ --format safetensors --dtype bf16

Flags:
`)
		fs.PrintDefaults()
	}
	fs.StringVarP(&o.in, "input", "i", "", "checkpoint: a training run, a run-state step directory, or a model directory / .onnx file (required)")
	fs.StringVarP(&o.out, "output", "o", "", "output directory (required); must not exist or be empty unless --force")
	fs.StringSliceVar(&o.formats, "format", []string{"onnx", "safetensors"}, "formats to write: onnx, safetensors, or both")
	fs.Int64Var(&o.step, "step", checkpoints.Latest, "training step to export (default: the latest run state)")
	fs.StringVar(&o.weights, "weights", "policy", "from a run state: policy (the trained weights) or reference (the KL reference)")
	fs.StringVar(&o.dtype, "dtype", "f32", "element type of model.safetensors: f32, bf16 or f16 (model.onnx is f32)")
	fs.BoolVar(&o.verify, "verify", false, "run the exported model.onnx in ONNX Runtime and the engine on the weights on a sample input; fail if the logits differ by more than --tolerance")
	fs.Float64Var(&o.tolerance, "tolerance", 1e-3, "largest |logit difference| --verify accepts")
	fs.BoolVar(&o.force, "force", false, "replace a non-empty output directory (only once the new one is complete)")
	return fs
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "export:", err)
			os.Exit(1)
		}
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlags(&o, stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q (use -i and -o)", fs.Args())
	case o.in == "":
		return errors.New("-i/--input is required (see --help)")
	case o.out == "":
		return errors.New("-o/--output is required (see --help)")
	case o.weights != "policy" && o.weights != "reference":
		return fmt.Errorf("--weights %q: want policy or reference", o.weights)
	case len(o.formats) == 0:
		return errors.New("--format: give onnx, safetensors or both")
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
	t0 := time.Now()
	m, err := modelio.Load(o.in, modelio.Options{Step: o.step, Reference: o.weights == "reference"})
	if err != nil {
		return fmt.Errorf("-i %s: %w", o.in, err)
	}
	var written []string
	err = modelio.WriteDir(o.out, o.force, func(tmp string) error {
		if slices.Contains(o.formats, "safetensors") {
			if err := checkpoints.Save(tmp, m.Config, m.Weights, checkpoints.SaveOptions{DType: dtype}); err != nil {
				return err
			}
		}
		if slices.Contains(o.formats, "onnx") {
			if err := onnx.Export(filepath.Join(tmp, "model.onnx"), m.Config, m.Weights, onnx.ExportOptions{}); err != nil {
				return err
			}
			if !slices.Contains(o.formats, "safetensors") { // config.json travels with the ONNX too
				if err := checkpoints.Save(tmp+".cfg", m.Config, m.Weights, checkpoints.SaveOptions{}); err != nil {
					return err
				}
				defer os.RemoveAll(tmp + ".cfg")
				for _, f := range []string{checkpoints.ConfigFile, checkpoints.GenerationConfigFile} {
					if err := os.Rename(filepath.Join(tmp+".cfg", f), filepath.Join(tmp, f)); err != nil {
						return err
					}
				}
			}
		}
		if _, err := modelio.CopyTokenizer(m.TokenizerDir, tmp); err != nil {
			return err
		}
		if o.verify {
			ids := modelio.SampleTokens(m.Config, 16)
			d, err := modelio.Verify(filepath.Join(tmp, "model.onnx"), m.Config, m.Weights, ids)
			if err != nil {
				return fmt.Errorf("--verify: %w", err)
			}
			fmt.Fprintf(stdout, "verify: max |logit difference| ONNX Runtime vs engine: %.3g (tolerance %g)\n", d, o.tolerance)
			if d > o.tolerance {
				return fmt.Errorf("--verify: logits differ by %.3g, more than --tolerance %g (nothing was written)", d, o.tolerance)
			}
		}
		entries, _ := os.ReadDir(tmp)
		for _, e := range entries {
			written = append(written, e.Name())
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "exported %s (%s, %s, %.1fM parameters) to %s: %s (%.1fs)\n", o.in, m.Kind, m.Config.ModelType,
		float64(m.Config.NumParams())/1e6, o.out, strings.Join(written, ", "), time.Since(t0).Seconds())
	return nil
}
