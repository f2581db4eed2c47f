package dist

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Launcher names what started this process.
type Launcher string

// The launchers Detect knows.
const (
	LaunchNone     Launcher = "none"     // a plain process: rank 0 of 1
	LaunchOpenMPI  Launcher = "mpirun"   // Open MPI's mpirun/mpiexec (OMPI_COMM_WORLD_*)
	LaunchHydra    Launcher = "hydra"    // MPICH's mpiexec/Hydra (PMI_RANK, PMI_SIZE)
	LaunchPMIx     Launcher = "pmix"     // a PMIx launcher without Open MPI's variables (PMIX_RANK)
	LaunchSlurm    Launcher = "srun"     // Slurm's srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID)
	LaunchTorchrun Launcher = "torchrun" // torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
)

// Launch is what the launcher told this process.
type Launch struct {
	Launcher  Launcher
	Rank      int
	Size      int // 0 where the launcher does not say (PMIx alone): MPI knows it
	LocalRank int // this rank's index on its node: the GPU it takes
	// MPI is true when an MPI runtime started the process, so MPI_Init joins the job's world
	// (mpirun, Hydra, PMIx, srun with --mpi=pmix) rather than making a world of one.
	MPI bool
	// MasterAddr and MasterPort (from MASTER_ADDR, MASTER_PORT; empty and 0 when unset) are
	// where rank 0 serves the NCCL unique id when MPI did not start the job.
	MasterAddr string
	MasterPort int
	// Source names the variables Rank, Size and LocalRank came from, for messages.
	Source string
}

// Distributed reports whether the job has more than one rank (or an MPI launcher that knows).
func (l Launch) Distributed() bool { return l.Size > 1 || (l.Size == 0 && l.MPI) }

// String says who this process is and which variables said so, for messages.
func (l Launch) String() string {
	if l.Launcher == LaunchNone {
		return "a single process (no launcher variables)"
	}
	size := strconv.Itoa(l.Size)
	if l.Size == 0 {
		size = "?"
	}
	return fmt.Sprintf("rank %d of %s (local rank %d) by %s (%s)", l.Rank, size, l.LocalRank, l.Launcher, l.Source)
}

// DetectEnv is Detect over the process environment.
func DetectEnv() (Launch, error) { return Detect(os.Getenv) }

