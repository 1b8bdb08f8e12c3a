// The explorer's page and words: its CSS, its HTML skeleton, and what it says in English and Korean. Joined
// before explorer_data.js and explorer.js into one ES module (qkv.visualization.html.MODULE).

const CSS = `
:host{display:block}
.qkv{--fg:#222;--bg:#fafafa;--panel:#fff;--muted:#666;--line:#ccc;--accent:#2b6cb0;--bad:#c53030;--badbg:#fff5f5;
  font:14px system-ui,'Noto Sans CJK KR',sans-serif;padding:16px;color:var(--fg);background:var(--bg)}
.qkv.dark{--fg:#e6e6e6;--bg:#16181d;--panel:#22252c;--muted:#a0a4ad;--line:#3a3f4a;--accent:#63a4ff;--bad:#ff7b7b;--badbg:#3a1f1f}
h1{font-size:18px;margin:0 0 4px} .note{color:var(--muted);font-size:12px;margin-bottom:10px}
.bar{display:flex;gap:14px;align-items:center;flex-wrap:wrap;margin:8px 0}
button,select,input{color:var(--fg);background:var(--panel);border:1px solid var(--line);border-radius:4px;font:inherit;font-size:13px}
.tabs button{padding:5px 12px;cursor:pointer}
.tabs button.on{background:var(--accent);color:#fff;border-color:var(--accent)}
.heads label{margin-right:6px;font-size:12px;white-space:nowrap;cursor:pointer;user-select:none}
.view{display:none}.view.on{display:block}
#thumbs{display:grid;gap:6px}#thumbs canvas{border:1px solid var(--line);cursor:pointer}
#thumbs canvas.sel{outline:3px solid var(--accent)}
.cap{font-size:11px;color:var(--muted);text-align:center}
.readout{font:12px ui-monospace,monospace;color:var(--fg);min-height:16px;margin:4px 0;white-space:pre-wrap}
.filter input{width:110px}.filter input.bad{border-color:var(--bad);background:var(--badbg)}
#qtok{min-width:160px}
canvas{background:var(--panel)}
.neuron{display:flex;gap:16px;align-items:flex-start}
.toks{display:flex;flex-direction:column;gap:2px;max-height:460px;overflow:auto}
.toks button{text-align:left;padding:2px 8px;cursor:pointer;font-size:12px}
.toks button.on{background:var(--accent);color:#fff}
.steps{flex:1;min-width:420px}
.steps table{border-collapse:collapse;font:12px ui-monospace,monospace}
.steps td,.steps th{border:1px solid var(--line);padding:2px 6px;text-align:right}
.steps th{color:var(--muted);font-weight:normal}
.vec{max-height:300px;overflow:auto;display:inline-block}
.eq{font:13px ui-monospace,monospace;margin:8px 0;line-height:1.7}
.eq b{color:var(--accent)}
`;

