// Baseline for bench/tokenizer.sh: Hugging Face tokenizers (Rust, through its Node binding) on the
// same files as `dsv3 bench tokenize`. Only the encode calls are timed (one per document, awaited
// in turn, so one encode runs at a time); load time is reported apart.
// usage: node bench/hf_tokenize.js TOKENIZER_JSON PASSES FILE...
"use strict";
const fs = require("fs");
const path = require("path");
const { Tokenizer } = require(path.join(__dirname, "..", "third_party", "node", "node_modules", "tokenizers"));

async function main() {
  const [tokenizerPath, passesArg, ...files] = process.argv.slice(2);
  const passes = Number(passesArg);
  const docs = files.map((f) => fs.readFileSync(f, "utf8"));
  const bytes = docs.reduce((n, d) => n + Buffer.byteLength(d, "utf8"), 0);
  let t0 = process.hrtime.bigint();
  const tokenizer = Tokenizer.fromFile(tokenizerPath);
  console.log(`hf load: ${(Number(process.hrtime.bigint() - t0) / 1e9).toFixed(3)} s`);
  const rates = [];
  let tokens = 0;
  for (let pass = 0; pass < passes; pass++) {
    let encodeNs = 0n;
    tokens = 0;
    for (const doc of docs) {
      t0 = process.hrtime.bigint();
      const encoding = await tokenizer.encode(doc, null, { addSpecialTokens: false });
      encodeNs += process.hrtime.bigint() - t0;
      tokens += encoding.getIds().length;  // outside the timed call
    }
    const seconds = Number(encodeNs) / 1e9;
    rates.push(bytes / 1e6 / seconds);
    console.log(`hf pass ${pass + 1}: ${seconds.toFixed(3)} s, ${rates[rates.length - 1].toFixed(2)} MB/s`);
  }
  rates.sort((a, b) => a - b);
  console.log(`hf tokens: ${tokens}`);
  console.log(`hf single-thread MB/s: ${rates[Math.floor(rates.length / 2)].toFixed(2)}`);
}
main().catch((e) => { console.error(e); process.exit(1); });
