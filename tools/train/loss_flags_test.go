package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/grpo"
)

// TestLossFlags: the policy-loss, TIS and overlong flags (here from a config file in verl's
// spelling, one from the command line) reach the run's configuration; a bad --policy-loss is
// named.
func TestLossFlags(t *testing.T) {
	cfgFile := filepath.Join(t.TempDir(), "recipe.yaml")
	os.WriteFile(cfgFile, []byte("policy_loss: gspo\ngspo_clip_low: 0.0005\ngspo_clip_high: 0.0006\ntis_cap: 2\n"+
		"clip_cov_ratio: 0.001\nclip_cov_lb: 0.5\nclip_cov_ub: 4\nkl_cov_ratio: 0.01\nkl_cov_coef: 0.5\n"+
		"overlong_penalty: 1\noverlong_buffer: 8\nmask_truncated: true\n"), 0o644)
	o, fs, err := parseOptions([]string{"--model", "m", "--data", "d", "--out", "x", "--config", cfgFile, "--dual-clip", "4"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := runConfig(*o, fs)
	if err != nil {
		t.Fatal(err)
	}
	want := grpo.DefaultConfig()
	l := &want.Loss
	l.Mode, l.GSPOClipLow, l.GSPOClipHigh, l.TISCap, l.DualClip = grpo.PolicyGSPO, 0.0005, 0.0006, 2, 4
	l.ClipCovRatio, l.ClipCovLow, l.ClipCovHigh, l.KLCovRatio, l.KLCovCoef = 0.001, 0.5, 4, 0.01, 0.5
	want.OverlongPenalty, want.OverlongBuffer, want.MaskTruncated = 1, 8, true
	tr := got.Trainer
	if tr.Loss != want.Loss || tr.OverlongPenalty != 1 || tr.OverlongBuffer != 8 || !tr.MaskTruncated {
		t.Errorf("flags give loss %+v overlong %v/%v/%v, want %+v", tr.Loss, tr.OverlongPenalty, tr.OverlongBuffer, tr.MaskTruncated, want.Loss)
	}
	o, fs, err = parseOptions([]string{"--model", "m", "--data", "d", "--out", "x", "--policy-loss", "ppo"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runConfig(*o, fs); err == nil || !strings.Contains(err.Error(), `--policy-loss: grpo: unknown policy loss "ppo"`) {
		t.Errorf("--policy-loss ppo: %v", err)
	}
}
