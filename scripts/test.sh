#!/usr/bin/env bash
# README's test command: sets up the tests' independent references (scripts/test-env.sh: Debian's
# python3-torch, ONNX Runtime, NVRTC, the reference tokenizers...), runs every test, and ends
# with one line counting what passed, failed and skipped, then why each skipped test skipped and
# how to get what it needs. Arguments go to go test (default ./...):
#
#   scripts/test.sh                      # everything (go test -timeout 30m ./...)
#   scripts/test.sh -run TestChat ./tools/rollout-server/
set -euo pipefail
cd "$(dirname "$0")/.."
env_lines=$(scripts/test-env.sh)
eval "$env_lines"
[ $# -gt 0 ] || set -- -timeout 30m ./... # a package may take minutes on 2 busy cores (the mpirun runs of tools/train)
go build -o "${TMPDIR:-/tmp}/prolong-testsummary" ./scripts/testsummary
go test -json "$@" | "${TMPDIR:-/tmp}/prolong-testsummary"
