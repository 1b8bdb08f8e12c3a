// qkv's attention explorer: one ES module for the offline page (inlined), the notebook widget (anywidget's _esm)
// and a notebook's static HTML export. `mount(host, data)` draws the JSON built by qkv.visualization.html into a
// shadow root of `host` (its own CSS and ids, so several explorers share a notebook). It draws only numbers it is
// given: no softmax, no mask. Its only arithmetic: sums of the selected queries' weights, and the neuron view's
// q⊙k and its sum, shown beside the score the model recorded.

// (Its CSS and words are in explorer_words.js, its decoding in explorer_data.js: the three are one module.)

export function mount(host, D){
  const shadow = host.shadowRoot || host.attachShadow({mode: "open"});
  shadow.innerHTML = `<style>${CSS}</style>${SKELETON}`;
  const $ = id => shadow.getElementById(id);
  const kinds = D.kinds.map(prepare);
  const dark = D.theme === "dark" || (D.theme === undefined && globalThis.matchMedia && matchMedia("(prefers-color-scheme: dark)").matches);
  const api = {state: null, draws: 0, drawn: null, headView: null, scoreLayout: null, pixelCell: null};
  host.qkv = api;
  let K = kinds[D.focus[0]] || null;
  const state = api.state = {kind: D.focus[0], view: null, pixel: D.pixelFields ? D.pixelFields.pixel : 0, layer: D.focus[1],
    heads: new Set([D.focus[2]]), zoom: [D.focus[1], D.focus[2]], queries: new Set(), hover: -1, hoverKey: -1,
    shownLayers: null, shownHeads: null, flowKind: "rollout", flowLayer: 0, pair: "all", theme: dark ? "dark" : "light",
    nQuery: 0, nKey: 0};
  const ink = () => state.theme === "dark"
    ? {fg: "#e6e6e6", muted: "#a0a4ad", grid: "#3a3f4a", bar: "#68d391", pos: [99, 164, 255], neg: [255, 123, 123], heat: v => [34 + 70 * v, 37 + 130 * v, 44 + 211 * v]}
    : {fg: "#222", muted: "#666", grid: "#ccc", bar: "#38a169", pos: [43, 108, 176], neg: [197, 48, 48], heat: v => [255 - 220 * v, 255 - 150 * v, 255 - 40 * v]};
  const rgba = (c, a) => `rgba(${c[0]},${c[1]},${c[2]},${a})`;
  $("title").textContent = "qkv · " + D.title;
  const W = WORDS[D.lang] || WORDS.en, kindName = k => W.kinds[k.name] || k.name;
  for (const el of shadow.querySelectorAll("[data-t]")) el.textContent = W[el.dataset.t];

  function inPair(i, j){
    // the sentence-pair filter: query position i + offset in segment A or B, key j likewise
    if (state.pair === "all" || K.segments === null) return true;
    const a = p => p < K.segments, from = state.pair[0] === "A", to = state.pair[1] === "A";
    return a(i + K.queryOffset) === from && a(j) === to;
  }
  const shownRow = (l, h, i) => K.row(l, h, i).filter(([j]) => inPair(i, j));

  function describe(){
    if (!K){ const P = D.pixelFields;
      return P ? `${P.height}×${P.width} image, ${P.levels} levels: what each pixel's prediction depends on.` : "a seq2seq model's alignment."; }
    const size = W.size(K.layers, K.heads), enc = K.weights.encoding;
    const note = enc === "float32" ? W.exactNote : enc === "float16" ? W.halfNote(K.weights.maxError.toExponential(2)) : W.topNote(K.topK, K.tokens.length);
    return (K.cross ? W.crossNote(size, kindName(K), K.queryTokens.length, K.tokens.length)
      : W.selfNote(size, kindName(K), K.tokens.length)) + `; ${note}.` + (K.vectorLimit ? " " + W.neuronLimit(K.vectorLimit) : "");
  }
  function setupKind(){
    // (re)build the controls that depend on the kind of attention shown
    K = kinds[state.kind] || null;
    $("note").textContent = describe();
    $("kindBox").style.display = kinds.length > 1 ? "" : "none";
    $("pairBox").style.display = K && K.segments !== null ? "" : "none";
    $("layerBar").style.display = K ? "" : "none";
    $("tabs").innerHTML = "";
    const views = K ? [["head"], ["model"], ["qk"]] : [];
    if (K && K.vectors) views.push(["neuron"]);
    if (K && (K.rollout || K.flow)) views.push(["flow"]);
    if (K && K.headScores) views.push(["scores"]);
    if (D.pixelFields) views.push(["pixels"]);
    if (D.alignment) views.push(["align"]);
    for (const [id] of views){
      const b = document.createElement("button"); b.textContent = W.views[id]; b.id = "tab-" + id;
      b.onclick = () => { state.view = id; draw(); }; $("tabs").appendChild(b);
    }
    if (!views.some(([id]) => id === state.view)) state.view = K && K.headScores ? "scores" : views.length ? views[0][0] : "head";
    if (!K) return;
    state.layer = Math.min(Math.max(state.layer, 0), K.layers - 1);
    state.heads = new Set([...state.heads].filter(h => h < K.heads)); if (!state.heads.size) state.heads.add(0);
    state.zoom = [Math.min(state.zoom[0], K.layers - 1), Math.min(state.zoom[1], K.heads - 1)];
    state.queries = new Set([K.queryTokens.length - 1]); state.flowLayer = K.layers - 1;
    state.nQuery = K.queryTokens.length - 1; state.nKey = Math.min(state.nKey, K.tokens.length - 1);
    $("layer").innerHTML = "";
    for (let l = 0; l < K.layers; l++) $("layer").add(new Option(l, l));
    $("layer").value = state.layer;
    $("heads").innerHTML = "";
    for (let h = 0; h < K.heads; h++){
      const l = document.createElement("label"), c = document.createElement("input");
      c.type = "checkbox"; c.checked = state.heads.has(h); c.id = "head-" + h; l.id = "headLabel-" + h;
      c.onchange = () => { c.checked ? state.heads.add(h) : state.heads.delete(h); draw(); };
      // bertviz's gesture: double-click a head to show it alone, again to show all heads
      l.ondblclick = e => { e.preventDefault();
        state.heads = state.heads.size === 1 && state.heads.has(h) ? new Set([...Array(K.heads).keys()]) : new Set([h]);
        syncHeads(); draw(); };
      l.style.color = COLORS[h % COLORS.length]; l.appendChild(c); l.append(" " + W.head(h)); $("heads").appendChild(l);
    }
    $("qtok").innerHTML = "";
    K.queryTokens.forEach((t, i) => { const o = new Option(i + ": " + label(t), i); o.selected = state.queries.has(i); $("qtok").add(o); });
    $("qtok").size = Math.min(6, K.queryTokens.length);
    $("flowKind").innerHTML = ""; $("flowLayer").innerHTML = "";
    if (K.rollout) $("flowKind").add(new Option("rollout", "rollout"));
    if (K.flow) $("flowKind").add(new Option("flow (max-flow)", "flow"));
    state.flowKind = K.rollout ? "rollout" : "flow";
    for (let l = 0; l < K.layers; l++) $("flowLayer").add(new Option(l, l));
    $("flowLayer").value = state.flowLayer;
  }
  const syncHeads = () => { for (let k = 0; k < K.heads; k++) $("head-" + k).checked = state.heads.has(k); };
  function setupControls(){
    kinds.forEach((k, i) => $("kind").add(new Option(kindName(k), i)));
    $("kind").value = state.kind;
    $("kind").onchange = e => { state.kind = +e.target.value; setupKind(); draw(); };
    $("pair").onchange = e => { state.pair = e.target.value; draw(); };
    $("theme").onclick = () => { state.theme = state.theme === "dark" ? "light" : "dark"; draw(); };
    $("layer").onchange = e => { state.layer = +e.target.value; draw(); };
    $("qtok").onchange = e => { const chosen = [...e.target.selectedOptions].map(o => +o.value); if (chosen.length){ state.queries = new Set(chosen); draw(); } };
    for (const [input, key] of [["layerFilter", "shownLayers"], ["headFilter", "shownHeads"]])
      $(input).oninput = e => { const set = parseRange(e.target.value, key === "shownLayers" ? K.layers : K.heads);
        e.target.classList.toggle("bad", set === undefined); if (set !== undefined){ state[key] = set; draw(); } };
    $("flowKind").onchange = e => { state.flowKind = e.target.value; draw(); };
    $("flowLayer").onchange = e => { state.flowLayer = +e.target.value; draw(); };
    setupKind();
  }
  function parseRange(text, count){
    // "0-3, 5" -> Set {0,1,2,3,5}; "" -> null (everything); undefined when malformed or out of range
    if (!text.trim()) return null;
    const set = new Set();
    for (const part of text.split(",")){
      const m = part.trim().match(/^(\d+)(?:\s*-\s*(\d+))?$/); if (!m) return undefined;
      const a = +m[1], b = m[2] === undefined ? a : +m[2]; if (a > b || b >= count) return undefined;
      for (let i = a; i <= b; i++) set.add(i);
    }
    return set;
  }
  const readout = text => { $("readout").textContent = text; };

  function drawHead(){
    const c = $("headCanvas"), n = K.tokens.length, nq = K.queryTokens.length, off = K.queryOffset, col = ink();
    // every row is drawn: rows get thinner as inputs grow (a canvas is at most 32,767 px tall), and labels thin out
    // to every k-th row when they would overlap
    const rows = Math.max(n, nq + off), rowH = Math.max(1, Math.min(18, Math.floor(30000 / rows))), top = 10, width = 640;
    c.width = width; c.height = top * 2 + rows * rowH;
    const g = c.getContext("2d"); g.clearRect(0, 0, c.width, c.height);
    const fontPx = Math.max(8, Math.min(14, rowH - 4)), every = Math.ceil((fontPx + 2) / rowH);
    g.font = fontPx + "px system-ui, 'Noto Sans CJK KR', sans-serif"; g.textBaseline = "middle";
    const xl = 180, xr = 460;
    for (let i = 0; i < nq; i++){ if ((i + off) % every && i !== state.hover) continue;
      g.fillStyle = i === state.hover ? COLORS[[...state.heads][0] % COLORS.length] || col.fg : col.fg; g.textAlign = "right";
      g.fillText(label(K.queryTokens[i]), xl - 8, top + (i + off) * rowH + rowH / 2); }
    for (let j = 0; j < n; j++){ if (j % every && j !== state.hoverKey) continue; g.textAlign = "left";
      g.fillStyle = j === state.hoverKey ? COLORS[[...state.heads][0] % COLORS.length] || col.fg : col.fg;
      g.fillText(label(K.tokens[j]), xr + 8, top + j * rowH + rowH / 2); }
    let drawnRows = 0, lines = 0;
    const lit = [];  // the exact weights of the hovered query's row or key's column, for the readout
    for (const h of state.heads){
      g.strokeStyle = COLORS[h % COLORS.length];
      for (let i = 0; i < nq; i++){
        if (state.hover >= 0 && state.hover !== i) continue;
        drawnRows++;
        const y1 = top + (i + off) * rowH + rowH / 2;
        for (const [j, w] of shownRow(state.layer, h, i)){
          if (state.hoverKey >= 0 && state.hoverKey !== j) continue;
          if (state.hover >= 0 || state.hoverKey >= 0) lit.push([h, i, j, w]);
          if (w < 1e-3) continue;  // invisible at this opacity; the readout still lists it
          g.globalAlpha = Math.min(1, w); g.lineWidth = 1 + 2 * w; g.beginPath();
          g.moveTo(xl, y1); g.lineTo(xr, top + j * rowH + rowH / 2); g.stroke(); lines++;
        }
      }
    }
    g.globalAlpha = 1;
    api.headView = {rowHeight: rowH, height: c.height, rowsDrawn: drawnRows, labelEvery: every, lines, top, xl, xr,
      hover: state.hover, hoverKey: state.hoverKey, lit};
    lit.sort((a, b) => b[3] - a[3]);
    readout(lit.length ? (state.hoverKey >= 0 ? W.intoKey(state.hoverKey, JSON.stringify(label(K.tokens[state.hoverKey]))) : W.fromQuery(state.hover, JSON.stringify(label(K.queryTokens[state.hover]))))
      + lit.slice(0, 8).map(([h, i, j, w]) => `${W.head(h)} ${JSON.stringify(label(state.hoverKey >= 0 ? K.queryTokens[i] : K.tokens[j]))} ${exact(w)}`).join(" · ") + (lit.length > 8 ? " · " + W.more(lit.length - 8) : "")
      : W.hoverHint);
    c.onmousemove = e => {
      const left = e.offsetX < (xl + xr) / 2, r = Math.floor((e.offsetY - top) / rowH);
      const i = left && r - off >= 0 && r - off < nq ? r - off : -1, j = !left && r >= 0 && r < n ? r : -1;
      if (i !== state.hover || j !== state.hoverKey){ state.hover = i; state.hoverKey = j; draw(); } };
    c.onmouseleave = () => { if (state.hover !== -1 || state.hoverKey !== -1){ state.hover = -1; state.hoverKey = -1; draw(); } };
  }
  function heatRows(canvas, rows, size, nk){
    // rows (queries) × keys averaged into at most size × size pixels, then scaled up without smoothing
    const n = nk, nq = rows.length, W = Math.min(n, size), H = Math.min(nq, size), col = ink();
    const cells = new Float32Array(W * H), perPixel = nq / H;
    for (let i = 0; i < nq; i++){ const y = Math.floor(i * H / nq);
      for (const [j, w] of rows[i]) cells[y * W + Math.floor(j * W / n)] += w / perPixel; }
    let max = 0; for (const v of cells) max = Math.max(max, v);
    const tmp = document.createElement("canvas"); tmp.width = W; tmp.height = H;
    const tg = tmp.getContext("2d"), img = tg.createImageData(W, H);
    for (let p = 0; p < W * H; p++){ const [r, gr, b] = col.heat(max ? cells[p] / max : 0);
      img.data[4 * p] = r; img.data[4 * p + 1] = gr; img.data[4 * p + 2] = b; img.data[4 * p + 3] = 255; }
    tg.putImageData(img, 0, 0);
    canvas.width = size; canvas.height = size;
    const g = canvas.getContext("2d"); g.imageSmoothingEnabled = false; g.drawImage(tmp, 0, 0, size, size);
  }
  const headRows = (l, h) => K.queryTokens.map((_, i) => shownRow(l, h, i));
  function drawModel(){
    const layers = [...Array(K.layers).keys()].filter(l => !state.shownLayers || state.shownLayers.has(l));
    const heads = [...Array(K.heads).keys()].filter(h => !state.shownHeads || state.shownHeads.has(h));
    const box = $("thumbs"); box.innerHTML = ""; box.style.gridTemplateColumns = `repeat(${heads.length}, 74px)`;
    $("filterInfo").textContent = W.shown(W.size(layers.length, heads.length));
    for (const l of layers) for (const h of heads){
      const c = document.createElement("canvas"); c.title = `layer ${l} · head ${h}`; c.id = `thumb-${l}-${h}`;
      heatRows(c, headRows(l, h), 72, K.tokens.length); if (state.zoom[0] === l && state.zoom[1] === h) c.className = "sel";
      c.onclick = () => { state.zoom = [l, h]; draw(); }; box.appendChild(c);
    }
    const z = $("zoom"), size = 520, nq = K.queryTokens.length, nk = K.tokens.length;
    heatRows(z, headRows(...state.zoom), size, nk);
    $("zoomCap").textContent = W.zoomCap(...state.zoom);
    z.onmousemove = e => { const i = Math.floor(e.offsetY * nq / size), j = Math.floor(e.offsetX * nk / size);
      if (i < 0 || j < 0 || i >= nq || j >= nk) return;
      api.zoomHover = {query: i, key: j, weight: K.weight(state.zoom[0], state.zoom[1], i, j)};
      readout(W.cell(...state.zoom, i, JSON.stringify(label(K.queryTokens[i])), j, JSON.stringify(label(K.tokens[j])), exact(api.zoomHover.weight))); };
    readout("");
  }
  function weightRow(layer, head, queries){
    // the stored weights of the chosen queries as a Map key -> weight, summed over the queries when there are several
    const sum = new Map();
    for (const i of queries) for (const [j, w] of K.row(layer, head, i)) sum.set(j, (sum.get(j) || 0) + w);
    return sum;
  }
  function drawQK(){
    // the chosen queries' rows, for the chosen layer and each chosen head: the weights the model used and, for one
    // query, the scores its softmax received (-Infinity: a key the mask forbade). Nothing is recomputed here.
    const c = $("qkCanvas"), col = ink(), queries = [...state.queries].sort((a, b) => a - b), heads = [...state.heads].sort((a, b) => a - b);
    const i = queries[0], dense = K.topK === null;
    const keySet = new Set();
    if (dense) K.tokens.forEach((_, j) => keySet.add(j));
    else for (const h of heads) for (const q of queries) for (const [j] of K.row(state.layer, h, q)) keySet.add(j);
    const keys = [...keySet].sort((a, b) => a - b), n = keys.length;
    const withScores = K.score !== null && queries.length === 1, labelH = 70, scoreH = withScores ? 120 : 0, weightH = 110, panelH = 26 + scoreH + weightH + labelH;
    c.width = Math.max(640, Math.min(1400, 60 + n * 22)); c.height = Math.max(1, heads.length) * panelH;
    const g = c.getContext("2d"); g.clearRect(0, 0, c.width, c.height);
    const bw = (c.width - 60) / Math.max(n, 1), fontPx = Math.max(7, Math.min(12, Math.floor(bw) - 2));
    const drawn = {layer: state.layer, query: i, queries, queryToken: K.queryTokens[i], keys, labels: keys.map(j => K.tokens[j]), heads: []};
    heads.forEach((h, p) => {
      const top = p * panelH, ws = weightRow(state.layer, h, queries), weights = keys.map(j => ws.get(j) || 0);
      const scores = withScores ? keys.map(j => K.score(state.layer, h, i, j)) : null;
      drawn.heads.push({head: h, weights, scores: scores && scores.map(v => v === -Infinity ? null : v)});
      g.fillStyle = COLORS[h % COLORS.length]; g.font = "bold 12px system-ui"; g.textAlign = "left"; g.textBaseline = "alphabetic";
      g.fillText(`head ${h}`, 4, top + 16);
      let y = top + 26;
      if (withScores){
        const finite = scores.filter(v => v !== -Infinity), span = Math.max(1e-9, ...finite.map(Math.abs)), mid = y + scoreH / 2;
        g.fillStyle = col.muted; g.font = "11px system-ui"; g.fillText(`score (softmax input), axis ±${span.toFixed(2)}`, 60, y + 8);
        g.strokeStyle = col.grid; g.beginPath(); g.moveTo(50, mid); g.lineTo(c.width - 10, mid); g.stroke();
        scores.forEach((v, k) => { const x = 50 + k * bw;
          if (v === -Infinity){ g.fillStyle = col.grid; g.fillRect(x + bw * 0.25, mid - 2, Math.max(1, bw * 0.5), 4); return; }
          const hgt = (scoreH / 2 - 12) * v / span; g.fillStyle = rgba(v >= 0 ? col.pos : col.neg, 1);
          g.fillRect(x, mid - Math.max(hgt, 0), Math.max(1, bw - 1), Math.abs(hgt)); });
        y += scoreH;
      }
      // bars on an absolute scale (full height = weight 1), so rows and heads compare at a glance
      const what = queries.length === 1 ? "weight the model used, 0 to 1" : `sum of ${queries.length} queries' weights, 0 to ${queries.length}`;
      g.fillStyle = col.muted; g.font = "11px system-ui"; g.fillText(what + (withScores ? " (dash above: masked key)" : ""), 60, y + 8);
      weights.forEach((w, k) => { const x = 50 + k * bw, hgt = (weightH - 28) * w / queries.length;
        g.fillStyle = col.bar; g.fillRect(x, y + weightH - hgt, Math.max(1, bw - 1), hgt);
        if (bw >= 26 && w > 0){ g.fillStyle = col.fg; g.font = "9px system-ui"; g.textAlign = "center"; g.fillText(w.toFixed(2), x + bw / 2, y + weightH - hgt - 3); g.textAlign = "left"; } });
      y += weightH;
      g.fillStyle = col.fg; g.font = fontPx + "px system-ui, 'Noto Sans CJK KR', sans-serif"; g.textBaseline = "middle";
      keys.forEach((j, k) => { g.save(); g.translate(50 + k * bw + bw / 2, y + 4); g.rotate(-Math.PI / 2); g.textAlign = "right";
        g.fillText(label(K.tokens[j]), 0, 0); g.restore(); });
    });
    api.drawn = drawn;
    c.onmousemove = e => { const k = Math.floor((e.offsetX - 50) / bw), p = Math.floor(e.offsetY / panelH);
      if (k < 0 || k >= n || p < 0 || p >= heads.length) return;
      const h = heads[p], j = keys[k], w = weightRow(state.layer, h, queries).get(j) || 0;
      readout(`head ${h}, key ${j} ${JSON.stringify(label(K.tokens[j]))}: weight ${exact(w)}` + (withScores ? `, score ${exact(K.score(state.layer, h, i, j))}` : "")); };
    readout("");
    const more = dense ? "" : ` (its ${K.topK} largest weights per head)`;
    $("qkInfo").textContent = heads.length
      ? `layer ${state.layer} · ${plural(heads.length, "head")} (${heads.join(", ")}) · ` + (queries.length === 1
        ? `query ${i} ${JSON.stringify(label(K.queryTokens[i]))}` : `${queries.length} queries (${queries.join(", ")}), weights summed`) + more
      : "choose a head above";
  }
  function drawNeuron(){
    // the seed's steps for one query and one key, from the hook points' vectors and the recorded score and weights
    const l = state.layer, h = Math.min(...state.heads), i = state.nQuery, j = state.nKey, V = K.vectors, col = ink();
    const q = K.vector("q", l, h, i), k = K.vector("k", l, h, j), v = K.vector("v", l, h, j), z = K.vector("z", l, h, i);
    const products = q.map((x, d) => x * k[d]), dot = products.reduce((a, b) => a + b, 0), scaled = dot * V.scale;
    const score = K.score ? K.score(l, h, i, j) : null, weight = K.weight(l, h, i, j);
    const weights = K.tokens.map((_, m) => K.weight(l, h, i, m));
    const maxP = Math.max(1e-12, ...products.map(Math.abs));
    const cell = (x, tint) => { const a = tint ? Math.min(1, Math.abs(x) / maxP) : 0;
      return `<td title="${exact(x)}" style="background:${rgba(x >= 0 ? col.pos : col.neg, 0.85 * a)};color:${a > 0.55 ? "#fff" : "inherit"}">${x.toPrecision(4)}</td>`; };
    const rows = q.map((_, d) => `<tr><th>${d}</th>${cell(q[d])}${cell(k[d])}${cell(products[d], true)}${cell(v[d])}${cell(weight * v[d])}${cell(z[d])}</tr>`).join("");
    const qt = JSON.stringify(label(K.queryTokens[i])), kt = JSON.stringify(label(K.tokens[j]));
    const bias = score !== null && score !== -Infinity ? score - scaled : null;
    const scaleText = Math.abs(V.scale * Math.sqrt(V.dim) - 1) < 1e-6 ? `÷ √${V.dim}` : `× ${V.scale}`;
    const softmax = weights.map((w, m) => `<td title="${exact(w)}" style="background:${rgba(col.pos, Math.min(1, w || 0))};color:${(w || 0) > 0.55 ? "#fff" : "inherit"};${m === j ? "outline:2px solid " + col.fg : ""}">${label(K.tokens[m])}<br>${w === undefined ? "–" : w.toFixed(3)}</td>`).join("");
    const bold = (x, text) => `<b title="${exact(x)}">${text}</b>`;
    const scoreText = score === null ? "" : score === -Infinity ? W.masked
      : W.recorded(bold(score, score.toPrecision(6)), Math.abs(bias) > 1e-5 * Math.max(1, Math.abs(score)) ? W.bias(bias.toPrecision(4)) : W.same);
    $("steps").innerHTML =
      `<div class="eq">${W.steps(bold(dot, dot.toPrecision(6)), `${scaleText}: ${bold(scaled, scaled.toPrecision(6))}`, scoreText, bold(weight, exact(weight)), K.tokens.length)}</div>` +
      `<table><tr>${softmax}</tr></table>` +
      `<div class="vec"><table><tr><th>d</th><th>q (${V.hooks.q || "hook_q"})</th><th>k (${V.hooks.k || "hook_k"})</th><th>q⊙k</th><th>v</th><th>p·v</th><th>z</th></tr>${rows}</table></div>`;
    $("neuronCap").textContent = W.neuronCap(l, h, i, qt, j, kt, V.dim);
    for (const [box, tokens, key, offset] of [["nQueries", K.queryTokens, "nQuery", 0], ["nKeys", K.tokens, "nKey", 0]]){
      $(box).innerHTML = "";
      tokens.forEach((t, m) => { const b = document.createElement("button"); b.textContent = `${m + offset}: ${label(t)}`;
        b.id = `${key}-${m}`; if (m === state[key]) b.className = "on"; b.onclick = () => { state[key] = m; draw(); }; $(box).appendChild(b); });
    }
    api.drawn = {layer: l, head: h, query: i, key: j, q, k, products, dot, scaled, score, weight, weights, v, z, scale: V.scale};
    readout("");
  }
  function drawAlign(){
    const a = D.alignment, c = $("alignCanvas"), col = ink(), cell = Math.max(8, Math.min(28, Math.floor(700 / Math.max(a.source.length, a.target.length))));
    const left = 120, top = 110; c.width = left + a.source.length * cell + 20; c.height = top + a.target.length * cell + 20;
    const g = c.getContext("2d"); g.font = "12px system-ui, 'Noto Sans CJK KR', sans-serif";
    a.weights.forEach((row, t) => row.forEach((v, s) => { g.fillStyle = rgba(col.pos, Math.min(1, v)); g.fillRect(left + s * cell, top + t * cell, cell - 1, cell - 1); }));
    g.fillStyle = col.fg; g.textAlign = "right"; a.target.forEach((t, i) => g.fillText(label(t), left - 6, top + i * cell + cell * 0.7));
    a.source.forEach((s, i) => { g.save(); g.translate(left + i * cell + cell * 0.7, top - 6); g.rotate(-Math.PI / 2); g.textAlign = "left"; g.fillText(label(s), 0, 0); g.restore(); });
    c.onmousemove = e => { const s = Math.floor((e.offsetX - left) / cell), t = Math.floor((e.offsetY - top) / cell);
      if (s >= 0 && t >= 0 && s < a.source.length && t < a.target.length) readout(`${JSON.stringify(label(a.target[t]))} → ${JSON.stringify(label(a.source[s]))}: ${exact(a.weights[t][s])}`); };
    readout("");
  }
  function drawFlow(){
    // rollout through layers 0..l or the last layer's flow, as computed in Python: queries × input tokens, and the
    // chosen queries' rows (summed when several) as bars over the input tokens
    const flow = state.flowKind === "flow", rows = flow ? K.flow : K.rollout[state.flowLayer], col = ink();
    $("flowLayer").disabled = flow; if (flow) $("flowLayer").value = K.layers - 1;
    heatRows($("flowHeat"), rows, 360, K.tokens.length);
    const queries = [...state.queries].sort((a, b) => a - b), total = new Map();
    for (const i of queries) for (const [j, w] of rows[i + K.queryOffset]) total.set(j, (total.get(j) || 0) + w);
    const keys = K.topK === null ? K.tokens.map((_, j) => j) : [...total.keys()].sort((a, b) => a - b);
    const values = keys.map(j => total.get(j) || 0), max = Math.max(1e-9, ...values);
    const c = $("flowBars"); c.width = Math.max(640, Math.min(1400, 60 + keys.length * 22)); c.height = 200;
    const g = c.getContext("2d"), bw = (c.width - 60) / Math.max(keys.length, 1); g.clearRect(0, 0, c.width, c.height);
    values.forEach((v, k) => { const h = 110 * v / max; g.fillStyle = "#805ad5"; g.fillRect(50 + k * bw, 120 - h, Math.max(1, bw - 1), h); });
    g.fillStyle = col.fg; g.font = Math.max(7, Math.min(12, Math.floor(bw) - 2)) + "px system-ui, 'Noto Sans CJK KR', sans-serif";
    keys.forEach((j, k) => { g.save(); g.translate(50 + k * bw + bw / 2, 126); g.rotate(-Math.PI / 2); g.textAlign = "right"; g.fillText(label(K.tokens[j]), 0, 0); g.restore(); });
    const what = flow ? "attention flow from the last layer" : `attention rollout through layer ${state.flowLayer}`;
    $("flowInfo").textContent = `${what}: how much of each input token reaches ` + (queries.length === 1
      ? `position ${queries[0]} ${JSON.stringify(label(K.queryTokens[queries[0]]))}` : `${queries.length} positions (summed)`) + " — choose positions in the query view";
    api.drawn = {kind: state.flowKind, layer: flow ? K.layers - 1 : state.flowLayer, queries, keys, values};
    c.onmousemove = e => { const k = Math.floor((e.offsetX - 50) / bw); if (k >= 0 && k < keys.length) readout(`${JSON.stringify(label(K.tokens[keys[k]]))}: ${exact(values[k])}`); };
    readout("");
  }
  const SCORE = {left: 60, top: 30, cell: 44};
  function drawScores(){
    // one cell per head, coloured by its score (positive and negative hues, scaled to the largest |score|)
    const v = K.headScores.values, c = $("scoreCanvas"), {left, top, cell} = SCORE, col = ink();
    c.width = left + K.heads * cell + 10; c.height = top + K.layers * cell + 10;
    const g = c.getContext("2d"), max = Math.max(1e-12, ...v.flat().map(Math.abs));
    g.font = "11px system-ui"; g.textAlign = "center"; g.textBaseline = "middle";
    for (let h = 0; h < K.heads; h++){ g.fillStyle = col.muted; g.fillText("h" + h, left + h * cell + cell / 2, top - 12); }
    for (let l = 0; l < K.layers; l++){
      g.fillStyle = col.muted; g.fillText("layer " + l, left / 2, top + l * cell + cell / 2);
      for (let h = 0; h < K.heads; h++){
        const x = v[l][h], a = Math.abs(x) / max;
        g.fillStyle = rgba(x >= 0 ? col.pos : col.neg, a); g.fillRect(left + h * cell, top + l * cell, cell - 2, cell - 2);
        if (state.zoom[0] === l && state.zoom[1] === h){ g.strokeStyle = col.fg; g.lineWidth = 2; g.strokeRect(left + h * cell, top + l * cell, cell - 2, cell - 2); }
        g.fillStyle = a > 0.6 ? "#fff" : col.fg; g.fillText(x.toPrecision(2), left + h * cell + cell / 2 - 1, top + l * cell + cell / 2);
      }
    }
    $("scoresCap").textContent = `${K.headScores.name} per head (rows: layers, columns: heads) — click a head to zoom into its attention pattern`;
    const at = e => [Math.floor((e.offsetY - top) / cell), Math.floor((e.offsetX - left) / cell)];
    c.onmousemove = e => { const [l, h] = at(e); if (l >= 0 && h >= 0 && l < K.layers && h < K.heads) readout(`layer ${l} head ${h}: ${exact(v[l][h])}`); };
    c.onclick = e => { const [l, h] = at(e);
      if (l < 0 || l >= K.layers || h < 0 || h >= K.heads) return;
      state.zoom = [l, h]; state.layer = l; state.heads = new Set([h]); $("layer").value = l; syncHeads();
      state.view = "model"; draw(); $("zoom").scrollIntoView(); };
    api.scoreLayout = SCORE;
    readout("");
  }
  function drawPixels(){
    // for the chosen pixel, each map computed in Python (gradients, MADE's mask, attention weights) over the image,
    // scaled to its own maximum (exact zeros stay blank); click a pixel to show its maps
    const P = D.pixelFields, box = $("pixelPanels"), col = ink(), cell = Math.max(6, Math.min(36, Math.floor(300 / Math.max(P.height, P.width))));
    const k = P.pixels.indexOf(state.pixel), row = Math.floor(state.pixel / P.width), column = state.pixel % P.width;
    box.innerHTML = "";
    const panels = [{name: "input image", values: P.image.flat(), image: true}, ...P.maps.map(m => ({name: m.name, values: m.values[k]}))];
    const drawn = {pixel: state.pixel, maps: {}};
    panels.forEach((panel, p) => {
      const wrap = document.createElement("div"), c = document.createElement("canvas"), cap = document.createElement("div");
      c.id = "pixelMap-" + p; c.width = P.width * cell; c.height = P.height * cell; cap.className = "cap"; cap.textContent = panel.name;
      const g = c.getContext("2d"), max = Math.max(1e-12, ...panel.values);
      panel.values.forEach((v, i) => { const a = panel.image ? v / (P.levels - 1) : v / max;
        g.fillStyle = panel.image ? rgba(state.theme === "dark" ? [255, 255, 255] : [0, 0, 0], a) : rgba(col.pos, a); g.fillRect((i % P.width) * cell, Math.floor(i / P.width) * cell, cell, cell); });
      g.strokeStyle = "#e53e3e"; g.lineWidth = 2; g.strokeRect(column * cell + 1, row * cell + 1, cell - 2, cell - 2);
      c.onclick = e => { const i = Math.floor(e.offsetY / cell) * P.width + Math.floor(e.offsetX / cell);
        if (P.pixels.includes(i)){ state.pixel = i; draw(); } };
      c.onmousemove = e => { const i = Math.floor(e.offsetY / cell) * P.width + Math.floor(e.offsetX / cell);
        if (i >= 0 && i < panel.values.length) readout(`${panel.name}, pixel (${Math.floor(i / P.width)}, ${i % P.width}): ${exact(panel.values[i])}`); };
      if (!panel.image) drawn.maps[panel.name] = panel.values;
      wrap.appendChild(c); wrap.appendChild(cap); box.appendChild(wrap);
    });
    $("pixelsCap").textContent = `pixel (${row}, ${column}) — red square; how much its prediction depends on each pixel (each map scaled to its maximum)` +
      (P.pixels.length > 1 ? " — click any pixel to show its maps" : "");
    api.drawn = drawn; api.pixelCell = cell;
    readout("");
  }
  function draw(){
    shadow.querySelector(".qkv").classList.toggle("dark", state.theme === "dark");
    $("theme").textContent = state.theme === "dark" ? W.light : W.dark;
    for (const v of VIEWS){ $("view-" + v).classList.toggle("on", v === state.view); const b = $("tab-" + v); if (b) b.classList.toggle("on", v === state.view); }
    ({head: drawHead, model: drawModel, qk: drawQK, neuron: drawNeuron, flow: drawFlow, scores: drawScores, pixels: drawPixels, align: drawAlign})[state.view]();
    api.draws++;
    // the latest explorer drawn, for tests and the browser console
    Object.assign(globalThis, {qkvState: state, qkvDrawn: api.drawn, qkvHeadView: api.headView, qkvScoreLayout: api.scoreLayout,
      qkvPixelCell: api.pixelCell, qkvDraws: (globalThis.qkvDraws || 0) + 1});
  }
  function showSelectedQuery(){
    // the query list shows the chosen query (by default the last token, below the list's first rows)
    const list = $("qtok"), option = list.options[Math.max(...state.queries)];
    if (option) list.scrollTop = Math.max(0, option.offsetTop - list.clientHeight + option.offsetHeight);
  }
  // for tests and the console: redraw after changing api.state, rebuild a kind's controls, the kind shown
  Object.assign(api, {draw, setupKind, kind: () => K});
  setupControls();
  if (D.opening && K){  // the view (and the neuron view's query and key) the explorer opens on
    if ($("tab-" + D.opening.view)) state.view = D.opening.view;
    if (D.opening.query !== undefined) state.nQuery = D.opening.query;
    if (D.opening.key !== undefined) state.nKey = D.opening.key;
  }
  draw(); showSelectedQuery();
  return api;
}

// anywidget's entry: the model's "data" trait holds the same JSON as the offline page
export default {
  render({model, el}){
    const show = () => mount(el, JSON.parse(model.get("data")));
    show();
    model.on("change:data", show);
    return () => model.off("change:data", show);
  },
};
