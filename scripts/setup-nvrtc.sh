#!/usr/bin/env bash
# Fetches NVIDIA's run-time compiler, NVRTC, from Debian bookworm's non-free component
# (libnvrtc11.2 = NVRTC 11.8 and its builtins library) into a cache folder, without touching the
# system's apt sources, and prints the folder holding libnvrtc.so.* on stdout.
#
# NVRTC needs no GPU: package cuda's tests compile every kernel with it for sm_80 and sm_90 on a
# CPU-only machine (CI). Use it as
#   PROLONG_NVRTC="$(scripts/setup-nvrtc.sh)/libnvrtc.so.11.2" go test ./cuda/
set -euo pipefail
dir="${PROLONG_NVRTC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prolong/nvrtc}"
lib="$dir/root/usr/lib/x86_64-linux-gnu"
if ls "$lib"/libnvrtc.so.11.* >/dev/null 2>&1 && ls "$lib"/libnvrtc-builtins.so.11.* >/dev/null 2>&1; then
	echo "$lib"
	exit 0
fi
mkdir -p "$dir/apt/lists/partial" "$dir/debs" "$dir/root"
echo "deb http://deb.debian.org/debian bookworm non-free" >"$dir/apt/sources.list"
o=(-o "Dir::Etc::SourceList=$dir/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
	-o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache=$dir/apt/cache" -o "APT::Architecture=amd64")
mkdir -p "$dir/apt/cache/archives/partial"
apt-get "${o[@]}" update -qq >&2
(cd "$dir/debs" && apt-get "${o[@]}" download libnvrtc11.2 libnvrtc-builtins11.8 >&2)
for f in "$dir"/debs/*.deb; do dpkg -x "$f" "$dir/root"; done
ls "$lib"/libnvrtc.so.11.* >/dev/null
echo "$lib"
