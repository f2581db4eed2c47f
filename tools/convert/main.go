// Command convert moves a decoder model between ONNX and Hugging Face safetensors:
//
//	go run ./tools/convert -i MODEL.onnx -o OUTDIR            # -> OUTDIR/model.safetensors + config.json
//	go run ./tools/convert -i MODELDIR -o OUTDIR               # MODELDIR holds model.onnx (+ config.json)
//	go run ./tools/convert -i HFDIR -o OUTDIR --to onnx        # -> OUTDIR/model.onnx (KV-cache I/O) + config.json
//	go run ./tools/convert -i MODEL.onnx -o OUTDIR --verify    # and compare ONNX Runtime with the engine
//
// Tokenizer files beside the input are copied along. The output directory is written under a
// temporary name and renamed at the end: a failed conversion leaves nothing behind, and an
// existing non-empty directory is replaced only with --force.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx"
	"github.com/prolong-rl/prolong/tools/internal/modelio"
)

type options struct {
	in, out, to, dtype string
	config             string
	maxPositions       int
	verify, force      bool
	verifyTokens       int
	tolerance          float64
	shardBytes         int64
	quiet              bool
}

func newFlags(o *options, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet("convert", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: go run ./tools/convert -i INPUT -o OUTDIR [--to safetensors|onnx] [flags]

Converts a Llama / Qwen2 / Qwen3 decoder between ONNX and Hugging Face safetensors.
INPUT is an .onnx file, a directory holding model.onnx (config.json beside it is used when
present; otherwise the config is read from the graph), or a Hugging Face directory
(config.json + model.safetensors or shards). Tokenizer files beside the input are copied.

Examples:
  go run ./tools/convert -i model.onnx -o hf/                   ONNX -> safetensors
  go run ./tools/convert -i hf/ -o onnx/ --to onnx --verify     safetensors -> ONNX, checked in ONNX Runtime

Flags:
`)
		fs.PrintDefaults()
	}
	fs.StringVarP(&o.in, "input", "i", "", "model to convert: an .onnx file, a directory with model.onnx, or a Hugging Face directory (required)")
	fs.StringVarP(&o.out, "output", "o", "", "output directory (required); must not exist or be empty unless --force")
	fs.StringVar(&o.to, "to", "safetensors", "output format: safetensors (model.safetensors + config.json) or onnx (model.onnx with KV-cache inputs/outputs + config.json)")
	fs.StringVar(&o.config, "config", "", "config.json to use for an ONNX input that has none beside it (otherwise the config is read from the graph)")
	fs.IntVar(&o.maxPositions, "max-position-embeddings", 0, "for an ONNX input without config.json whose graph does not tell it: the model's max_position_embeddings")
	fs.StringVar(&o.dtype, "dtype", "f32", "element type of the safetensors written: f32, bf16 or f16 (the ONNX output is always f32)")
	fs.Int64Var(&o.shardBytes, "shard-size", 0, "split safetensors into shards of about this many bytes with model.safetensors.index.json (0: one file up to 4 GiB, then shards)")
	fs.BoolVar(&o.verify, "verify", false, "run ONNX Runtime on the ONNX side and the engine on the weights on a sample input and print the max |logit difference|; fail above --tolerance")
	fs.IntVar(&o.verifyTokens, "verify-tokens", 16, "length of the sample input of --verify")
	fs.Float64Var(&o.tolerance, "tolerance", 1e-3, "largest |logit difference| --verify accepts (in f32; bf16/f16 outputs are checked on what was written)")
	fs.BoolVar(&o.force, "force", false, "replace a non-empty output directory (only once the new one is complete)")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress bar")
	return fs
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "convert:", err)
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
	case o.to != "safetensors" && o.to != "onnx":
		return fmt.Errorf("--to %q: want safetensors or onnx", o.to)
	case o.verifyTokens < 1:
		return fmt.Errorf("--verify-tokens %d: want at least 1", o.verifyTokens)
	}
	dtype, err := modelio.ParseDType(o.dtype)
	if err != nil {
		return err
	}
	if o.to == "onnx" && dtype != checkpoints.F32 {
		return errors.New("--dtype applies to safetensors output; the ONNX written is f32")
	}
	bar := newBar(o.quiet, stderr)
	t0 := time.Now()
	bar.Describe("reading " + o.in)
	lo := modelio.Options{Step: checkpoints.Latest}
	if o.config != "" {
		if lo.ONNX.Config, err = engine.LoadConfig(o.config); err != nil {
			return fmt.Errorf("--config: %w", err)
		}
	}
	if o.maxPositions > 0 {
		lo.ONNX.Hints = &engine.Config{MaxPositionEmbeddings: o.maxPositions}
	}
	m, err := modelio.Load(o.in, lo)
	if err != nil {
		return fmt.Errorf("-i %s: %w", o.in, err)
	}
	bar.Add(1)
	if m.Kind == "onnx" && o.to == "onnx" {
		return fmt.Errorf("-i %s is ONNX already; --to onnx converts from safetensors", o.in)
	}
	if m.Kind == "safetensors" && o.to == "safetensors" {
		return fmt.Errorf("-i %s is safetensors already; use --to onnx (or tools/export to change dtype)", o.in)
	}
	var written []string
	err = modelio.WriteDir(o.out, o.force, func(tmp string) error {
		bar.Describe("writing " + o.to)
		if o.to == "safetensors" {
			if err := checkpoints.Save(tmp, m.Config, m.Weights, checkpoints.SaveOptions{DType: dtype, ShardBytes: o.shardBytes}); err != nil {
				return err
			}
		} else {
			if err := onnx.Export(filepath.Join(tmp, "model.onnx"), m.Config, m.Weights, onnx.ExportOptions{}); err != nil {
				return err
			}
			cfgJSON, err := json.MarshalIndent(m.Config, "", "  ")
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(tmp, checkpoints.ConfigFile), append(cfgJSON, '\n'), 0o644); err != nil {
				return err
			}
		}
		bar.Add(1)
		if _, err := modelio.CopyTokenizer(m.TokenizerDir, tmp); err != nil {
			return err
		}
		if o.verify {
			bar.Describe("verifying in ONNX Runtime")
			if err := verify(o, m, tmp, stdout); err != nil {
				return err
			}
		}
		bar.Add(1)
		entries, _ := os.ReadDir(tmp)
		for _, e := range entries {
			written = append(written, e.Name())
		}
		return nil
	})
	bar.Finish()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "converted %s (%s, %s, %.1fM parameters) to %s in %s: %v (%.1fs)\n", o.in, m.Kind, m.Config.ModelType,
		float64(m.Config.NumParams())/1e6, o.to, o.out, written, time.Since(t0).Seconds())
	return nil
}

// verify compares ONNX Runtime on the ONNX side of the conversion with the engine on the
// weights as written (bf16/f16 safetensors are read back, so the check covers the rounding).
func verify(o options, m *modelio.Model, tmp string, stdout io.Writer) error {
	onnxPath, cfg, w := m.ONNX, m.Config, m.Weights
	if o.to == "onnx" {
		onnxPath = filepath.Join(tmp, "model.onnx")
	} else {
		var err error
		if cfg, w, err = checkpoints.Load(tmp); err != nil {
			return fmt.Errorf("reading back what was written: %w", err)
		}
	}
	ids := modelio.SampleTokens(cfg, o.verifyTokens)
	d, err := modelio.Verify(onnxPath, cfg, w, ids)
	if err != nil {
		return fmt.Errorf("--verify: %w", err)
	}
	fmt.Fprintf(stdout, "verify: max |logit difference| ONNX Runtime vs engine over %d positions x %d vocab: %.3g (tolerance %g)\n", len(ids), cfg.VocabSize, d, o.tolerance)
	if d > o.tolerance {
		return fmt.Errorf("--verify: logits differ by %.3g, more than --tolerance %g (nothing was written)", d, o.tolerance)
	}
	return nil
}

func newBar(quiet bool, w io.Writer) *progressbar.ProgressBar {
	if quiet {
		return progressbar.DefaultSilent(3, "")
	}
	return progressbar.NewOptions(3, progressbar.OptionSetWriter(w), progressbar.OptionSetWidth(20),
		progressbar.OptionShowCount(), progressbar.OptionClearOnFinish(), progressbar.OptionSetPredictTime(false))
}
