package dist

import (
	"strings"
	"testing"
)

func TestDetect(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want Launch
		err  string // substring of the error; "" = no error
	}{
		{"plain process", map[string]string{"HOME": "/root"}, Launch{Launcher: LaunchNone, Size: 1}, ""},
		{"Open MPI mpirun", map[string]string{"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
			Launch{Launcher: LaunchOpenMPI, Rank: 2, Size: 4, LocalRank: 0, MPI: true}, ""},
		{"mpirun inside an sbatch allocation: MPI's variables win over the batch shell's SLURM_PROCID=0",
			map[string]string{"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"},
			Launch{Launcher: LaunchOpenMPI, Rank: 1, Size: 2, LocalRank: 1, MPI: true}, ""},
		{"MPICH Hydra", map[string]string{"PMI_RANK": "1", "PMI_SIZE": "3", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "3"},
			Launch{Launcher: LaunchHydra, Rank: 1, Size: 3, LocalRank: 1, MPI: true}, ""},
		{"PMIx alone: MPI knows the size", map[string]string{"PMIX_RANK": "5"},
			Launch{Launcher: LaunchPMIx, Rank: 5, MPI: true}, ""},
		{"srun --mpi=pmix", map[string]string{"PMIX_RANK": "3", "SLURM_PROCID": "3", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1"},
			Launch{Launcher: LaunchSlurm, Rank: 3, Size: 4, LocalRank: 1, MPI: true}, ""},
		{"srun --mpi=pmi2: PMI_RANK without a local rank, Slurm's gives it", map[string]string{"PMI_RANK": "3", "PMI_SIZE": "4", "SLURM_PROCID": "3", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"},
			Launch{Launcher: LaunchSlurm, Rank: 3, Size: 4, LocalRank: 1, MPI: true}, ""},
		{"MPICH's mpiexec inside an srun step keeps its own local rank", map[string]string{"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", "SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "1"},
			Launch{Launcher: LaunchHydra, Rank: 2, Size: 4, LocalRank: 0, MPI: true}, ""},
		{"srun", map[string]string{"SLURM_PROCID": "1", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1", "MASTER_ADDR": "node1", "MASTER_PORT": "29500"},
			Launch{Launcher: LaunchSlurm, Rank: 1, Size: 2, LocalRank: 1, MasterAddr: "node1", MasterPort: 29500}, ""},
		{"an sbatch script's own shell is not an srun task", map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "7"},
			Launch{Launcher: LaunchNone, Size: 1}, ""},
		{"torchrun", map[string]string{"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"},
			Launch{Launcher: LaunchTorchrun, Rank: 3, Size: 4, LocalRank: 1, MasterAddr: "10.0.0.1", MasterPort: 29500}, ""},
		{"torchrun world of one needs no master", map[string]string{"RANK": "0", "WORLD_SIZE": "1"},
			Launch{Launcher: LaunchTorchrun, Rank: 0, Size: 1}, ""},

		{"RANK >= WORLD_SIZE", map[string]string{"RANK": "4", "WORLD_SIZE": "4", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, Launch{}, "RANK=4 is not below WORLD_SIZE=4"},
		{"RANK malformed", map[string]string{"RANK": "one", "WORLD_SIZE": "4"}, Launch{}, `RANK="one" is not an integer`},
		{"WORLD_SIZE missing", map[string]string{"RANK": "0"}, Launch{}, "WORLD_SIZE is not set"},
		{"RANK missing", map[string]string{"WORLD_SIZE": "2"}, Launch{}, "RANK is not set"},
		{"WORLD_SIZE zero", map[string]string{"RANK": "0", "WORLD_SIZE": "0"}, Launch{}, "WORLD_SIZE=0"},
		{"negative rank", map[string]string{"OMPI_COMM_WORLD_RANK": "-1", "OMPI_COMM_WORLD_SIZE": "2"}, Launch{}, "OMPI_COMM_WORLD_RANK=-1 is negative"},
		{"LOCAL_RANK >= LOCAL_WORLD_SIZE", map[string]string{"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, Launch{}, "LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2"},
		{"local size larger than the world", map[string]string{"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "3"}, Launch{}, "OMPI_COMM_WORLD_LOCAL_SIZE=3 exceeds OMPI_COMM_WORLD_SIZE=2"},
		{"SLURM_LOCALID >= SLURM_NTASKS", map[string]string{"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "2"}, Launch{}, "SLURM_LOCALID=2 is not below SLURM_NTASKS=2"},
		{"PMI_SIZE malformed", map[string]string{"PMI_RANK": "0", "PMI_SIZE": "2x"}, Launch{}, `PMI_SIZE="2x" is not an integer`},
		{"torchrun RANK disagrees with mpirun", map[string]string{"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "RANK": "0"}, Launch{}, "RANK=0 disagrees with mpirun (OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE: 1)"},
		{"WORLD_SIZE disagrees with srun", map[string]string{"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "WORLD_SIZE": "4"}, Launch{}, "WORLD_SIZE=4 disagrees with srun"},
		{"PMIX_RANK disagrees with SLURM_PROCID", map[string]string{"PMIX_RANK": "1", "SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2"}, Launch{}, "PMIX_RANK=1 disagrees with SLURM_PROCID=0"},
		{"PMI_RANK disagrees with SLURM_PROCID", map[string]string{"PMI_RANK": "1", "SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2"}, Launch{}, "PMI_RANK=1 disagrees with SLURM_PROCID=0"},
		{"torchrun without MASTER_ADDR", map[string]string{"RANK": "0", "WORLD_SIZE": "2"}, Launch{}, "MASTER_ADDR and MASTER_PORT are not"},
		{"MASTER_PORT without MASTER_ADDR", map[string]string{"MASTER_PORT": "29500"}, Launch{}, "MASTER_PORT is set but MASTER_ADDR is not"},
		{"MASTER_PORT out of range", map[string]string{"MASTER_ADDR": "h", "MASTER_PORT": "70000"}, Launch{}, `MASTER_PORT="70000": want a port 1..65535`},
		{"MASTER_ADDR without MASTER_PORT", map[string]string{"MASTER_ADDR": "h"}, Launch{}, "MASTER_PORT is not set"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Detect(func(k string) string { return tc.env[k] })
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.Source = ""
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseMode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Mode
		err  bool
	}{{"auto", ModeAuto, false}, {"off", ModeOff, false}, {"MPI", ModeMPI, false}, {" nccl ", ModeNCCL, false}, {"gloo", "", true}, {"", "", true}} {
		var m Mode
		err := m.Set(tc.in)
		if (err != nil) != tc.err || m != tc.want {
			t.Errorf("Set(%q) = %q, %v; want %q (error %v)", tc.in, m, err, tc.want, tc.err)
		}
		if err != nil && !strings.Contains(err.Error(), "want auto, off, mpi or nccl") {
			t.Errorf("Set(%q): error %q does not list the choices", tc.in, err)
		}
	}
}
