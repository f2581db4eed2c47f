package engine

import (
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
)

// stubBackend is a Backend that only has a name: OpenDevice's choice is all these tests look at.
type stubBackend struct {
	Backend
	name string
}

func (s stubBackend) Name() string { return s.name }

// withRegistry runs the test against a registry holding only the given backends and restores
// the real one (which holds engine/cpu's "cpu" when the external tests import it) afterwards.
func withRegistry(t *testing.T, reg map[string]func(DeviceOptions) (Backend, error)) {
	backendsMu.Lock()
	saved := backends
	backends = maps.Clone(reg)
	backendsMu.Unlock()
	t.Cleanup(func() {
		backendsMu.Lock()
		backends = saved
		backendsMu.Unlock()
	})
}

// TestOpenDevice: cpu and auto without accelerators give the registered CPU; auto falls back to
// the CPU naming why each accelerator did not open; auto takes an accelerator that opens; an
// unknown name is an error naming the flag and the backends there are.
func TestOpenDevice(t *testing.T) {
	cpu := stubBackend{name: "cpu (stub)"}
	withRegistry(t, map[string]func(DeviceOptions) (Backend, error){"cpu": func(DeviceOptions) (Backend, error) { return cpu, nil }})
	b, line, err := openDev("cpu")
	if err != nil || b != Backend(cpu) || line != "cpu (stub)" {
		t.Fatalf("cpu: %v %q %v", b, line, err)
	}
	if b, line, err = openDev(""); err != nil || b != Backend(cpu) || line != "cpu (stub)" {
		t.Fatalf("empty name: %v %q %v", b, line, err)
	}
	b, line, err = openDev("auto")
	if err != nil || b != Backend(cpu) || line != "cpu (stub) (auto: this program has no accelerator backend built in)" {
		t.Fatalf("auto without accelerators: %q %v", line, err)
	}
	RegisterBackend("gpu-a", func(DeviceOptions) (Backend, error) {
		return nil, errors.New("gpu-a: libgpu.so.1 not found (set GPU_LIB)")
	})
	b, line, err = openDev("auto")
	if err != nil || b != Backend(cpu) || line != "cpu (stub) (auto: gpu-a: libgpu.so.1 not found (set GPU_LIB))" {
		t.Fatalf("auto with a failing accelerator: %q %v", line, err)
	}
	RegisterBackend("gpu-a2", func(DeviceOptions) (Backend, error) {
		return nil, errors.New("gpu-a: libgpu.so.1 not found (set GPU_LIB)")
	})
	_, line, _ = openDev("auto")
	if strings.Count(line, "libgpu.so.1") != 1 {
		t.Fatalf("the same reason twice: %q", line)
	}
	RegisterBackend("gpu-b", func(DeviceOptions) (Backend, error) { return stubBackend{name: "gpu-b device"}, nil })
	b, line, err = openDev("auto")
	if err != nil || b.Name() != "gpu-b device" || !strings.Contains(line, "auto: gpu-b opened") {
		t.Fatalf("auto with a working accelerator: %q %v", line, err)
	}
	if _, _, err := openDev("tpu"); err == nil || !strings.Contains(err.Error(), "--device tpu") || !strings.Contains(err.Error(), "gpu-a") {
		t.Fatalf("unknown device: %v", err)
	}
}

// TestOpenDeviceNoGPU: auto on a machine without the accelerator (its open fails with
// ErrNoDevice) says so in a few words, not with the library search of the error (issue 30: it
// read as a failure on every CPU run); naming the backend keeps that search in its error. An
// accelerator that is there but fails is still reported, alone.
func TestOpenDeviceNoGPU(t *testing.T) {
	cpu := stubBackend{name: "cpu (stub)"}
	search := "gpu-a: the driver not found (tried libgpu.so.1, libgpu.so, also under /usr/lib64; set GPU_LIB to its path)"
	withRegistry(t, map[string]func(DeviceOptions) (Backend, error){
		"cpu":    func(DeviceOptions) (Backend, error) { return cpu, nil },
		"gpu-a":  func(DeviceOptions) (Backend, error) { return nil, fmt.Errorf("%s: %w", search, ErrNoDevice) },
		"gpu-a2": func(DeviceOptions) (Backend, error) { return nil, fmt.Errorf("%s: %w", search, ErrNoDevice) },
	})
	b, line, err := openDev("auto")
	if err != nil || b != Backend(cpu) || line != "cpu (stub), no GPU found" {
		t.Fatalf("auto without a GPU: %q %v", line, err)
	}
	if _, _, err := openDev("gpu-a"); err == nil || err.Error() != "--device gpu-a: "+search+": no device" {
		t.Fatalf("--device gpu-a without a GPU: %v", err)
	}
	RegisterBackend("gpu-b", func(DeviceOptions) (Backend, error) {
		return nil, errors.New("gpu-b: cuInit: CUDA_ERROR_INSUFFICIENT_DRIVER")
	})
	_, line, _ = openDev("auto")
	if line != "cpu (stub) (auto: gpu-b: cuInit: CUDA_ERROR_INSUFFICIENT_DRIVER)" {
		t.Fatalf("auto with a GPU that fails: %q", line)
	}
}

// TestOpenDeviceWithoutCPU: a program that did not import engine/cpu gets an error that says
// so, for cpu and for auto when no accelerator opens, rather than a silent failure.
func TestOpenDeviceWithoutCPU(t *testing.T) {
	withRegistry(t, map[string]func(DeviceOptions) (Backend, error){
		"gpu-a": func(DeviceOptions) (Backend, error) { return nil, errors.New("gpu-a: no device") },
	})
	for _, name := range []string{"cpu", "auto"} {
		_, _, err := openDev(name)
		if err == nil || !strings.Contains(err.Error(), "--device "+name) || !strings.Contains(err.Error(), cpuPackage) {
			t.Errorf("%s without engine/cpu: %v", name, err)
		}
	}
	if _, _, err := openDev("auto"); err == nil || !strings.Contains(err.Error(), "gpu-a: no device") {
		t.Errorf("auto without engine/cpu does not say why gpu-a failed: %v", err)
	}
}

// openDev is OpenDevice with default options, as (backend, chosen line, error).
func openDev(name string) (Backend, string, error) {
	d, err := OpenDevice(name, DeviceOptions{})
	if err != nil {
		return nil, "", err
	}
	return d.Backend, d.Chosen, nil
}
