#!/bin/sh
# Fetches ONNX Runtime's CPU shared library for the onnx package's tests, from the npm package
# onnxruntime-node (its C API 24 is what github.com/yalue/onnxruntime_go v1.27 asks for; 1.23.x
# refuses it). Idempotent: a second run only prints the path.
#
#   scripts/setup-ort.sh            # prints the path of the linux x64 libonnxruntime.so.1
#
# (onnxruntime-node 1.24.1 ships the library as libonnxruntime.so.1 under
# package/bin/napi-v6/linux/x64/; there is no file named libonnxruntime.so.1.24.1 in it.)
#   export ONNXRUNTIME_LIB=$(scripts/setup-ort.sh)
#
# The package is fetched with `npm pack` (no npm install, no install scripts run) into
# ${PROLONG_CACHE:-$HOME/.cache/prolong}/ort-1.24.1. The tests look there by default.
set -eu
VERSION=1.24.1
CACHE=${PROLONG_CACHE:-$HOME/.cache/prolong}
DIR=$CACHE/ort-$VERSION
LIB=$DIR/package/bin/napi-v6/linux/x64/libonnxruntime.so.1
if [ -f "$LIB" ]; then
	echo "$LIB"
	exit 0
fi
command -v npm >/dev/null || { echo "setup-ort: npm not found (apt-get install npm)" >&2; exit 1; }
mkdir -p "$DIR"
TMP=$(mktemp -d "$DIR/tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent "onnxruntime-node@$VERSION" >/dev/null)
TGZ=$(ls "$TMP"/onnxruntime-node-*.tgz)
tar -xzf "$TGZ" -C "$TMP"
FOUND=$(find "$TMP/package" -path '*/linux/x64/libonnxruntime.so.1' | head -n 1)
[ -n "$FOUND" ] || { echo "setup-ort: linux/x64/libonnxruntime.so.1 not in $TGZ" >&2; exit 1; }
# Move the extracted tree into place in one rename, so a crash leaves no half-extracted package.
rm -rf "$DIR/package"
mv "$TMP/package" "$DIR/package"
LIB=$DIR/package/${FOUND#"$TMP/package/"}
[ -f "$LIB" ] || { echo "setup-ort: $LIB missing after extraction" >&2; exit 1; }
echo "$LIB"
