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
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx"
	"github.com/prolong-rl/prolong/tools/internal/clilog"
	"github.com/prolong-rl/prolong/tools/internal/modelio"
	"github.com/prolong-rl/prolong/tools/internal/outdir"
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

INPUT is
  - an .onnx file (optimum / torch.onnx.export with or without past_key_values, an
    onnxruntime-genai model, or one written by this project), or a directory holding
    model.onnx; config.json beside it is used when present, otherwise the config is read from
    the graph's metadata or the graph itself (see --config, --max-position-embeddings);
  - with --to onnx: a Hugging Face directory (config.json + model.safetensors or shards).
generation_config.json and tokenizer files (tokenizer.json, tokenizer_config.json, ...) beside
the input are copied into OUTDIR.

ONNX -> safetensors writes OUTDIR/model.safetensors (Hugging Face tensor names; shards with
model.safetensors.index.json when large), config.json and generation_config.json.
safetensors -> ONNX writes OUTDIR/model.onnx (optimum's KV-cache inputs and outputs; weights in
model.onnx.data beside it when over 2 GiB), config.json and generation_config.json.

OUTDIR is built under a temporary name and renamed when complete: a failed or interrupted
(Ctrl-C, SIGTERM) conversion leaves nothing behind. An existing non-empty OUTDIR is an error
unless --force, which replaces it only once the new one is complete (and refuses an OUTDIR that
holds the input). The exit status is 0 on success, 1 on any error (the error names the file,
tensor, field or flag at fault), and 130 or 143 when stopped by SIGINT or SIGTERM.

Examples:
  go run ./tools/convert -i model.onnx -o hf/                     ONNX -> safetensors (f32)
  go run ./tools/convert -i onnx-dir/ -o hf/ --dtype bf16 --verify  bf16, checked in ONNX Runtime
  go run ./tools/convert -i hf/ -o onnx/ --to onnx --verify       safetensors -> ONNX
  go run ./tools/convert -i model.onnx -o hf/ --force             replace an existing hf/

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
	fs.Int64Var(&o.shardBytes, "shard-size", modelio.DefaultShardBytes, "largest safetensors file in bytes: bigger models are split into shards of at most this size with model.safetensors.index.json, as transformers' save_pretrained does (0: always one file)")
	fs.BoolVar(&o.verify, "verify", false, "run ONNX Runtime on the ONNX side and the engine on the weights on a sample input and print the max |logit difference|; fail above --tolerance")
	fs.IntVar(&o.verifyTokens, "verify-tokens", 16, "length of the sample input of --verify")
	fs.Float64Var(&o.tolerance, "tolerance", 1e-3, "largest |logit difference| --verify accepts; bf16/f16 outputs are checked as written, so their rounding counts (raise it for them: 0.2 on the test models)")
	fs.BoolVar(&o.force, "force", false, "replace a non-empty output directory (only once the new one is complete)")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress bar (on stderr: the tensors as they are checked, then the bytes as they are written)")
	return fs
}

func main() { modelio.Main("convert", run) }

func run(args []string, stdout, stderr io.Writer) error {
	var o options
	if err := modelio.ParseInOut(newFlags(&o, io.Discard), args, stdout, &o.in, &o.out); err != nil {
		return err
	}
	switch {
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
	if err := outdir.Check(o.in, o.out, o.force); err != nil {
		return err
	}
	t0 := time.Now()
	lo := modelio.Options{Step: checkpoints.Latest}
	if o.config != "" {
		if lo.ONNX.Config, err = engine.LoadConfig(o.config); err != nil {
			return fmt.Errorf("--config: %w", err)
		}
	}
	if o.maxPositions > 0 {
		lo.ONNX.Hints = &engine.Config{MaxPositionEmbeddings: o.maxPositions}
	}
	p := outdir.NewProgress(stderr, o.quiet)
	defer p.Finish()
	p.Stage("reading " + o.in)
	m, err := modelio.Load(o.in, lo)
	if err != nil {
		return fmt.Errorf("-i %s: %w", o.in, err)
	}
	if m.Kind == "onnx" && o.to == "onnx" {
		return fmt.Errorf("-i %s is ONNX already; --to onnx converts from safetensors", o.in)
	}
	if m.Kind == "safetensors" && o.to == "safetensors" {
		hint := "use --to onnx, or tools/export to change its dtype"
		if _, err := os.Stat(filepath.Join(o.in, "model.onnx")); err == nil {
			hint = "to convert the model.onnx beside it, give -i " + filepath.Join(o.in, "model.onnx")
		}
		return fmt.Errorf("-i %s is a safetensors model already; %s", o.in, hint)
	}
	if m.Kind != "onnx" && o.to == "safetensors" {
		return fmt.Errorf("-i %s is a training run (%s); tools/export writes its safetensors", o.in, m.Kind)
	}
	if o.verify && o.verifyTokens > m.Config.MaxPositionEmbeddings {
		return fmt.Errorf("--verify-tokens %d: more than the model's max_position_embeddings %d", o.verifyTokens, m.Config.MaxPositionEmbeddings)
	}
	p.Tensors(len(m.Weights))
	if err := modelio.CheckWeights(m.Weights, dtype, p.Tensor); err != nil {
		return fmt.Errorf("-i %s: %w", o.in, err)
	}
	noTokenizer := false
	err = outdir.Write(o.out, o.force, func(tmp string) error {
		if o.to == "safetensors" {
			p.Writing(tmp, "writing model.safetensors", outdir.WeightBytes(m.Weights, outdir.DTypeSize(dtype)))
			if err := checkpoints.Save(tmp, m.Config, m.Weights, checkpoints.SaveOptions{DType: dtype, ShardBytes: o.shardBytes}); err != nil {
				return err
			}
		} else {
			p.Writing(tmp, "writing model.onnx", outdir.WeightBytes(m.Weights, 4))
			if err := onnx.Export(filepath.Join(tmp, "model.onnx"), m.Config, m.Weights, onnx.ExportOptions{}); err != nil {
				return err
			}
			if err := checkpoints.WriteConfig(tmp, m.Config, checkpoints.F32); err != nil {
				return err
			}
		}
		p.Stage("copying tokenizer files")
		copied, err := modelio.WriteSideFiles(m, tmp)
		if err != nil {
			return err
		}
		noTokenizer = !slices.Contains(copied, "tokenizer.json")
		if o.verify {
			p.Stage("verifying in ONNX Runtime")
			if err := verify(o, m, tmp, stdout); err != nil {
				return err
			}
		}
		return nil
	})
	p.Finish()
	if err != nil {
		return err
	}
	if noTokenizer {
		clilog.Logger(stderr, "convert").Warn("no tokenizer.json beside the input: the output has no tokenizer (copy one in to use it with transformers)", "input", o.in)
	}
	fmt.Fprintf(stdout, "converted %s (%s, %s, %s parameters) to %s in %.1fs:\n", o.in, m.Kind, m.Config.ModelType,
		modelio.HumanCount(m.Config.NumParams()), o.to, time.Since(t0).Seconds())
	return modelio.Summarize(stdout, o.out)
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