const SKELETON = `
<div class="qkv">
<h1 id="title"></h1>
<div class="note" id="note"></div>
<div class="bar"><span id="kindBox"><label><span data-t="attention">attention</span> <select id="kind"></select></label></span>
  <span id="pairBox"><label><span data-t="sentences">sentences</span> <select id="pair"><option value="all" data-t="all">all</option><option value="AA">A → A</option><option value="BB">B → B</option><option value="AB">A → B</option><option value="BA">B → A</option></select></label></span>
  <button id="theme" title="dark or light display">dark</button></div>
<div class="bar tabs" id="tabs"></div>
<div class="bar" id="layerBar"><label><span data-t="layer">layer</span> <select id="layer"></select></label><span class="heads" id="heads" title="click: show or hide a head; double-click: this head alone (again: all heads)"></span></div>
<div class="readout" id="readout"></div>
<div class="view" id="view-head"><canvas id="headCanvas"></canvas></div>
<div class="view" id="view-model"><div class="bar filter"><label><span data-t="showLayers">show layers</span> <input id="layerFilter" placeholder="all, e.g. 0-3,5"></label><label><span data-t="heads">heads</span> <input id="headFilter" placeholder="all, e.g. 0,2,7-11"></label><span id="filterInfo" class="cap"></span></div><div id="thumbs"></div><p class="cap" id="zoomCap"></p><canvas id="zoom" width="520" height="520"></canvas></div>
<div class="view" id="view-qk"><div class="bar"><label><span data-t="queryTokens">query tokens</span> <select id="qtok" multiple></select></label><span id="qkInfo" class="cap"></span></div><canvas id="qkCanvas" width="900" height="360"></canvas></div>
<div class="view" id="view-neuron"><p class="cap" id="neuronCap" style="text-align:left"></p><div class="neuron"><div><div class="cap" data-t="query">query</div><div class="toks" id="nQueries"></div></div><div class="steps" id="steps"></div><div><div class="cap" data-t="key">key</div><div class="toks" id="nKeys"></div></div></div></div>
<div class="view" id="view-flow"><div class="bar"><label><span data-t="measure">measure</span> <select id="flowKind"></select></label><label><span data-t="throughLayer">through layer</span> <select id="flowLayer"></select></label><span id="flowInfo" class="cap"></span></div><canvas id="flowHeat" width="360" height="360"></canvas><br><canvas id="flowBars" width="900" height="200"></canvas></div>
<div class="view" id="view-scores"><p class="cap" id="scoresCap" style="text-align:left"></p><canvas id="scoreCanvas"></canvas></div>
<div class="view" id="view-pixels"><p class="cap" id="pixelsCap" style="text-align:left"></p><div id="pixelPanels" class="bar"></div></div>
<div class="view" id="view-align"><canvas id="alignCanvas"></canvas></div>
</div>`;


