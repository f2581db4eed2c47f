package engine

import (
	"errors"
	"strings"
	"testing"
)

// TestOpenDevice: cpu and auto without accelerators give the CPU; auto falls back to the CPU
// naming why each accelerator did not open; auto takes an accelerator that opens; an unknown
// name is an error naming the flag and the backends there are.
func TestOpenDevice(t *testing.T) {
	b, line, err := OpenDevice("cpu")
	if err != nil || b.Name() != NewCPU().Name() || line != b.Name() {
		t.Fatalf("cpu: %v %q %v", b, line, err)
	}
	b, line, err = OpenDevice("auto")
	if err != nil || !strings.HasPrefix(b.Name(), "cpu") || !strings.Contains(line, "no accelerator backend") {
		t.Fatalf("auto without accelerators: %q %v", line, err)
	}
	register := func(name string, open func() (Backend, error)) {
		RegisterBackend(name, open)
		t.Cleanup(func() {
			backendsMu.Lock()
			delete(backends, name)
			backendsMu.Unlock()
		})
	}
	register("gpu-a", func() (Backend, error) { return nil, errors.New("gpu-a: libgpu.so.1 not found (set GPU_LIB)") })
	b, line, err = OpenDevice("auto")
	if err != nil || !strings.HasPrefix(b.Name(), "cpu") || !strings.Contains(line, "libgpu.so.1 not found (set GPU_LIB)") {
		t.Fatalf("auto with a failing accelerator: %q %v", line, err)
	}
	register("gpu-a2", func() (Backend, error) { return nil, errors.New("gpu-a: libgpu.so.1 not found (set GPU_LIB)") })
	_, line, _ = OpenDevice("auto")
	if strings.Count(line, "libgpu.so.1") != 1 {
		t.Fatalf("the same reason twice: %q", line)
	}
	register("gpu-b", func() (Backend, error) { return renamed{NewCPU(), "gpu-b device"}, nil })
	b, line, err = OpenDevice("auto")
	if err != nil || b.Name() != "gpu-b device" || !strings.Contains(line, "auto: gpu-b opened") {
		t.Fatalf("auto with a working accelerator: %q %v", line, err)
	}
	if _, _, err := OpenDevice("tpu"); err == nil || !strings.Contains(err.Error(), "--device tpu") || !strings.Contains(err.Error(), "gpu-a") {
		t.Fatalf("unknown device: %v", err)
	}
}

type renamed struct {
	*CPU
	name string
}

func (r renamed) Name() string { return r.name }