// Detect reads the launcher's variables through getenv. The first family present wins, in this
// order: Open MPI (OMPI_COMM_WORLD_RANK), PMIx (PMIX_RANK), MPICH Hydra (PMI_RANK), Slurm srun
// (SLURM_PROCID with SLURM_STEP_ID, which srun sets and an sbatch script's shell does not),
// torchrun (RANK). MPI's variables come before Slurm's because mpirun inside an allocation
// inherits the batch shell's SLURM_PROCID=0. Where RANK / WORLD_SIZE are also set they must
// agree. An error names the variable that is malformed or inconsistent.
func Detect(getenv func(string) string) (Launch, error) {
	e := env{getenv}
	var l Launch
	var err error
	switch {
	case e.has("OMPI_COMM_WORLD_RANK"):
		l, err = e.family(LaunchOpenMPI, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", true)
		l.MPI = true
	case e.has("PMIX_RANK"):
		// srun --mpi=pmix sets PMIX_RANK and Slurm's variables; a bare PMIx launcher only the rank.
		if e.srunTask() {
			l, err = e.slurmWith("PMIX_RANK")
		} else {
			l, err = e.family(LaunchPMIx, "PMIX_RANK", "", "", "", false)
		}
		l.MPI = true
	case e.has("PMI_RANK"):
		// srun --mpi=pmi2 sets PMI_RANK but no local rank (MPICH's mpiexec sets MPI_LOCALRANKID):
		// under srun, Slurm's variables say which GPU of the node is the rank's.
		if e.srunTask() && !e.has("MPI_LOCALRANKID") {
			l, err = e.slurmWith("PMI_RANK")
		} else {
			l, err = e.family(LaunchHydra, "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", true)
		}
		l.MPI = true
	case e.has("SLURM_PROCID") && e.has("SLURM_STEP_ID"):
		l, err = e.slurm()
	case e.has("RANK") || e.has("WORLD_SIZE"):
		l, err = e.family(LaunchTorchrun, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", true)
	default:
		l = Launch{Launcher: LaunchNone, Size: 1}
	}
	if err != nil {
		return Launch{}, err
	}
	if l.Launcher != LaunchTorchrun && l.Launcher != LaunchNone {
		if err := e.agree(l, "RANK", l.Rank); err != nil {
			return Launch{}, err
		}
		if l.Size > 0 {
			if err := e.agree(l, "WORLD_SIZE", l.Size); err != nil {
				return Launch{}, err
			}
		}
	}
	if l.MasterAddr = strings.TrimSpace(getenv("MASTER_ADDR")); l.MasterAddr != "" || e.has("MASTER_PORT") {
		if l.MasterAddr == "" {
			return Launch{}, fmt.Errorf("dist: MASTER_PORT is set but MASTER_ADDR is not")
		}
		p, err := e.int("MASTER_PORT", -1)
		if err != nil {
			return Launch{}, err
		}
		if p < 1 || p > 65535 {
			return Launch{}, fmt.Errorf("dist: MASTER_PORT=%q: want a port 1..65535 (MASTER_ADDR=%s needs it)", getenv("MASTER_PORT"), l.MasterAddr)
		}
		l.MasterPort = p
	}
	if l.Launcher == LaunchTorchrun && l.Size > 1 && l.MasterAddr == "" {
		return Launch{}, fmt.Errorf("dist: RANK/WORLD_SIZE are set (rank %d of %d) but MASTER_ADDR and MASTER_PORT are not: rank 0's address is needed", l.Rank, l.Size)
	}
	return l, nil
}

type env struct{ get func(string) string }

func (e env) has(k string) bool { return strings.TrimSpace(e.get(k)) != "" }

// int parses variable k; missing is def (-1: required).
func (e env) int(k string, def int) (int, error) {
	s := strings.TrimSpace(e.get(k))
	if s == "" {
		if def < 0 {
			return 0, fmt.Errorf("dist: %s is not set", k)
		}
		return def, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("dist: %s=%q is not an integer", k, s)
	}
	if v < 0 {
		return 0, fmt.Errorf("dist: %s=%d is negative", k, v)
	}
	return v, nil
}

// family reads rank, size, local rank and local size variables ("" = not given by this
// launcher) and checks them against each other.
func (e env) family(name Launcher, rankK, sizeK, localK, localSizeK string, needSize bool) (Launch, error) {
	l := Launch{Launcher: name, Source: rankK}
	var err error
	if l.Rank, err = e.int(rankK, -1); err != nil {
		return l, err
	}
	if sizeK != "" {
		def := -1
		if !needSize {
			def = 0
		}
		if l.Size, err = e.int(sizeK, def); err != nil {
			return l, fmt.Errorf("%w (%s=%d is set)", err, rankK, l.Rank)
		}
		if l.Size == 0 {
			return l, fmt.Errorf("dist: %s=0: a job has at least one rank", sizeK)
		}
		if l.Rank >= l.Size {
			return l, fmt.Errorf("dist: %s=%d is not below %s=%d", rankK, l.Rank, sizeK, l.Size)
		}
		l.Source += "/" + sizeK
	}
	if localK != "" && e.has(localK) {
		if l.LocalRank, err = e.int(localK, 0); err != nil {
			return l, err
		}
		if l.Size > 0 && l.LocalRank >= l.Size {
			return l, fmt.Errorf("dist: %s=%d is not below %s=%d", localK, l.LocalRank, sizeK, l.Size)
		}
		if localSizeK != "" && e.has(localSizeK) {
			ls, err := e.int(localSizeK, 0)
			if err != nil {
				return l, err
			}
			if l.LocalRank >= ls {
				return l, fmt.Errorf("dist: %s=%d is not below %s=%d", localK, l.LocalRank, localSizeK, ls)
			}
			if l.Size > 0 && ls > l.Size {
				return l, fmt.Errorf("dist: %s=%d exceeds %s=%d", localSizeK, ls, sizeK, l.Size)
			}
		}
		l.Source += "/" + localK
	}
	return l, nil
}

// srunTask says whether the process is a task srun started (not an sbatch script's shell).
func (e env) srunTask() bool { return e.has("SLURM_PROCID") && e.has("SLURM_STEP_ID") }

// slurmWith is slurm for a task whose MPI library also got its rank from srun's PMI plug-in
// (PMIX_RANK, PMI_RANK), which must agree with SLURM_PROCID.
func (e env) slurmWith(rankK string) (Launch, error) {
	l, err := e.slurm()
	if err != nil {
		return l, err
	}
	pr, err := e.int(rankK, 0)
	if err == nil && pr != l.Rank {
		err = fmt.Errorf("dist: %s=%d disagrees with SLURM_PROCID=%d", rankK, pr, l.Rank)
	}
	return l, err
}

func (e env) slurm() (Launch, error) {
	sizeK := "SLURM_NTASKS"
	if e.has("SLURM_STEP_NUM_TASKS") {
		sizeK = "SLURM_STEP_NUM_TASKS"
	}
	return e.family(LaunchSlurm, "SLURM_PROCID", sizeK, "SLURM_LOCALID", "", true)
}

// agree checks that torchrun's variable k, where set, says v too.
func (e env) agree(l Launch, k string, v int) error {
	if !e.has(k) {
		return nil
	}
	got, err := e.int(k, 0)
	if err != nil {
		return err
	}
	if got != v {
		return fmt.Errorf("dist: %s=%d disagrees with %s (%s: %d)", k, got, l.Launcher, l.Source, v)
	}
	return nil
}

// Mode is the --dist choice: how a job talks to its other ranks.
type Mode string

// The modes.
const (
	ModeAuto Mode = "auto" // off for a single process, mpi under an MPI launcher, nccl for GPU jobs
	ModeOff  Mode = "off"  // a single process; an error if a launcher started several
	ModeMPI  Mode = "mpi"  // host buffers over MPI (needs mpirun, Hydra, or srun --mpi=pmix)
	ModeNCCL Mode = "nccl" // device buffers over NCCL (needs a GPU backend registered)
)

// ParseMode parses auto, off, mpi or nccl.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case ModeAuto, ModeOff, ModeMPI, ModeNCCL:
		return m, nil
	}
	return "", fmt.Errorf("dist: --dist %q: want auto, off, mpi or nccl", s)
}

// String is the mode's name.
func (m Mode) String() string {
	if m == "" {
		return string(ModeAuto)
	}
	return string(m)
}

// Set parses s into m (flag.Value, pflag.Value).
func (m *Mode) Set(s string) error {
	v, err := ParseMode(s)
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Type names the flag's value for pflag's help.
func (*Mode) Type() string { return "auto|off|mpi|nccl" }
