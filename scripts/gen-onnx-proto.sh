#!/bin/sh
# Regenerates onnx/onnxpb/onnx-ml.pb.go, the Go bindings of the ONNX protobuf schema.
#
# Source: onnx-ml.proto (proto2 syntax, IR version 8) shipped by Debian's python3-onnx, or any
# onnx-ml.proto given as the first argument (e.g. from a checkout of github.com/onnx/onnx).
# Needs protoc (Debian protobuf-compiler) and protoc-gen-go:
#   apt-get install -y protobuf-compiler python3-onnx
#   go install google.golang.org/protobuf/cmd/protoc-gen-go@latest
# Run from the repository root: scripts/gen-onnx-proto.sh [path/to/onnx-ml.proto]
set -eu
PROTO=${1:-/usr/lib/python3/dist-packages/onnx/onnx-ml.proto}
[ -f "$PROTO" ] || { echo "gen-onnx-proto: $PROTO not found (apt-get install python3-onnx)" >&2; exit 1; }
PATH="$(go env GOPATH)/bin:$PATH"
command -v protoc >/dev/null || { echo "gen-onnx-proto: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }
command -v protoc-gen-go >/dev/null || { echo "gen-onnx-proto: protoc-gen-go not found (go install google.golang.org/protobuf/cmd/protoc-gen-go@latest)" >&2; exit 1; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cp "$PROTO" "$TMP/onnx-ml.proto"
protoc -I "$TMP" \
	--go_out="$TMP" --go_opt=paths=source_relative \
	--go_opt=Monnx-ml.proto=github.com/prolong-rl/prolong/onnx/onnxpb \
	"$TMP/onnx-ml.proto"
mkdir -p "$ROOT/onnx/onnxpb"
cp "$TMP/onnx-ml.pb.go" "$ROOT/onnx/onnxpb/onnx-ml.pb.go"
echo "wrote onnx/onnxpb/onnx-ml.pb.go from $PROTO"
