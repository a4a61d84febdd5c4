// gen.js writes the Node-produced fixtures that persist's tests compare against, so that
// the Go codec is checked byte for byte against JavaScript's JSON.parse/JSON.stringify.
//
// Regenerate (node v20 or later; the tests themselves never need node):
//
//	cd persist/testdata/stringify && node gen.js
//
// It replaces these directories (commit the result):
//   cases/NAME.in.json   raw JSON text          cases/NAME.out.json   JSON.stringify(JSON.parse(in), null, 2)
//   stores/NAME.in.json  raw sessions.json      stores/NAME.out.json  the same, as Node would rewrite it
//   merge/NAME.target.json, NAME.patch.json     merge/NAME.out.json   JSON.stringify(merge(target, patch), null, 2)
// Everything is deterministic (seeded PRNG), so a rerun yields identical files.
'use strict';
const fs = require('fs');
const path = require('path');

const here = __dirname;
for (const d of ['cases', 'stores', 'merge']) {
  fs.rmSync(path.join(here, d), { recursive: true, force: true });
  fs.mkdirSync(path.join(here, d));
}
const write = (dir, name, text) => fs.writeFileSync(path.join(here, dir, name), text, 'utf8');
const stringify = (text) => JSON.stringify(JSON.parse(text), null, 2);

// The merge of PROTOCOL.md, verbatim.
function merge(t, p) {
  if (typeof p !== 'object' || p === null || Array.isArray(p)) return p;
  if (typeof t !== 'object' || t === null || Array.isArray(t)) t = {};
  for (const k of Object.keys(p)) { if (p[k] === null) delete t[k]; else t[k] = merge(t[k], p[k]); }
  return t;
}

