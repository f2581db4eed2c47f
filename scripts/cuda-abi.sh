#!/usr/bin/env bash
# Writes cuda/testdata/abi.txt: the facts of the CUDA 11.8 headers (Debian bookworm non-free's
# nvidia-cuda-dev) that cuda/'s bindings for CUDA graphs, pinned memory and cuBLASLt rely on —
# prototypes (checked by the C compiler), struct layouts, enum values, versioned symbol names.
# cuda/abi_test.go compares the Go side with it, so CI needs neither the headers nor a GPU.
# The package is 774 MB; the headers are kept in a cache folder after the first run.
#   scripts/cuda-abi.sh            # rewrites cuda/testdata/abi.txt
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${PROLONG_CUDA_HEADERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prolong/cuda-headers}"
inc="$dir/root/usr/include"
if [ ! -f "$inc/cublasLt.h" ]; then
	mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" "$dir/debs" "$dir/root"
	echo "deb http://deb.debian.org/debian bookworm non-free" >"$dir/apt/sources.list"
	o=(-o "Dir::Etc::SourceList=$dir/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
		-o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache=$dir/apt/cache" -o "APT::Architecture=amd64")
	apt-get "${o[@]}" update -qq >&2
	(cd "$dir/debs" && apt-get "${o[@]}" download nvidia-cuda-dev >&2)
	dpkg-deb --fsys-tarfile "$dir"/debs/nvidia-cuda-dev_*.deb |
		tar -x -C "$dir/root" --wildcards './usr/include/*.h' './usr/include/*.hpp' './usr/include/crt/*'
	rm -f "$dir"/debs/*.deb
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
gcc -Wall -Werror -I"$inc" -o "$tmp/abi" "$root/scripts/cuda-abi/abi.c"
{
	echo "# Written by scripts/cuda-abi.sh from the headers of nvidia-cuda-dev (Debian bookworm non-free)."
	"$tmp/abi"
} >"$root/cuda/testdata/abi.txt"
echo "wrote cuda/testdata/abi.txt" >&2
