package grpo

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/grpo/tbevents"
)

// expectedScalars are the TensorBoard scalars a metrics.jsonl record must give, written out
// field by field (not by the JSON flattening that Append uses): train/<json name> for the
// step's metrics (none at step 0), eval/<json name> for the evaluation.
func expectedScalars(r Record) map[string]float64 {
	want := map[string]float64{}
	if m := r.Metrics; m.Step > 0 {
		b := func(v bool) float64 { return float64(boolValue(v)) }
		for tag, v := range map[string]float64{
			"critic/score/mean": m.RewardMean, "critic/rewards/mean": m.ShapedRewardMean, "accuracy": m.Accuracy,
			"response_length/mean": m.ResponseLenMean, "response_length/max": float64(m.ResponseLenMax),
			"response_length/clip_ratio": m.TruncatedFrac, "groups_kept": float64(m.GroupsKept),
			"groups_dropped": float64(m.GroupsDropped), "sampling_rounds": float64(m.SamplingRounds), "loss": m.Loss,
			"actor/pg_loss": m.PGLoss, "actor/kl_loss": m.KL, "actor/entropy": m.Entropy, "actor/pg_clipfrac": m.ClipFrac,
			"actor/pg_clipfrac_clip_low": m.ClipFracLow, "actor/pg_clipfrac_clip_high": m.ClipFracHigh,
			"actor/pg_clipfrac_lower": m.DualClipFrac, "actor/ppo_kl": m.ApproxKL, "actor/grad_norm": m.GradNorm,
			"actor/lr": m.LR, "rollout_corr/kl": m.RolloutKL, "rollout_corr/k3_kl": m.RolloutK3KL,
			"training/rollout_probs_diff_mean": m.RolloutProbsDiffMean, "training/rollout_probs_diff_max": m.RolloutProbsDiffMax,
			"timing_s/gen": m.RolloutSeconds, "train_s": m.TrainSeconds, "rollout_tok_per_s": m.RolloutTokensPS,
			"train_tokens": float64(m.TrainTokens), "train_tok_per_s": m.TrainTokensPS, "optimizer_updates": float64(m.OptimizerUpdates),
			"rollout/staleness": float64(m.Staleness), "timing_s/step": m.StepSeconds,
		} {
			want["train/"+tag] = v
		}
		for tag, v := range map[string]float64{"actor/clip_cov_frac": m.ClipCovFrac, "actor/kl_cov_frac": m.KLCovFrac,
			"rollout_corr/rollout_is_mean": m.TISWeightMean, "rollout_corr/rollout_is_ratio_fraction_high": m.TISFracTruncated} {
			if v != 0 { // omitted when 0
				want["train/"+tag] = v
			}
		}
		if m.RefReset {
			want["train/ref_reset"] = b(m.RefReset)
		}
		if m.SkippedNoSignal {
			want["train/skipped_no_signal"] = b(m.SkippedNoSignal)
		}
		for k, v := range m.RewardByKind {
			want["train/reward_by_kind/"+k] = v
		}
		for k, v := range m.AccuracyByKind {
			want["train/accuracy_by_kind/"+k] = v
		}
		for tag, byKind := range map[string]map[string]float64{"actor/entropy_by_kind": m.EntropyByKind,
			"actor/kl_loss_by_kind": m.KLByKind, "response_length/mean_by_kind": m.ResponseLenByKind} {
			for k, v := range byKind {
				want["train/"+tag+"/"+k] = v
			}
		}
	}
	if e := r.Eval; e != nil {
		want["eval/accuracy"], want["eval/reward"], want["eval/mean_length"] = e.Accuracy, e.Reward, e.MeanLength
		for k, v := range e.ByKind {
			want["eval/by_kind/"+k] = v
		}
		for k, v := range e.PassAtK {
			want[fmt.Sprintf("eval/pass_at_k/%d", k)] = v
		}
		for kind, byK := range e.PassAtKByKind {
			for k, v := range byK {
				want[fmt.Sprintf("eval/pass_at_k_by_kind/%s/%d", kind, k)] = v
			}
		}
		for k, v := range e.LengthByKind {
			want["eval/length_by_kind/"+k] = v
		}
	}
	return want
}

