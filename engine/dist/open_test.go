package dist

import (
	"strings"
	"testing"
)

func TestOpen(t *testing.T) {
	single := Launch{Launcher: LaunchNone, Size: 1}
	two := Launch{Launcher: LaunchTorchrun, Rank: 1, Size: 2, MasterAddr: "h", MasterPort: 1, Source: "RANK/WORLD_SIZE"}
	tests := []struct {
		name   string
		mode   Mode
		l      Launch
		device string
		want   string // backend, or an error substring
	}{
		{"auto, one process", ModeAuto, single, "cpu", "local"},
		{"off, one process", ModeOff, single, "cuda", "local"},
		{"off under a launcher of two", ModeOff, two, "cpu", "--dist off, but this process is rank 1 of 2 (local rank 0) by torchrun (RANK/WORLD_SIZE)"},
		{"mpi without an MPI launcher", ModeMPI, two, "cpu", "--dist mpi needs an MPI launcher"},
		{"auto, CPU job under torchrun", ModeAuto, two, "cpu", "--dist mpi needs an MPI launcher"},
		{"nccl on the CPU", ModeNCCL, two, "cpu", `the device is "cpu"`},
		{"auto, GPU job, no GPU backend registered", ModeAuto, two, "cuda", `no device backend "cuda" registered`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Open(tc.mode, tc.l, tc.device, Options{})
			switch {
			case err != nil && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %v, want %q", err, tc.want)
			case err == nil && c.Backend() != tc.want:
				t.Fatalf("backend %s, want %s", c.Backend(), tc.want)
			}
		})
	}
}

type nopDev struct{ hostDev }

func TestRegisterDevice(t *testing.T) {
	RegisterDevice("test-gpu", func(localRank int) (Device, error) { return &nopDev{}, nil })
	d, err := OpenCommDevice("test-gpu", 3)
	if err != nil || d == nil {
		t.Fatalf("OpenCommDevice: %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("a second RegisterDevice of one name did not panic")
		}
	}()
	RegisterDevice("test-gpu", func(int) (Device, error) { return nil, nil })
}
