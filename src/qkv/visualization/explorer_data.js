// The explorer's numbers: base64 float32 / float16 / int32 decoded exactly, a kind of attention's accessors, and
// how a stored float32 is written out. Part of one ES module with explorer_words.js and explorer.js.

const COLORS = ["#e6194b","#3cb44b","#4363d8","#f58231","#911eb4","#42d4f4","#f032e6","#bfef45","#fabed4","#469990","#dcbeff","#9a6324","#800000","#aaffc3","#808000","#000075"];
const VIEWS = ["head", "model", "qk", "neuron", "flow", "scores", "pixels", "align"];
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const label = t => t === "\n" ? "⏎" : t === " " ? "␣" : t;
function exact(w){
  // a stored float32 in the fewest digits that read back as exactly it (0.9, not 0.8999999761581421); a number
  // computed here in float64 (q·k) in all of its digits
  if (w === undefined) return "not stored";
  for (let digits = 1; digits <= 9; digits++){ const text = w.toPrecision(digits); if (Math.fround(+text) === w) return String(+text); }
  return String(w);
}


function decode(base64, type){
  // base64 of little-endian float32 (or "float16", "int32") -> Float32Array (Int32Array), exactly
  const text = atob(base64), bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  if (type === "int32") return new Int32Array(bytes.buffer);
  if (type !== "float16") return new Float32Array(bytes.buffer);
  const h = new Uint16Array(bytes.buffer), out = new Float32Array(h.length);
  for (let i = 0; i < h.length; i++){
    const s = h[i] >> 15 ? -1 : 1, e = (h[i] >> 10) & 31, m = h[i] & 1023;
    out[i] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
  }
  return out;
}

function prepare(K){
  // decode a kind's arrays once; K.weight(l, h, i, j) is the exact stored weight, K.row(l, h, i) its nonzero keys
  const nq = K.queryTokens.length, nk = K.tokens.length, H = K.heads, enc = K.weights.encoding;
  const at = (l, h, i) => ((l * H + h) * nq + i) * nk;
  if (enc === "top-k"){
    const keys = decode(K.weights.keys, "int32"), values = decode(K.weights.data), k = K.weights.topK;
    K.row = (l, h, i) => { const out = [], base = ((l * H + h) * nq + i) * k;
      for (let m = 0; m < k; m++) if (values[base + m] > 0) out.push([keys[base + m], values[base + m]]); return out; };
    K.weight = (l, h, i, j) => { const hit = K.row(l, h, i).find(p => p[0] === j); return hit ? hit[1] : undefined; };
  } else {
    const w = decode(K.weights.data, enc);
    K.weight = (l, h, i, j) => w[at(l, h, i) + j];
    K.row = (l, h, i) => { const out = [], base = at(l, h, i); for (let j = 0; j < nk; j++) if (w[base + j] > 0) out.push([j, w[base + j]]); return out; };
  }
  const s = K.scores ? decode(K.scores) : null;
  K.score = s ? (l, h, i, j) => s[at(l, h, i) + j] : null;
  if (K.vectors){
    const V = K.vectors, d = V.dim, arrays = {};
    for (const name of ["q", "k", "v", "z"]) arrays[name] = decode(V[name]);
    const rows = {q: nq, k: nk, v: nk, z: nq};
    K.vector = (name, l, h, i) => { const base = ((l * H + h) * rows[name] + i) * d; return Array.from(arrays[name].subarray(base, base + d)); };
  }
  K.topK = enc === "top-k" ? K.weights.topK : null;
  return K;
}

