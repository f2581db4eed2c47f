// Drives tools/rollout-server with the official OpenAI client (npm openai), unchanged, as a
// user or an RL trainer would, and checks the answers: completions with token ids and text,
// n > 1, log-probs and top log-probs (echoed prompts' too, printed as "echo logprobs: [...]"
// for the caller to compare), streaming, chat. Run by the rollout server's tests:
//
//   node scripts/openai_client.mjs NODE_MODULES_PARENT_DIR BASE_URL API_KEY MODEL
import { createRequire } from "node:module";
import assert from "node:assert/strict";

const [dir, baseURL, apiKey, model] = process.argv.slice(2);
const require = createRequire(dir.replace(/\/?$/, "/"));
const OpenAI = require("openai");
const client = new OpenAI({ baseURL, apiKey });

const models = await client.models.list();
assert.equal(models.data[0].id, model);

// Token-id prompt, n samples with their log-probs (what RL trainers ask for).
const ids = await client.completions.create({ model, prompt: [1, 6, 15, 7, 18], n: 3, max_tokens: 8, temperature: 1, seed: 4, logprobs: 1 });
assert.equal(ids.choices.length, 3);
for (const c of ids.choices) {
  assert.ok(c.token_ids.length >= 1 && c.token_ids.length <= 8);
  assert.equal(c.logprobs.token_logprobs.length, c.token_ids.length);
  assert.ok(c.logprobs.token_logprobs.every((lp) => lp <= 0));
  assert.ok(["stop", "length"].includes(c.finish_reason));
}
// Same seed, same answer.
const again = await client.completions.create({ model, prompt: [1, 6, 15, 7, 18], n: 3, max_tokens: 8, temperature: 1, seed: 4, logprobs: 1 });
assert.deepEqual(again.choices.map((c) => c.token_ids), ids.choices.map((c) => c.token_ids));

// Text prompt, n = 2, streamed: each choice's chunks add up to its whole answer.
const textReq = { model, prompt: "<bos>2+3=", n: 2, max_tokens: 10, temperature: 1, seed: 1, logprobs: 1 };
const whole = await client.completions.create(textReq);
assert.equal(whole.choices.length, 2);
const texts = ["", ""], streamed = [[], []];
const stream = await client.completions.create({ ...textReq, stream: true });
for await (const chunk of stream) {
  for (const c of chunk.choices) {
    texts[c.index] += c.text;
    streamed[c.index].push(...c.token_ids);
  }
}
for (const c of whole.choices) {
  assert.equal(texts[c.index], c.text);
  assert.deepEqual(streamed[c.index], c.token_ids);
}

// Chat (the model directory has a tokenizer with a ChatML template): n = 2 with log-probs,
// then the same request streamed.
const chatReq = { model, messages: [{ role: "user", content: "1+2=" }], n: 2, max_tokens: 8, temperature: 1, seed: 3, logprobs: true };
const chat = await client.chat.completions.create(chatReq);
assert.equal(chat.object, "chat.completion");
assert.equal(chat.choices.length, 2);
for (const c of chat.choices) {
  assert.equal(c.message.role, "assistant");
  assert.equal(typeof c.message.content, "string");
  assert.equal(c.logprobs.content.length, c.token_ids.length);
  assert.ok(c.logprobs.content.every((l) => l.logprob <= 0));
}
const chatText = ["", ""];
for await (const chunk of await client.chat.completions.create({ ...chatReq, stream: true })) {
  for (const c of chunk.choices) chatText[c.index] += c.delta.content ?? "";
}
assert.deepEqual(chatText, chat.choices.map((c) => c.message.content));

