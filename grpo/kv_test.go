package grpo

import (
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestKVKnobs: --kv-dtype and --kv-memory default to auto (the engine's choice) and give the
// rollout generator its options; values that do not parse are reported naming the flag.
func TestKVKnobs(t *testing.T) {
	c := DefaultRunConfig()
	if o, err := c.KV.GeneratorOptions(); err != nil || o.KVDType != engine.KVAuto || o.KVBudgetBytes != 0 {
		t.Fatalf("defaults: %+v, %v", o, err)
	}
	c.KV = KVConfig{DType: "bf16", Memory: "256MiB"}
	if o, err := c.KV.GeneratorOptions(); err != nil || o.KVDType != engine.KVBF16 || o.KVBudgetBytes != 256<<20 {
		t.Fatalf("bf16, 256MiB: %+v, %v", o, err)
	}
	for _, kv := range []KVConfig{{DType: "half", Memory: "auto"}, {DType: "auto", Memory: "-1GiB"}} {
		c.KV = kv
		err := c.CheckKnobs()
		want := "--kv-dtype"
		if kv.DType == "auto" {
			want = "--kv-memory"
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: CheckKnobs %v, want an error naming %s", kv, err, want)
		}
	}
}
