package main

import (
	"testing"
)

// TestNoModelMessage: a --model directory without a model gets the same message from the
// server as from tools/train (modelio.LoadFlag, TestFirstRunMessages there).
func TestNoModelMessage(t *testing.T) {
	dir := t.TempDir()
	_, err := newServer(testOptions(dir))
	want := "--model " + dir + ": no model here (want model.onnx, config.json with model.safetensors, or a training run's state/)"
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}
