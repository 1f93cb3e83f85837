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
  // Wall time and process CPU time around each encode call (the encode runs on one worker
  // thread; the CPU time shows its cost when other processes share the machine).
  const rates = [], cpuRates = [];
  let tokens = 0;
  for (let pass = 0; pass < passes; pass++) {
    let encodeNs = 0n, cpuUs = 0;
    tokens = 0;
    for (const doc of docs) {
      const cpu0 = process.cpuUsage();
      t0 = process.hrtime.bigint();
      const encoding = await tokenizer.encode(doc, null, { addSpecialTokens: false });
      encodeNs += process.hrtime.bigint() - t0;
      const cpu = process.cpuUsage(cpu0);
      cpuUs += cpu.user + cpu.system;
      tokens += encoding.getIds().length;  // outside the timed call
    }
    const seconds = Number(encodeNs) / 1e9, cpuSeconds = cpuUs / 1e6;
    rates.push(bytes / 1e6 / seconds);
    cpuRates.push(bytes / 1e6 / cpuSeconds);
    console.log(`hf pass ${pass + 1}: ${seconds.toFixed(3)} s, ${rates[rates.length - 1].toFixed(2)} MB/s ` +
                `(CPU time ${cpuSeconds.toFixed(3)} s, ${cpuRates[cpuRates.length - 1].toFixed(2)} MB/s)`);
  }
  rates.sort((a, b) => a - b);
  cpuRates.sort((a, b) => a - b);
  console.log(`hf tokens: ${tokens}`);
  console.log(`hf single-thread MB/s: ${rates[Math.floor(rates.length / 2)].toFixed(2)}`);
  console.log(`hf single-thread CPU-time MB/s: ${cpuRates[Math.floor(cpuRates.length / 2)].toFixed(2)}`);
}
main().catch((e) => { console.error(e); process.exit(1); });
