#!/usr/bin/env bash
# Sets up what the tests compare against, beyond Go, and prints the environment that points the
# tests at it, as `export` lines for eval:
#
#   eval "$(scripts/test-env.sh)"
#
# - /usr/bin/python3 with Debian's numpy, torch, protobuf, crc32c, jinja2 and protoc: the code
#   sandbox's programs, PyTorch reading the checkpoints Go writes, TensorBoard's event format,
#   chat templates rendered by Jinja2 (Debian packages; needs root or sudo);
# - ONNX Runtime from the npm package onnxruntime-node (scripts/setup-ort.sh; cgo, hence gcc);
# - NVIDIA's run-time compiler from Debian's non-free libnvrtc11.2 (scripts/setup-nvrtc.sh; no
#   GPU needed: the cuda package compiles every kernel with it);
# - the reference tokenizers and the official OpenAI client from npm (scripts/setup-tokenizer.sh,
#   scripts/setup-openai.sh), and curl;
# - Open MPI and MPICH from Debian: engine/dist's collectives run under mpirun with each;
# - Slurm and munge from Debian (slurm-wlm, munge): the trainer's sbatch script runs on a
#   one-node cluster that its test starts;
# - GNU binutils (as, objcopy): the CPU kernels' byte-encoded instructions are assembled and
#   compared; on a CPU with AMX, PROLONG_REQUIRE_AMX=1 makes the AMX hardware check mandatory.
#
# Each reference it sets up gets its PROLONG_REQUIRE_* variable, so that a test needing it fails
# rather than skips. What it cannot set up it names on stderr, and the tests that need it skip
# (scripts/test.sh counts them at the end). With PROLONG_TEST_STRICT=1 (.ci/run) a reference
# that cannot be set up is an error. Idempotent: a second run only checks and prints.
set -uo pipefail
cd "$(dirname "$0")/.."
strict=${PROLONG_TEST_STRICT:-0}
missing=()
say() { echo "test-env: $*" >&2; }

# apt installs Debian packages as root, or through sudo.
apt() {
	local sudo=""
	if [ "$(id -u)" != 0 ]; then
		command -v sudo >/dev/null || { say "cannot install $* (not root, no sudo)"; return 1; }
		sudo="sudo"
	fi
	if [ -z "${apt_updated:-}" ]; then
		$sudo apt-get update -qq >&2 || return 1
		apt_updated=1
	fi
	say "installing $*"
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1
}

py_ok() { /usr/bin/python3 -c "import numpy, torch, google.protobuf, crc32c, jinja2" 2>/dev/null && command -v protoc >/dev/null; }
if ! py_ok; then
	apt python3 python3-numpy python3-torch python3-protobuf python3-crc32c python3-jinja2 protobuf-compiler
fi
if py_ok; then
	echo "export PROLONG_REQUIRE_PYTHON=1"
else
	missing+=("python3 with numpy, torch, protobuf, crc32c, jinja2 and protoc (apt-get install python3-numpy python3-torch python3-protobuf python3-crc32c python3-jinja2 protobuf-compiler)")
fi

command -v npm >/dev/null || apt npm
command -v gcc >/dev/null || apt gcc libc6-dev
{ command -v as >/dev/null && command -v objcopy >/dev/null; } || apt binutils
command -v curl >/dev/null || apt curl

if lib=$(scripts/setup-ort.sh) && command -v gcc >/dev/null; then
	echo "export ONNXRUNTIME_LIB=$lib PROLONG_REQUIRE_ORT=1"
else
	missing+=("ONNX Runtime (scripts/setup-ort.sh needs npm; its tests need gcc for cgo)")
fi
if dir=$(scripts/setup-nvrtc.sh); then
	echo "export PROLONG_NVRTC=$dir/libnvrtc.so.11.2 PROLONG_REQUIRE_NVRTC=1"
else
	missing+=("NVRTC (scripts/setup-nvrtc.sh: Debian's non-free libnvrtc11.2)")
fi
tok=$(scripts/setup-tokenizer.sh) && oai=$(scripts/setup-openai.sh)
if [ -n "${tok:-}" ] && [ -n "${oai:-}" ] && command -v node >/dev/null && command -v curl >/dev/null; then
	echo "export PROLONG_TOKENIZER_DIR=$tok PROLONG_OPENAI_DIR=$oai PROLONG_REQUIRE_NODE=1"
else
	missing+=("node with the reference tokenizers and the OpenAI client (scripts/setup-tokenizer.sh, scripts/setup-openai.sh), and curl")
fi

# Open MPI and MPICH (Hydra): engine/dist runs its test program under mpirun with each.
if ! command -v mpirun.openmpi >/dev/null || ! command -v mpirun.mpich >/dev/null; then
	apt openmpi-bin libopenmpi-dev mpich
fi
if command -v mpirun.openmpi >/dev/null; then
	echo "export PROLONG_REQUIRE_MPI=1"
else
	missing+=("Open MPI (apt-get install openmpi-bin libopenmpi-dev)")
fi
if command -v mpirun.mpich >/dev/null; then
	echo "export PROLONG_REQUIRE_MPICH=1"
else
	missing+=("MPICH (apt-get install mpich)")
fi

# Slurm (Debian's slurm-wlm 22.05: slurmctld, slurmd, the client commands and the PMIx plugin)
# and munge: tools/train/disttest/slurmtest starts its own one-node cluster (its own munged,
# slurmctld and slurmd, as root) and submits docs/distributed.md's sbatch script to it. Its
# daemons start only as root.
slurm_ok() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; }
slurm_ok || apt slurm-wlm munge
if slurm_ok && [ "$(id -u)" = 0 ]; then
	echo "export PROLONG_REQUIRE_SLURM=1"
else
	missing+=("Slurm and munge, run as root (apt-get install slurm-wlm munge)")
fi

# GNU binutils: engine/internal/kern assembles its byte-encoded instructions (AVX512_BF16, AMX)
# with as and compares the bytes.
if command -v as >/dev/null && command -v objcopy >/dev/null; then
	echo "export PROLONG_REQUIRE_BINUTILS=1"
else
	missing+=("GNU binutils (apt-get install binutils)")
fi
# A CPU with AMX (amx_tile, amx_bf16): the kern tests check the AMX kernel against its
# emulation bit for bit, and fail rather than skip if the OS does not let the process use AMX.
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null && grep -qw amx_bf16 /proc/cpuinfo; then
	echo "export PROLONG_REQUIRE_AMX=1"
fi

for m in "${missing[@]}"; do
	say "not set up: $m; the tests that need it will skip"
done
if [ "${#missing[@]}" -gt 0 ] && [ "$strict" = 1 ]; then
	say "PROLONG_TEST_STRICT=1: every reference must be set up"
	exit 1
fi
exit 0
