package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/tools/internal/clilog"
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

// TestDeviceLogLine: with --device auto (the default) on a machine without a GPU the server
// logs "cpu (...), no GPU found", not the CUDA driver's library search (issue 30).
func TestDeviceLogLine(t *testing.T) {
	dir, _, _ := modelDir(t, 1, false)
	var log bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(clilog.New(&log, "rollout-server", slog.LevelInfo, false)))
	defer slog.SetDefault(old)
	if _, err := newServer(testOptions(dir)); err != nil {
		t.Fatal(err)
	}
	got := log.String()
	if strings.Contains(got, `backend="cuda (`) { // a GPU machine: the line without one is checked in engine and cuda too
		if !strings.Contains(got, `(auto: cuda opened)"`) {
			t.Errorf("log on a GPU machine:\n%s", got)
		}
		return
	}
	if want := `INFO  rollout-server: device backend="` + cpu.New().Name() + `, no GPU found"` + "\n"; !strings.Contains(got, want) || strings.Contains(got, "tried") {
		t.Errorf("log:\n%s\nwant the line %q", got, want)
	}
}
