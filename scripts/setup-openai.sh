#!/usr/bin/env bash
# Installs the npm package openai (the official OpenAI client) without running package
# scripts, for the rollout server's client test (scripts/openai_client.mjs). Idempotent; prints
# the directory holding node_modules.
set -euo pipefail
version=4.104.0
dir="${PROLONG_CACHE:-$HOME/.cache/prolong}/openai"
if ! grep -q "\"version\": \"$version\"" "$dir/node_modules/openai/package.json" 2>/dev/null; then
	mkdir -p "$dir"
	npm install --prefix "$dir" --ignore-scripts --no-audit --no-fund --silent "openai@$version" >&2
fi
echo "$dir"
