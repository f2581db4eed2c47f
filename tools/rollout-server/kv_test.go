package main

import (
	"io"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestKVFlags: --kv-dtype and --kv-memory become the generator's options (auto: 0 bytes, the
// engine's default budget; the deprecated --kv-cache-mib still sets a budget), and a bad value
// fails naming its flag.
func TestKVFlags(t *testing.T) {
	tests := []struct {
		args    []string
		dt      engine.KVDType
		bytes   int64
		wantErr string
	}{
		{nil, engine.KVAuto, 0, ""},
		{[]string{"--kv-dtype", "bf16", "--kv-memory", "1GiB"}, engine.KVBF16, 1 << 30, ""},
		{[]string{"--kv-dtype", "fp32", "--kv-memory", "512MiB"}, engine.KVF32, 512 << 20, ""},
		{[]string{"--kv-memory", "1.5GB"}, engine.KVAuto, 1500000000, ""},
		{[]string{"--kv-cache-mib", "64"}, engine.KVAuto, 64 << 20, ""},
		{[]string{"--kv-dtype", "fp16"}, 0, 0, "--kv-dtype"},
		{[]string{"--kv-memory", "lots"}, 0, 0, "--kv-memory"},
		{[]string{"--kv-memory", "0"}, 0, 0, "--kv-memory"},
	}
	for _, tc := range tests {
		o, err := parseArgs(append([]string{"--model", "m"}, tc.args...), io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		g, err := kvOptions(o)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: err %v, want one naming %s", tc.args, err, tc.wantErr)
			}
			continue
		}
		if err != nil || g.KVDType != tc.dt || g.KVBudgetBytes != tc.bytes {
			t.Errorf("%v: %+v, %v; want dtype %v, %d bytes", tc.args, g, err, tc.dt, tc.bytes)
		}
	}
}
