package modelio

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/prolong-rl/prolong/checkpoints/hub"
)

// Resolve turns what a user gave as a model into a local path: path itself when it exists,
// else, when it reads as a Hugging Face model id (ORG/NAME or ORG/NAME@REVISION), the
// snapshot directory of that model in the Hugging Face cache, downloaded from the Hub first
// when it is not cached (see package hub). h configures the cache and the Hub; nil takes them
// from the environment (HF_HUB_CACHE, HF_HOME, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE) with the
// progress bar on stderr. A path that neither exists nor reads as an id is returned as is, so
// that the caller's error names it.
func Resolve(ctx context.Context, path string, h *hub.Options) (string, error) {
	if _, err := os.Stat(path); err == nil || !errors.Is(err, os.ErrNotExist) {
		return path, nil
	}
	if _, _, ok := hub.ParseID(path); !ok {
		return path, nil
	}
	o := hub.FromEnv(os.Stderr)
	if h != nil {
		o = *h
	}
	dir, err := hub.Download(ctx, path, o)
	if err != nil {
		return "", fmt.Errorf("model id %s: %w", path, err)
	}
	return dir, nil
}

// IsModelID reports whether path is taken for a Hugging Face model id: it does not exist here
// and reads as ORG/NAME[@REVISION].
func IsModelID(path string) bool {
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		return false
	}
	_, _, ok := hub.ParseID(path)
	return ok
}

// LoadFlag is Load of what a program's --model flag gave (a path or a model id, resolved with
// ctx), its errors naming the flag: the one way tools/train and tools/rollout-server load
// --model, so that both say the same of a directory without a model ("--model DIR: no model
// here (want model.onnx, config.json with model.safetensors, or a training run's state/)").
func LoadFlag(ctx context.Context, model string, opts Options) (*Model, error) {
	path, err := Resolve(ctx, model, opts.Hub)
	if err == nil {
		var m *Model
		if m, err = Load(path, opts); err == nil {
			return m, nil
		}
	}
	if strings.HasPrefix(err.Error(), model+": ") { // the error names the path already
		return nil, fmt.Errorf("--model %w", err)
	}
	return nil, fmt.Errorf("--model %s: %w", model, err)
}
