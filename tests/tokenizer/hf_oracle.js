// Oracle for the differential tests: Hugging Face tokenizers 0.23.2 (npm `tokenizers`, the Rust
// library through its Node binding). Reads JSON strings one per line on stdin and writes, for
// each, a JSON line {"ids": [...], "decoded": "..."} (no special tokens added; decode keeps them).
// usage: node hf_oracle.js TOKENIZER_JSON NODE_MODULES_DIR < strings.jsonl
"use strict";
const fs = require("fs");
const path = require("path");

async function main() {
  const [tokenizerPath, modulesDir] = process.argv.slice(2);
  const { Tokenizer } = require(path.resolve(modulesDir, "tokenizers"));
  const tokenizer = Tokenizer.fromFile(tokenizerPath);
  const lines = fs.readFileSync(0, "utf8").split("\n").filter((l) => l.length > 0);
  const out = [];
  for (const line of lines) {
    const request = JSON.parse(line);
    if (typeof request === "object" && request !== null && Array.isArray(request.decode)) {
      out.push(JSON.stringify({ decoded: await tokenizer.decode(request.decode, false) }));
      continue;
    }
    const text = request;
    const ids = (await tokenizer.encode(text, null, { addSpecialTokens: false })).getIds();
    const decoded = await tokenizer.decode(ids, false);
    out.push(JSON.stringify({ ids, decoded }));
  }
  fs.writeFileSync(1, out.join("\n") + "\n");
}
main().catch((e) => { console.error(e); process.exit(1); });
