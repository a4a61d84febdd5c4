// Calibration of the baseline, not part of the tool: what the legacy writers' own work,
// JSON.parse of the whole store and JSON.stringify(store, null, 2), costs in Node.js on
// the stores the bench generates. Keep them with -workdir, then:
//
//   go run ./cmd/sessiond-bench -workdir /tmp/sdw -store-shape 1k,10k,1kx50k -clients 1 -duration 200ms -baseline=false
//   node cmd/sessiond-bench/nodecal.js /tmp/sdw/store-*.json
//
// Compare with the read/parse/encode columns of "Where a baseline write's time goes".
const fs = require('fs');
for (const f of process.argv.slice(2)) {
  const parse = [], str = [];
  for (let i = 0; i < 7; i++) {
    const text = fs.readFileSync(f, 'utf8');
    let t = process.hrtime.bigint();
    const store = JSON.parse(text);
    parse.push(Number(process.hrtime.bigint() - t) / 1e6);
    const key = Object.keys(store)[5];
    store[key].updatedAt = Date.now();
    t = process.hrtime.bigint();
    JSON.stringify(store, null, 2);
    str.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  parse.sort((a, b) => a - b);
  str.sort((a, b) => a - b);
  console.log(`${f}: node ${process.version}, median of 7: parse ${parse[3].toFixed(1)} ms, stringify ${str[3].toFixed(1)} ms`);
}