// Top log-probs (vLLM's logprobs k): each position lists the chosen token first, then the k
// most likely; with echo the prompt comes back with its own log-probs (null for its first
// token), printed for the Go test to compare with engine.Score.
const echoPrompt = [1, 6, 15, 7, 18];
const top = await client.completions.create({ model, prompt: echoPrompt, max_tokens: 4, temperature: 0.7, top_k: 5, seed: 2, logprobs: 3, echo: true });
const tl = top.choices[0].logprobs;
assert.equal(tl.token_logprobs.length, echoPrompt.length + top.choices[0].token_ids.length);
assert.equal(tl.token_logprobs[0], null);
assert.equal(tl.top_logprobs[0], null);
for (let i = 1; i < tl.token_logprobs.length; i++) {
  const entries = Object.entries(tl.top_logprobs[i]);
  assert.ok(entries.length >= 3 && entries.length <= 4, `position ${i}: ${entries.length} entries`);
  assert.equal(tl.top_logprobs[i][tl.tokens[i]], tl.token_logprobs[i]); // (JavaScript reorders digit keys)
  assert.ok(entries.every(([, lp]) => lp <= 0 && lp >= -9999));
}
// Streamed, every sampled token's chunk carries its own log-prob and top log-probs, equal to
// the whole answer's.
let streamedTop = [];
for await (const chunk of await client.completions.create({ model, prompt: echoPrompt, max_tokens: 4, temperature: 0.7, top_k: 5, seed: 2, logprobs: 3, echo: true, stream: true })) {
  for (const c of chunk.choices) {
    if (c.token_ids.length > 0) assert.equal(c.logprobs?.top_logprobs?.length, 1, `chunk ${JSON.stringify(c)}`);
    streamedTop.push(...(c.logprobs?.top_logprobs ?? []));
  }
}
assert.deepEqual(streamedTop, tl.top_logprobs);
// ... as the tokens are generated: with n = 2, token t of both choices before token t+1 of either.
const seen = [0, 0];
for await (const chunk of await client.completions.create({ model, prompt: echoPrompt, n: 2, max_tokens: 6, temperature: 1, seed: 5, logprobs: 2, ignore_eos: true, stream: true })) {
  for (const c of chunk.choices) {
    assert.equal(c.logprobs.top_logprobs.length, 1);
    assert.ok(seen[c.index] <= Math.min(...seen), `choice ${c.index}'s token ${seen[c.index]} streamed after the other's ${Math.min(...seen)}`);
    seen[c.index]++;
  }
}
assert.deepEqual(seen, [6, 6]);
const chatTop = await client.chat.completions.create({ ...chatReq, n: 1, logprobs: true, top_logprobs: 3 });
for (const l of chatTop.choices[0].logprobs.content) {
  assert.equal(l.top_logprobs.length, 3);
  assert.ok(l.top_logprobs[0].logprob >= l.top_logprobs[1].logprob && l.top_logprobs[1].logprob >= l.top_logprobs[2].logprob);
}
const chatStreamed = [];
for await (const chunk of await client.chat.completions.create({ ...chatReq, n: 1, logprobs: true, top_logprobs: 3, stream: true })) {
  for (const c of chunk.choices) {
    if (c.token_ids.length > 0) assert.equal(c.logprobs?.content?.length, 1, `chunk ${JSON.stringify(c)}`);
    chatStreamed.push(...(c.logprobs?.content ?? []));
  }
}
assert.deepEqual(chatStreamed, chatTop.choices[0].logprobs.content);
console.log(`echo logprobs: ${JSON.stringify(tl.token_logprobs.slice(0, echoPrompt.length))}`);

// Bad input comes back as an OpenAI error the client raises.
await assert.rejects(client.completions.create({ model, prompt: [1], max_tokens: 1, n: 1000 }), (e) => e.status === 400 && /n must be/.test(e.message));

console.log(`ids: ${JSON.stringify(ids.choices.map((c) => c.token_ids))}; text: ${JSON.stringify(whole.choices.map((c) => c.text))}; chat: ${JSON.stringify(chat.choices.map((c) => c.message.content))}`);
console.log("all checks passed");