// the words of the explorer, in English and Korean (the payload's "lang"; numbers and tokens are the same in both)
const WORDS = {
  en: {
    views: {head: "Head view", model: "Model view", qk: "Query view", neuron: "Neuron view", flow: "Rollout / flow", scores: "Head scores", pixels: "Pixel field", align: "Alignment"},
    attention: "attention", sentences: "sentences", all: "all", layer: "layer", showLayers: "show layers", heads: "heads",
    queryTokens: "query tokens", measure: "measure", throughLayer: "through layer", query: "query", key: "key", dark: "dark", light: "light",
    kinds: {},
    size: (l, h) => `${plural(l, "layer")} × ${plural(h, "head")}`,
    selfNote: (size, name, n) => `${size} of ${name}, ${n} tokens`,
    crossNote: (size, name, nq, nk) => `${size} of ${name}, ${nq} target tokens (left) looking at ${nk} source tokens (right)`,
    exactNote: "every weight is stored exactly (float32)",
    halfNote: e => `weights stored as float16 (largest rounding error ${e})`,
    topNote: (k, n) => `each query row keeps its ${k} largest weights (${n} keys), float32`,
    hoverHint: "hover a query (left) or a key (right) to see its lines and exact weights",
    intoKey: (j, t) => `into key ${j} ${t}: `, fromQuery: (i, t) => `from query ${i} ${t}: `, head: h => `head ${h}`, more: n => `… ${n} more`,
    shown: size => `${size} shown`,
    zoomCap: (l, h) => `layer ${l} · head ${h} (rows: queries, columns: keys) — click a thumbnail to zoom, hover for the exact weight`,
    cell: (l, h, i, qt, j, kt, w) => `layer ${l} head ${h}: query ${i} ${qt} → key ${j} ${kt}: ${w}`,
    steps: (dot, scale, score, weight, keys) => `1. q · k = Σ q⊙k = ${dot} (the coloured column, summed)<br>2. ${scale}` + score +
      `<br>4. softmax over the ${keys} keys (hook_pattern): weight ${weight}<br>5. the head's output (hook_z) = Σ over keys of weight × v; this key adds weight × v (column p·v)`,
    masked: "<br>3. the model's score for this key: −∞ (masked: weight 0)",
    recorded: (score, note) => `<br>3. the score the softmax received (hook_attn_scores): ${score} ${note}`,
    same: "(= step 2)", bias: b => `(= step 2 + ${b}: a bias such as ALiBi)`,
    neuronCap: (l, h, i, qt, j, kt, d) => `layer ${l} · head ${h} · query ${i} ${qt} · key ${j} ${kt} (d = ${d}) — click a token on either side to pick the query or the key`,
    neuronLimit: n => `(the neuron view: up to ${n} tokens)`,
  },
  ko: {
    views: {head: "헤드 보기", model: "모델 보기", qk: "쿼리 보기", neuron: "뉴런 보기", flow: "롤아웃 / 흐름", scores: "헤드 점수", pixels: "픽셀 영역", align: "정렬"},
    attention: "어텐션", sentences: "문장", all: "전체", layer: "층", showLayers: "보일 층", heads: "헤드",
    queryTokens: "쿼리 토큰", measure: "척도", throughLayer: "거친 층", query: "쿼리", key: "키", dark: "어둡게", light: "밝게",
    kinds: {"self-attention": "셀프 어텐션", "encoder self-attention": "인코더 셀프 어텐션", "decoder self-attention": "디코더 셀프 어텐션", "cross-attention": "크로스 어텐션"},
    size: (l, h) => `${l}개 층 × ${h}개 헤드`,
    selfNote: (size, name, n) => `${name} ${size}, 토큰 ${n}개`,
    crossNote: (size, name, nq, nk) => `${name} ${size}: 목표 토큰 ${nq}개(왼쪽)가 원문 토큰 ${nk}개(오른쪽)를 봅니다`,
    exactNote: "모든 가중치를 정확히(float32) 저장했습니다",
    halfNote: e => `가중치를 float16으로 저장했습니다(가장 큰 반올림 오차 ${e})`,
    topNote: (k, n) => `쿼리 행마다 가장 큰 가중치 ${k}개만 저장했습니다(키 ${n}개, float32)`,
    hoverHint: "왼쪽의 쿼리나 오른쪽의 키에 마우스를 올리면 그 선과 정확한 가중치가 보입니다",
    intoKey: (j, t) => `키 ${j} ${t}로: `, fromQuery: (i, t) => `쿼리 ${i} ${t}에서: `, head: h => `헤드 ${h}`, more: n => `… ${n}개 더`,
    shown: size => `${size} 표시`,
    zoomCap: (l, h) => `층 ${l} · 헤드 ${h} (행: 쿼리, 열: 키) — 작은 그림을 누르면 확대, 마우스를 올리면 정확한 가중치`,
    cell: (l, h, i, qt, j, kt, w) => `층 ${l} 헤드 ${h}: 쿼리 ${i} ${qt} → 키 ${j} ${kt}: ${w}`,
    steps: (dot, scale, score, weight, keys) => `1. q · k = Σ q⊙k = ${dot} (색칠한 열의 합)<br>2. ${scale}` + score +
      `<br>4. 키 ${keys}개에 대한 소프트맥스 (hook_pattern): 가중치 ${weight}<br>5. 헤드의 출력 (hook_z) = 모든 키에 대해 가중치 × v의 합; 이 키의 몫은 가중치 × v (p·v 열)`,
    masked: "<br>3. 이 키에 대한 모델의 점수: −∞ (마스크: 가중치 0)",
    recorded: (score, note) => `<br>3. 소프트맥스가 받은 점수 (hook_attn_scores): ${score} ${note}`,
    same: "(= 2단계)", bias: b => `(= 2단계 + ${b}: ALiBi 같은 편향)`,
    neuronCap: (l, h, i, qt, j, kt, d) => `층 ${l} · 헤드 ${h} · 쿼리 ${i} ${qt} · 키 ${j} ${kt} (d = ${d}) — 양쪽의 토큰을 누르면 쿼리나 키를 고릅니다`,
    neuronLimit: n => `(뉴런 보기: 토큰 ${n}개까지)`,
  },
};

