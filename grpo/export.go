package grpo

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/grpo/modeldir"
)

// exportTmpPrefix is the prefix of the temporary directory an export is built in.
func exportTmpPrefix(name string) string { return "." + name + ".tmp-" }

// removeStaleExports removes the temporary export directories a killed run left in the run
// directory's checkpoints/ (exports are built under a temporary name, then swapped in).
func removeStaleExports(dir string) {
	left, _ := filepath.Glob(filepath.Join(dir, "checkpoints", exportTmpPrefix("*")+"*"))
	for _, p := range left {
		os.RemoveAll(p)
	}
}

// export writes the policy at a step under Dir/checkpoints/step-NNNNNN as a Hugging Face
// directory (model.safetensors, config.json, generation_config.json, tokenizer files) and as
// ONNX (model.onnx, KV-cache inputs and outputs, loadable by ONNX Runtime).
//
// The directory is built under a temporary name and swapped in whole (checkpoints.ReplaceDir):
// a run killed while exporting leaves the previous state of the directory.
func (r *runSession) export(step int) error {
	dir := r.exportDir(step)
	var err error
	if r.writes() {
		err = checkpoints.ReplaceDir(dir, exportTmpPrefix(filepath.Base(dir)), r.writeExport)
	}
	if r.dp != nil {
		err = r.dp.agree("the export of step "+fmt.Sprint(step), err)
	}
	if err != nil {
		return err
	}
	r.exported[step] = dir
	return nil
}

// exportDir is the export directory of step: Dir/checkpoints/step-NNNNNN.
func (r *runSession) exportDir(step int) string {
	return filepath.Join(r.cfg.Dir, "checkpoints", checkpoints.StepDirName(int64(step)))
}

// exportBest writes the policy, as export does, to Dir/checkpoints/best with best.json naming
// the evaluation: built under a temporary name and swapped in for the previous best at once
// (checkpoints.ReplaceDir), so that a crash leaves one whole best export.
func (r *runSession) exportBest(b *BestEval) error {
	if r.dp == nil {
		return r.writeBest(b)
	}
	var err error
	if r.writes() {
		err = r.writeBest(b)
	}
	return r.dp.agree("the export of the best policy", err)
}

// writeBest is exportBest's writing.
func (r *runSession) writeBest(b *BestEval) error {
	dir := filepath.Join(r.cfg.Dir, "checkpoints", BestDir)
	return checkpoints.ReplaceDir(dir, exportTmpPrefix(BestDir), func(tmp string) error {
		if err := r.writeExport(tmp); err != nil {
			return err
		}
		j, err := json.MarshalIndent(b, "", "  ")
		if err != nil {
			return err
		}
		return checkpoints.WriteFileAtomic(filepath.Join(tmp, BestFile), 0o644, func(w io.Writer) error {
			_, err := w.Write(append(j, '\n'))
			return err
		})
	})
}

// writeExport writes the policy into dir with modeldir.Write, as tools/export writes a run
// state: model.safetensors (f32), config.json, generation_config.json, model.onnx, and the
// tokenizer files of the run's tokenizer/ (Job.TokenizerFiles wrote them there when the run
// started), whose generation_config.json and tokenizer also name the special tokens the
// model's config lacks (the default job's names none; its tokenizer's eos_token is <eos>).
//
// A LoRA run exports the merged weights W + s·B·A there, and beside them its adapters as a
// PEFT adapter directory, adapter/ (modeldir.WriteAdapter), over the run's starting model.
func (r *runSession) writeExport(dir string) error {
	m := r.policy.Model
	w, err := m.MergedWeights()
	if err != nil {
		return err
	}
	_, err = modeldir.Write(dir, m.Config, w, modeldir.Options{FilesDir: r.tokenizerDir(), Safetensors: true, ONNX: true})
	if err != nil {
		return fmt.Errorf("export %s: %w", dir, err)
	}
	if m.Adapters != nil {
		ad, err := m.AdapterWeights()
		if err != nil {
			return err
		}
		if err := modeldir.WriteAdapter(filepath.Join(dir, modeldir.AdapterDir), m.Config, m.Adapters.Config, ad, r.job.BaseModel); err != nil {
			return fmt.Errorf("export %s: %w", dir, err)
		}
	}
	return nil
}

// tokenizerDir is the run directory's tokenizer/ ("" when the job has no tokenizer files).
func (r *runSession) tokenizerDir() string {
	if r.job.TokenizerFiles == nil {
		return ""
	}
	return filepath.Join(r.cfg.Dir, "tokenizer")
}
