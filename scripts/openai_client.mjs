// Drives tools/rollout-server with the official OpenAI client (npm openai), unchanged, as a
// user or an RL trainer would, and checks the answers. Run by the rollout server's tests:
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

// Text prompt, streamed: the chunks add up to the whole answer.
const whole = await client.completions.create({ model, prompt: "<bos>2+3=", max_tokens: 10, temperature: 0, seed: 1 });
let text = "";
const stream = await client.completions.create({ model, prompt: "<bos>2+3=", max_tokens: 10, temperature: 0, seed: 1, stream: true });
for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
assert.equal(text, whole.choices[0].text);

// Bad input comes back as an OpenAI error the client raises.
await assert.rejects(client.completions.create({ model, prompt: [1], max_tokens: 1, n: 1000 }), (e) => e.status === 400 && /n must be/.test(e.message));

console.log(`ids: ${JSON.stringify(ids.choices.map((c) => c.token_ids))}; text: ${JSON.stringify(whole.choices[0].text)}`);
console.log("all checks passed");