// checkRunEvents checks a run directory's TensorBoard event files (one per session)
// against its metrics.jsonl: each session's file starts with the file version and a session
// start; with TensorBoard's rule for restarts applied (a session start drops the earlier
// events at its step and later), there is one event per metrics.jsonl line, at its step,
// holding exactly the scalars the line gives (as float32).
func checkRunEvents(t *testing.T, dir string, sessions int) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "events.out.tfevents.*"))
	sort.Strings(files) // TensorBoard's order
	if len(files) != sessions {
		t.Fatalf("%s: event files %v, want %d", dir, files, sessions)
	}
	var kept []tbevents.Event
	for _, f := range files {
		evs, err := tbevents.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) < 2 || evs[0].FileVersion != tbevents.FileVersion || !evs[1].SessionStart {
			t.Fatalf("%s starts with %+v", f, evs[:min(2, len(evs))])
		}
		start := evs[1].Step
		for len(kept) > 0 && kept[len(kept)-1].Step >= start {
			kept = kept[:len(kept)-1]
		}
		kept = append(kept, evs[2:]...)
	}
	recs, err := ReadMetrics(filepath.Join(dir, MetricsFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(kept) != len(recs) {
		t.Fatalf("%d scalar events kept, %d metrics lines", len(kept), len(recs))
	}
	for i, r := range recs {
		e, want := kept[i], expectedScalars(r)
		if e.Step != int64(r.Step) || len(e.Scalars) != len(want) {
			t.Fatalf("line %d: event at step %d with %d scalars, want step %d with %d: %+v", i+1, e.Step, len(e.Scalars), r.Step, len(want), e.Scalars)
		}
		for _, s := range e.Scalars {
			w, ok := want[s.Tag]
			if !ok || s.Value != float32(w) {
				t.Fatalf("line %d (step %d): %s = %v, want %v (listed: %v)", i+1, r.Step, s.Tag, s.Value, w, ok)
			}
		}
	}
}

// staleEvents leaves in dir the event file of a run that stopped at step 1 before any save.
func staleEvents(t *testing.T, dir string) {
	t.Helper()
	w, err := tbevents.Create(dir, 1)
	if err == nil {
		err = errors.Join(w.WriteScalars(1, []tbevents.Scalar{{Tag: "train/reward_mean", Value: 9}}), w.Close())
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestTensorBoardScalars: the scalars of hand-made lines, tags in key order; a step-0 line
// gives only its evaluation.
func TestTensorBoardScalars(t *testing.T) {
	for _, tc := range []struct{ line, want string }{
		{`{"step":3,"critic/score/mean":0.5,"actor/pg_clipfrac":0.25,"reward_by_kind":{"math":1,"code":0.25},"ref_reset":true,"eval":{"accuracy":0.125,"pass_at_k":{"1":0.125,"2":0.2}}}`,
			"train/actor/pg_clipfrac=0.25 train/critic/score/mean=0.5 train/ref_reset=1 train/reward_by_kind/code=0.25 train/reward_by_kind/math=1 eval/accuracy=0.125 eval/pass_at_k/1=0.125 eval/pass_at_k/2=0.2"},
		{`{"step":0,"reward_mean":0,"kl":0,"eval":{"accuracy":0.75}}`, "eval/accuracy=0.75"},
		{`{"step":0,"reward_mean":0}`, ""},
		{`{"step":2,"lr":2e-06,"skipped_no_signal":false}`, "train/lr=2e-06 train/skipped_no_signal=0"},
	} {
		got, err := tensorBoardScalars([]byte(tc.line))
		var s []string
		for _, x := range got {
			s = append(s, fmt.Sprintf("%s=%v", x.Tag, x.Value))
		}
		if err != nil || strings.Join(s, " ") != tc.want {
			t.Errorf("%s:\n got %v (%v)\nwant %s", tc.line, s, err, tc.want)
		}
	}
	if _, err := tensorBoardScalars([]byte("{")); err == nil {
		t.Error("a broken line accepted")
	}
}