// mulberry32: a small seeded PRNG so the random fixtures are reproducible.
function prng(seed) {
  return function () {
    seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = prng(20240611);
const int = (n) => Math.floor(rnd() * n);
const pick = (a) => a[int(a.length)];

const LS = String.fromCharCode(0x2028), PS = String.fromCharCode(0x2029), DEL = String.fromCharCode(0x7f);
const EMOJI = String.fromCodePoint(0x1f600), BOM = String.fromCharCode(0xfeff);
let controls = '';
for (let c = 0; c < 0x20; c++) controls += '\\u' + c.toString(16).padStart(4, '0');

// ---- cases: single JSON texts ------------------------------------------------------
const cases = [
  ['num-1.0', '1.0'], ['num-1E21', '1E21'], ['num-1e21', '1e21'], ['num-1e20', '1e20'],
  ['num-1e-7', '1e-7'], ['num-1.5e-7', '1.5e-7'], ['num-1e-6', '1e-6'], ['num-1.5e-6', '0.0000015'],
  ['num-big-int', '123456789012345680000'], ['num-0.1', '0.1'], ['num-neg0', '-0'], ['num-neg0.0', '-0.0e5'],
  ['num-1e400', '1e400'], ['num-neg1e400', '-1e400'], ['num-1e-400', '1e-400'], ['num-5e-324', '5e-324'],
  ['num-2p53plus1', '9007199254740993'], ['num-max', '1.7976931348623157e308'], ['num-minnormal', '2.2250738585072014e-308'],
  ['num-long', '123456789012345678901234567890.123456789e-5'], ['num-E+', '12.50E+3'], ['num-e-', '-7e-3'],
  ['num-0e10', '0e10'], ['num-frac', '0.30000000000000004'], ['num-999e18', '999999999999999999999'],
  ['num-1e15', '1000000000000000'], ['num-1e15plus', '1000000000000001.5'], ['num-list', '[1, -1, 2.5, -2.5e-10, 1e100, 4.35, 0.000123]'],
  ['ws', ' \t\n\r{ "a" :\t[ 1 , 2 ] , "b":{ } }\r\n '],
  ['str-escapes', '"\\"\\\\\\/\\b\\f\\n\\r\\t"'],
  ['str-controls', '"' + controls + '"'],
  ['str-controls-upper', '"\\u001F\\u000A\\u000B\\u007F\\u00FF"'],
  ['str-unicode-escapes', '"\\u0041\\u00e9\\u00E9\\u4e2d\\uFFFF\\ufeff"'],
  ['str-separators', '"' + LS + PS + '\\u2028\\u2029"'],
  ['str-html', '"<script>&amp;\'</script>\\u003c\\u003e\\u0026"'],
  ['str-del', '"' + DEL + '\\u007f"'],
  ['str-emoji', '"' + EMOJI + '\\ud83d\\ude00\\uD83D\\uDE00"'],
  ['str-lone-high', '"\\ud800"'], ['str-lone-low', '"\\uDC00"'], ['str-high-high', '"\\ud800\\uD800x"'],
  ['str-low-high', '"\\udc00\\ud800"'], ['str-high-then-text', '"\\ud83d x \\ud83d\\u0041"'],
  ['str-high-end', '"a\\udbff"'], ['str-pair-split', '"\\ud83d\\\\ude00"'],
  ['str-non-ascii', '"\u00e9\u4e2d\u6587 \u0410 \u05d0 \ufffd' + BOM + '"'],
  ['obj-index-keys', '{"b":1,"4294967295":2,"4294967294":3,"01":4,"1":5,"0":6,"a":7,"-1":9,"10":10,"2":11,"1.0":12," 1":13,"1e3":14}'],
  ['obj-index-nested', '{"z":{"9":1,"x":2,"3":[{"b":1,"7":2,"0":{"1":1,"0":0}}]},"5":{"a":{"2":2,"1":1}}}'],
  ['obj-dup', '{"a":1,"b":2,"a":3,"c":{"x":1},"c":{"y":2}}'],
  ['obj-dup-escaped', '{"a":1,"\\u0061":2,"\\u0030":"zero","0":"again","b\\/":1,"b/":2}'],
  ['obj-dup-index', '{"x":0,"3":1,"1":2,"3":3}'],
  ['obj-proto', '{"__proto__":{"a":1},"b":2}'],
  ['obj-empty', '{"a":{},"b":[],"c":[{},[]],"d":[[[]]],"":{}}'],
  ['obj-escaped-keys', '{"\\n":1,"\\u0000":2,"' + EMOJI + '":3,"\\ud800":4,"\\\\":5}'],
  ['arr-mixed', '[true,false,null,"s",1,{"k":[null]}]'],
  ['scalar-true', 'true'], ['scalar-null', 'null'], ['scalar-str', '"x"'],
  ['deep', '['.repeat(40) + '{"a":' + '{"b":'.repeat(10) + '1' + '}'.repeat(11) + ']'.repeat(40)],
];

// Random doubles from random bit patterns, with literals that are not already canonical.
const f64 = new Float64Array(1), u32 = new Uint32Array(f64.buffer);
const nums = [];
for (let i = 0; i < 3000; i++) {
  let x;
  switch (i % 6) {
    case 0: case 1:
      do { u32[0] = int(2 ** 32); u32[1] = int(2 ** 32); x = f64[0]; } while (!isFinite(x));
      break;
    case 2: x = (rnd() - 0.5) * 10 ** (int(60) - 30); break;
    case 3: x = int(2 ** 53) * (rnd() < 0.5 ? -1 : 1) * 10 ** (int(12) - 3); break;
    case 4: x = Number((rnd() * 1000).toFixed(int(6))); break;
    default: x = pick([1e21, 1e-7, 1e-6, 9.999999999999999e20, 1e21 * (1 + 2 ** -52), 999999999999999900000, 0.000001 * (1 - 2 ** -53), 2 ** 53, 2 ** 53 + 2, 5e-324, 2 ** -1074 * 3]) * (rnd() < 0.5 ? -1 : 1);
  }
  nums.push(pick([String(x), x.toExponential(19), x.toPrecision(17), x.toExponential(), x.toPrecision(21)]).replace('e', pick(['e', 'E'])));
}
cases.push(['num-random', '[' + nums.join(',') + ']']);

// Random JSON text: random whitespace, escapes, duplicate and index keys.
const KEYS = ['a', 'b', 'c', 'key', '0', '1', '2', '10', '01', '-1', '4294967294', '4294967295', '\\u0031', '\\u0061', 'prompt', '', '\u00e9', EMOJI, '\\ud800', '\\n'];
function ws() { let s = ''; while (rnd() < 0.3) s += pick([' ', '\t', '\n', '\r']); return s; }
function rawString() {
  let s = '"';
  const n = int(8);
  const simple = ['a', 'Z', ' ', '<', '>', '&', '\\"', '\\\\', '\\/', '\\b', '\\f', '\\n', '\\r', '\\t', DEL, LS, PS, EMOJI, '\u00e9', '\u4e2d'];
  for (let i = 0; i < n; i++) {
    switch (int(6)) {
      case 0: s += '\\u' + int(0x20).toString(16).padStart(4, '0'); break;
      case 1: s += '\\u' + int(0x10000).toString(16).padStart(4, '0'); break;
      case 2: s += '\\u' + (0xd800 + int(0x800)).toString(16).toUpperCase(); break;
      case 3: s += '\\u' + (0xd800 + int(0x400)).toString(16) + '\\u' + (0xdc00 + int(0x400)).toString(16); break;
      default: s += pick(simple);
    }
  }
  return s + '"';
}
function rawNumber() {
  return pick(['0', '-0', '1', '-12', '1.0', '2.50', '1e3', '1E+21', '1e-7', '-3.25e-8', '1e400', '123456789012345678', '0.1', String(rnd() * 1e6), String(int(1e9))]);
}
function rawValue(depth, objectOnly) {
  const r = objectOnly ? 0 : rnd();
  if (r < 0.3 && depth < 5) {
    const n = int(6);
    const members = [];
    for (let i = 0; i < n; i++) members.push(ws() + '"' + pick(KEYS) + '"' + ws() + ':' + rawValue(depth + 1));
    return ws() + '{' + (members.length ? members.join(',') : ws()) + '}' + ws();
  }
  if (r < 0.45 && depth < 5) {
    const n = int(5);
    const elems = [];
    for (let i = 0; i < n; i++) elems.push(rawValue(depth + 1));
    return ws() + '[' + (elems.length ? elems.join(',') : ws()) + ']' + ws();
  }
  if (r < 0.7) return ws() + rawString() + ws();
  if (r < 0.9) return ws() + rawNumber() + ws();
  return ws() + pick(['true', 'false', 'null']) + ws();
}
for (let i = 0; i < 150; i++) cases.push(['random-' + String(i).padStart(3, '0'), rawValue(0, i % 2 === 0)]);

for (const [name, text] of cases) {
  write('cases', name + '.in.json', text);
  write('cases', name + '.out.json', stringify(text));
}

// ---- stores: whole sessions.json files -----------------------------------------------
const prompt = 'You are a helpful assistant.\nUser said: "hi" <b>&</b> ' + LS + EMOJI + ' tab\there \\ done ' + '\u00e9'.repeat(3);
const nodeStores = {
  'node-basic': { 'session:1': { rev: 1, prompt, messages: [{ role: 'user', text: prompt }, { role: 'model', text: '' }], meta: {} } },
  'node-mixed': {
    'b': { rev: 2, n: [1e21, 1e-7, 1.5e-7, 0.1, -0, 5e-324, 123456789012345680000, Infinity] },
    '7': { rev: 3, '3': 'index', 'x': { '10': [], '2': {} } },
    'a': { rev: 4, s: '\ud800 lone \udc00 ' + controls, deep: { x: { y: { z: [[], {}, [{}]] } } } },
    '0': { rev: 5 },
    '\u00e9\u4e2d': { rev: 6, emoji: EMOJI, sep: LS + PS, del: DEL, html: '<>&' },
    '4294967295': { rev: 7 },
    '': { rev: 8 },
    'k\n"q"\\': { rev: 9, empty: '' },
  },
  'node-empty': {},
  'node-scalars': { a: 1, b: 'x', c: null, d: true, e: [1, 2], f: {} },
};
for (const [name, obj] of Object.entries(nodeStores)) {
  const text = JSON.stringify(obj, null, 2);
  write('stores', name + '.in.json', text);
  write('stores', name + '.out.json', text);
}
const rawStores = [
  ['compact', '{"s1":{"rev":1,"v":1.0},"s2":{"rev":2,"v":"\\u0041"}}'],
  ['dup-keys', '{\n  "a": {"rev": 1},\n  "b": {"rev": 2},\n  "a": {"rev": 3, "x": [ ]}\n}'],
  ['index-keys', '{"x":{},"3":{"b":1,"2":2},"1":{},"01":{},"4294967294":{},"4294967295":{}}'],
  ['escaped-keys', '{"\\u0061":{"rev":1},"a":{"rev":2},"\\ud83d\\ude00":{"rev":3},"\\/":{}}'],
  ['almost-canonical', '{\n  "a": {\n    "x": 1.0\n  },\n  "b": {\n   "y": 2\n  },\n  "c": {\n    "z": "\\u0041"\n  },\n  "d": {\n    "b": 1,\n    "0": 2\n  },\n  "e": {\n    "k": 1,\n    "k": 2\n  },\n  "f": [\n    1e21\n  ],\n  "g": -0,\n  "h": {\n    "ok": [\n      {},\n      []\n    ]\n  }\n}'],
  ['whitespace', ' \r\n\t{ "a"  :  { "b" : [ 1 , 2 ] }  ,"c":{}}\n'],
  ['scalar-values', '{"a":1,"b":"x","c":null,"d":true,"e":[1,2,3]}'],
];
for (let i = 0; i < 20; i++) rawStores.push(['random-' + String(i).padStart(2, '0'), rawValue(0, true).replace(/"\\ud800"\s*:/g, '"u":')]);
for (const [name, text] of rawStores) {
  write('stores', name + '.in.json', text);
  write('stores', name + '.out.json', stringify(text));
}

// ---- merge: RFC 7396 as the JavaScript above does it ----------------------------------
const merges = [
  // RFC 7396 appendix A.
  ['rfc-1', '{"a":"b"}', '{"a":"c"}'], ['rfc-2', '{"a":"b"}', '{"b":"c"}'], ['rfc-3', '{"a":"b"}', '{"a":null}'],
  ['rfc-4', '{"a":"b","b":"c"}', '{"a":null}'], ['rfc-5', '{"a":["b"]}', '{"a":"c"}'], ['rfc-6', '{"a":"c"}', '{"a":["b"]}'],
  ['rfc-7', '{"a":{"b":"c"}}', '{"a":{"b":"d","c":null}}'], ['rfc-8', '{"a":[{"b":"c"}]}', '{"a":[1]}'],
  ['rfc-9', '["a","b"]', '["c","d"]'], ['rfc-10', '{"a":"b"}', '["c"]'], ['rfc-11', '{"a":"foo"}', 'null'],
  ['rfc-12', '{"a":"foo"}', '"bar"'], ['rfc-13', '{"e":null}', '{"a":1}'], ['rfc-14', '[1,2]', '{"a":"b","c":null}'],
  ['rfc-15', '{}', '{"a":{"bb":{"ccc":null}}}'],
  ['order-keep-place', '{"a":1,"b":2,"c":3}', '{"b":20,"d":4,"a":10}'],
  ['order-delete-readd', '{"a":1,"b":2,"c":3}', '{"a":null,"e":5}'],
  ['order-index', '{"b":1,"5":1,"a":2}', '{"z":0,"7":7,"2":2,"5":55,"4294967295":1}'],
  ['order-index-into-empty', '{}', '{"x":1,"10":1,"9":1}'],
  ['nested-create', '{"a":1}', '{"n":{"x":null,"y":{"z":null,"w":1},"3":{}}}'],
  ['nested-deep', '{"a":{"b":{"c":{"d":1,"e":2}}}}', '{"a":{"b":{"c":{"d":null,"f":3},"g":[null]}}}'],
  ['target-array', '{"a":[1,2]}', '{"a":{"0":"x"}}'], ['target-scalar', '"str"', '{"a":1}'],
  ['target-null', 'null', '{"a":null,"b":{"c":null}}'], ['patch-empty', '{"a":1}', '{}'],
  ['patch-number', '{"a":1}', '1.0'], ['delete-missing', '{"a":1}', '{"zz":null}'],
  ['values-normalised', '{"a":"\\u0041"}', '{"b":1E21,"c":"\\ud800","d":-0}'],
];
for (let i = 0; i < 80; i++) merges.push(['random-' + String(i).padStart(3, '0'), rawValue(0, i % 3 !== 0), rawValue(0, i % 4 !== 0)]);
for (const [name, t, p] of merges) {
  write('merge', name + '.target.json', t);
  write('merge', name + '.patch.json', p);
  const out = JSON.stringify(merge(JSON.parse(t), JSON.parse(p)), null, 2);
  write('merge', name + '.out.json', out === undefined ? 'undefined' : out);
}
