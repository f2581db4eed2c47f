package dist

import "fmt"

// Open makes this process's communicator from the --dist mode, the launch Detect found and the
// trainer's device ("cpu", or the name a GPU backend registered with RegisterDevice, e.g.
// "cuda"):
//   - off: a world of one; an error if the launcher started several ranks.
//   - mpi: host buffers over MPI; needs an MPI launcher (mpirun, mpiexec, srun --mpi=pmix).
//   - nccl: device buffers over NCCL on the GPU of this rank's local rank; the unique id goes
//     over MPI under an MPI launcher, else over TCP at MASTER_ADDR:MASTER_PORT.
//   - auto: off for a single process, nccl for a GPU device, mpi otherwise.
func Open(mode Mode, l Launch, device string, opts Options) (Comm, error) {
	gpu := device != "" && device != "cpu"
	if mode == "" || mode == ModeAuto {
		switch {
		case !l.Distributed():
			mode = ModeOff
		case gpu:
			mode = ModeNCCL
		default:
			mode = ModeMPI
		}
	}
	switch mode {
	case ModeOff:
		if l.Distributed() {
			return nil, fmt.Errorf("dist: --dist off, but this process is %v: every rank would train alone; use --dist auto", l)
		}
		return NewLocal(), nil
	case ModeMPI:
		if !l.MPI {
			return nil, fmt.Errorf("dist: --dist mpi needs an MPI launcher (mpirun, mpiexec, srun --mpi=pmix); this process is %v", l)
		}
		return NewMPI(l, opts)
	case ModeNCCL:
		if !gpu {
			return nil, fmt.Errorf("dist: --dist nccl moves device buffers, but the device is %q: use a GPU device or --dist mpi", device)
		}
		dev, err := OpenCommDevice(device, l.LocalRank)
		if err != nil {
			return nil, err
		}
		var host Comm
		if l.MPI {
			if host, err = NewMPI(l, opts); err != nil {
				return nil, err
			}
		}
		return NewNCCL(l, dev, host, opts)
	}
	return nil, fmt.Errorf("dist: unknown --dist mode %q", mode)
}
