"""The interactive page in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright): it loads
offline with no console errors and no network requests, the controls change what is drawn, and it is not blank."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from qkv.attention import MultiHeadAttention
from qkv.decoding.translate import cross_attention
from qkv.models import GPT, GPTConfig, Transformer, TransformerConfig
from qkv.visualization import capture_attention
from qkv.visualization.html import write_attention_page
from tests.browser import chromium, open_page
from tests.conftest import page_data


def _attention(layers: int, heads: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return [
        torch.softmax(torch.randn(heads, n, n, generator=g).masked_fill(~causal, float("-inf")), -1)
        for _ in range(layers)
    ]


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def _open(browser, path: Path):
    watched = open_page(browser, path)
    page, errors, requests = watched.page, watched.errors, watched.requests
    page.wait_for_function("window.qkvDraws >= 1")
    page.evaluate("window.R = document.querySelector('.qkv-explorer').shadowRoot")  # the explorer's own DOM
    return page, errors, requests


def _top_row(path: Path, layer: int, head: int, query: int) -> list:
    """The ``[[key, weight], ...]`` a long input's page stores for one query row (its top-k, largest first)."""
    kind = page_data(path)["kinds"][0]
    stored, heads, queries = kind["weights"], kind["heads"], len(kind["queryTokens"])
    assert stored["encoding"] == "top-k"
    keys, values = (
        np.frombuffer(base64.b64decode(stored[name]), dtype) for name, dtype in (("keys", "<i4"), ("data", "<f4"))
    )
    row = (layer * heads + head) * queries + query
    chosen = slice(row * stored["topK"], (row + 1) * stored["topK"])
    return [[int(j), float(w)] for j, w in zip(keys[chosen], values[chosen]) if w > 0]


def _canvas_hash(page, canvas_id: str) -> str:
    return hashlib.sha256(page.evaluate(f"R.getElementById('{canvas_id}').toDataURL()").encode()).hexdigest()


def test_page_loads_offline_and_controls_redraw(browser, tmp_path):
    tokens = list("To be, 또는 not")
    n = len(tokens)
    path = write_attention_page(
        tmp_path / "page.html",
        _attention(3, 4, n),
        tokens,
        title="test page",
        scores=[torch.randn(4, n, n) for _ in range(3)],
        focus=(2, 1),
        alignment=(["le", "chat"], ["the", "cat"], torch.tensor([[0.9, 0.1], [0.2, 0.8]])),
    )
    page, errors, requests = _open(browser, path)
    head_before = _canvas_hash(page, "headCanvas")
    page.select_option("#layer", "0")
    assert page.evaluate("window.qkvState.layer") == 0
    head_layer0 = _canvas_hash(page, "headCanvas")
    assert head_layer0 != head_before, "switching the layer did not change the drawing"
    page.check("#head-2")
    assert _canvas_hash(page, "headCanvas") != head_layer0, "adding a head did not change the drawing"
    page.click("#tab-model")
    zoom_before = _canvas_hash(page, "zoom")
    page.click("#thumb-0-3")
    assert page.evaluate("window.qkvState.zoom") == [0, 3]
    assert _canvas_hash(page, "zoom") != zoom_before, "zooming into another head did not change the drawing"
    page.click("#tab-qk")
    qk_before = _canvas_hash(page, "qkCanvas")
    page.select_option("#qtok", "5")
    assert _canvas_hash(page, "qkCanvas") != qk_before
    page.click("#tab-align")
    shot = page.screenshot(path=str(tmp_path / "shot.png"), full_page=True)
    assert len(set(shot[100:])) > 50  # a blank page compresses to a handful of distinct bytes
    assert errors == [], errors
    assert requests == [path.as_uri()], f"the page made network requests: {requests}"


def test_long_input_stays_responsive_and_says_so(browser, tmp_path):
    n = 512
    tokens = [f"t{i}" for i in range(n)]
    path = write_attention_page(tmp_path / "long.html", _attention(12, 12, n, seed=1), tokens, title="long")
    assert path.stat().st_size < 15_000_000
    page, errors, _ = _open(browser, path)
    assert "8 largest weights" in page.inner_text("#note")
    took = page.evaluate("""() => { const t = performance.now(); R.getElementById('tab-model').click();
                                   return performance.now() - t; }""")
    assert took < 5000, f"drawing 144 thumbnails took {took:.0f} ms"
    page.select_option("#layer", "5")
    page.click("#tab-qk")  # the query view of a long input: the kept (largest) weights, labelled, no scores
    drawn = page.evaluate("window.qkvDrawn")
    row = dict(_top_row(path, 5, 0, n - 1))  # layer 5, head 0 (the page opens on head 0), last query
    assert drawn["keys"] == sorted(row) and drawn["labels"] == [tokens[j] for j in sorted(row)]
    assert drawn["heads"][0]["weights"] == [row[j] for j in sorted(row)] and drawn["heads"][0]["scores"] is None
    assert "8 largest weights per head" in page.inner_text("#qkInfo")
    assert errors == []


@pytest.mark.parametrize("targets", [3, 11], ids=["fewer-queries", "more-queries"])
def test_cross_attention_page_draws_target_rows_against_source_rows(browser, tmp_path, targets):
    """A decoder's cross-attention: query tokens (the target) are not a suffix of the keys (the source)."""
    source, target = list("5 Mar 21"), [f"y{i}" for i in range(targets)]
    g = torch.Generator().manual_seed(0)
    layers = [torch.softmax(torch.randn(2, targets, len(source), generator=g), -1) for _ in range(2)]
    path = write_attention_page(
        tmp_path / "cross.html",
        layers,
        source,
        query_tokens=target,
        title="cross",
        alignment=(source, target, layers[-1].mean(0)),
    )
    page, errors, requests = _open(browser, path)
    assert f"{targets} target tokens (left) looking at {len(source)} source tokens" in page.inner_text("#note")
    height = page.evaluate("R.getElementById('headCanvas').height")
    assert height >= 20 + max(targets, len(source)) * 18  # every target and source row has room
    before = _canvas_hash(page, "headCanvas")
    page.hover("#headCanvas", position={"x": 100, "y": 10 + 18 * (targets - 1) + 9})  # the last target token
    assert page.evaluate("window.qkvState.hover") == targets - 1
    assert _canvas_hash(page, "headCanvas") != before, "hovering a target token did not focus its lines"
    page.click("#tab-model")
    page.click("#tab-align")
    assert errors == [], errors
    assert requests == [path.as_uri()]


class _WindowedOrPadded(torch.nn.Module):
    """One self-attention layer with a causal sliding window or a key padding mask (qkv's GPT has neither)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.attn = MultiHeadAttention(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "window":
            return self.attn(x, causal=True, window=(2, 0))[0]
        keep = torch.ones(x.shape[:2], dtype=torch.bool)
        keep[:, -3:] = False  # the last three tokens are padding
        return self.attn(x, key_mask=keep)[0]


def _captured_page(tmp_path, kind: str):
    """(page path, per-layer captured weights (heads, q, k), per-layer scores or None, tokens, forbidden (q, k))."""
    torch.manual_seed(0)
    if kind == "cross":
        model = Transformer(
            TransformerConfig(src_vocab_size=12, tgt_vocab_size=10, embed_dim=16, num_heads=2, ffn_dim=32, dropout=0)
        ).eval()
        src, out = torch.tensor([[3, 4, 5, 6, 7, 2]]), torch.tensor([[4, 5, 6, 2]])
        weights = [w[0] for w in cross_attention(model, src, out)]
        source, target = [f"s{i}" for i in range(6)], [f"t{i}" for i in range(4)]
        path = write_attention_page(tmp_path / "p.html", weights, source, query_tokens=target, title=kind)
        return path, weights, None, source, torch.zeros(4, 6, dtype=torch.bool)
    n = 10
    tokens = [f"w{i}" for i in range(n)]
    if kind == "causal":
        model = GPT(GPTConfig(vocab_size=20, max_seq_len=16, num_layers=2, num_heads=2, embed_dim=16)).eval()
        inputs = (torch.randint(0, 20, (1, n)),)
        forbidden = torch.ones(n, n, dtype=torch.bool).triu(1)
    else:
        model = _WindowedOrPadded(kind).eval()
        inputs = (torch.randn(1, n, 16),)
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        forbidden = (j > i) | (j < i - 2) if kind == "window" else (j >= n - 3).expand(n, n)
    with torch.no_grad(), capture_attention(model, scores=True) as cap:
        model(*inputs)
    weights = [w[0] for w in cap.all_layers()]
    scores = [cap.scores(layer)[0] for layer in cap.layers]
    path = write_attention_page(tmp_path / "p.html", weights, tokens, scores=scores, title=kind)
    return path, weights, scores, tokens, forbidden


@pytest.mark.parametrize("kind", ["causal", "window", "padded", "cross"])
def test_query_view_draws_exactly_the_captured_weights(browser, tmp_path, kind):
    """The numbers the query view draws are the weights the model used (capture_attention / the decoder's own
    cross-attention), for every layer, head and query; masked keys have weight 0 and no score; bars are labelled."""
    path, weights, scores, tokens, forbidden = _captured_page(tmp_path, kind)
    page, errors, _ = _open(browser, path)
    page.click("#tab-qk")
    heads = weights[0].shape[0]
    for h in range(1, heads):
        page.check(f"#head-{h}")
    for layer in range(len(weights)):
        page.select_option("#layer", str(layer))
        for query in range(weights[layer].shape[1]):
            page.select_option("#qtok", str(query))
            drawn = page.evaluate("window.qkvDrawn")
            assert drawn["layer"] == layer and drawn["query"] == query
            assert drawn["labels"] == tokens and drawn["keys"] == list(range(len(tokens)))
            assert [d["head"] for d in drawn["heads"]] == list(range(heads))
            for d in drawn["heads"]:
                want = weights[layer][d["head"], query]
                torch.testing.assert_close(
                    torch.tensor(d["weights"], dtype=torch.float32), want.float(), rtol=0, atol=5e-5
                )  # 4 decimals
                assert all(w == 0 for w, f in zip(d["weights"], forbidden[query]) if f)
                if scores is None:
                    assert d["scores"] is None
                    continue
                assert [s is None for s in d["scores"]] == forbidden[query].tolist()
                got = torch.tensor([s if s is not None else float("-inf") for s in d["scores"]])
                torch.testing.assert_close(got, scores[layer][d["head"], query], rtol=0, atol=5e-5)
        caption = page.inner_text("#qkInfo")
        assert caption.startswith(f"layer {layer} · {heads} heads"), caption
    assert errors == [], errors


def _analysis_page(tmp_path, n: int = 9):
    """A GPT's captured weights with rollout (every layer), flow and a head-score grid."""
    from qkv.analysis import attention_flow, attention_rollout

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, max_seq_len=16, num_layers=3, num_heads=4, embed_dim=16)).eval()
    with torch.no_grad(), capture_attention(model) as cap:
        model(torch.randint(0, 20, (1, n)))
    layers = cap.all_layers()
    rollout = attention_rollout(layers, every_layer=True)[:, 0]
    flow = attention_flow(layers)[0]
    scores = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    tokens = [f"w{i}" for i in range(n)]
    path = write_attention_page(
        tmp_path / "analysis.html", [w[0] for w in layers], tokens, title="analysis", rollout=rollout, flow=flow,
        head_scores=("ablation", scores),
    )  # fmt: skip
    return path, [w[0] for w in layers], rollout, flow, scores, tokens


def test_rollout_and_flow_view_draws_the_python_numbers_for_the_chosen_positions(browser, tmp_path):
    path, _, rollout, flow, _, tokens = _analysis_page(tmp_path)
    page, errors, requests = _open(browser, path)
    page.click("#tab-flow")
    for layer in (2, 0):
        page.select_option("#flowLayer", str(layer))
        drawn = page.evaluate("window.qkvDrawn")
        assert drawn["kind"] == "rollout" and drawn["layer"] == layer and drawn["queries"] == [8]
        torch.testing.assert_close(
            torch.tensor(drawn["values"], dtype=torch.float64), rollout[layer, 8], rtol=0, atol=5e-5
        )
    heat = _canvas_hash(page, "flowHeat")
    page.select_option("#flowKind", "flow")
    drawn = page.evaluate("window.qkvDrawn")
    assert drawn["kind"] == "flow" and _canvas_hash(page, "flowHeat") != heat
    torch.testing.assert_close(torch.tensor(drawn["values"], dtype=torch.float64), flow[8], rtol=0, atol=5e-5)
    # several positions chosen in the query view: their rows summed
    page.click("#tab-qk")
    page.select_option("#qtok", ["3", "5", "8"])
    page.click("#tab-flow")
    drawn = page.evaluate("window.qkvDrawn")
    assert drawn["queries"] == [3, 5, 8]
    torch.testing.assert_close(
        torch.tensor(drawn["values"], dtype=torch.float64), flow[[3, 5, 8]].sum(0), rtol=0, atol=2e-4
    )
    assert "3 positions (summed)" in page.inner_text("#flowInfo")
    assert errors == [] and requests == [path.as_uri()]


def test_several_query_tokens_sum_their_weights_and_hide_the_scores(browser, tmp_path):
    path, weights, _, _, _, tokens = _analysis_page(tmp_path)
    page, errors, _ = _open(browser, path)
    page.click("#tab-qk")
    page.check("#head-1")
    page.select_option("#qtok", ["2", "6"])
    drawn = page.evaluate("window.qkvDrawn")
    assert drawn["queries"] == [2, 6] and [d["head"] for d in drawn["heads"]] == [0, 1]
    for d in drawn["heads"]:
        want = weights[2][d["head"], 2] + weights[2][d["head"], 6]
        torch.testing.assert_close(torch.tensor(d["weights"]), want, rtol=0, atol=2e-4)
    assert "2 queries (2, 6), weights summed" in page.inner_text("#qkInfo")
    assert errors == []


def test_head_score_grid_zooms_into_the_clicked_head_and_filters_narrow_the_model_view(browser, tmp_path):
    path, _, _, _, scores, _ = _analysis_page(tmp_path)
    page, errors, _ = _open(browser, path)
    assert page.evaluate("window.qkvState.view") == "scores"  # a page with head scores opens on them
    assert "ablation per head" in page.inner_text("#scoresCap")
    layout = page.evaluate("window.qkvScoreLayout")
    layer, head = 1, 3
    at = {"x": layout["left"] + head * layout["cell"] + 10, "y": layout["top"] + layer * layout["cell"] + 10}
    page.click("#scoreCanvas", position=at)
    assert page.evaluate("[window.qkvState.view, window.qkvState.zoom, window.qkvState.layer]") == ["model", [1, 3], 1]
    assert page.is_checked("#head-3") and not page.is_checked("#head-0")
    assert page.evaluate("R.querySelectorAll('#thumbs canvas').length") == 12
    page.fill("#layerFilter", "1-2")
    page.fill("#headFilter", "0,3")
    assert page.evaluate("R.querySelectorAll('#thumbs canvas').length") == 4
    assert page.evaluate("[...R.querySelectorAll('#thumbs canvas')].map(c => c.id)") == [
        "thumb-1-0", "thumb-1-3", "thumb-2-0", "thumb-2-3",
    ]  # fmt: skip
    assert "2 layers × 2 heads shown" in page.inner_text("#filterInfo")
    page.fill("#layerFilter", "5")  # no layer 5: refused, marked, nothing changes
    assert "bad" in page.get_attribute("#layerFilter", "class")
    assert page.evaluate("R.querySelectorAll('#thumbs canvas').length") == 4
    assert errors == []


def test_a_2000_token_input_keeps_every_row(browser, tmp_path):
    n = 2000
    tokens = [f"t{i}" for i in range(n)]
    path = write_attention_page(tmp_path / "long.html", _attention(2, 2, n, seed=3), tokens, title="very long")
    page, errors, _ = _open(browser, path)
    view = page.evaluate("window.qkvHeadView")
    assert view["rowsDrawn"] == n and view["height"] <= 32767 and view["rowHeight"] >= 1
    assert page.evaluate("R.getElementById('qtok').options.length") == n
    # the list opens scrolled to its selected query (the last token), not to token 0
    top, height, option_top, option_height = page.evaluate(
        "(() => { const l = R.getElementById('qtok'), o = l.options[l.options.length - 1];"
        " return [l.scrollTop, l.clientHeight, o.offsetTop, o.offsetHeight]; })()"
    )
    assert page.evaluate(f"R.getElementById('qtok').options[{n - 1}].selected")
    assert top <= option_top and option_top + option_height <= top + height + 1, (top, height, option_top)
    page.click("#tab-qk")
    page.select_option("#qtok", str(n - 1))
    assert page.evaluate("window.qkvDrawn")["query"] == n - 1
    assert errors == []


def test_page_refuses_rollout_and_scores_of_the_wrong_shape(tmp_path):
    from qkv.errors import ShapeError

    weights = _attention(2, 3, 5)
    with pytest.raises(ShapeError, match=r"rollout must be \(2, 5, 5\)"):
        write_attention_page(tmp_path / "x.html", weights, list("abcde"), rollout=torch.rand(1, 5, 5))
    with pytest.raises(ShapeError, match=r"head_scores must be \(layers, heads\) = \(2, 3\)"):
        write_attention_page(tmp_path / "x.html", weights, list("abcde"), head_scores=("x", torch.rand(3, 2)))


def test_pixel_field_page_without_attention_draws_the_maps_and_switches_pixel_on_click(browser, tmp_path):
    from qkv.visualization.html import PixelFields

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 17, (4, 5), generator=g)
    maps = {"gradient": torch.rand(20, 4, 5, generator=g), "mask": (torch.rand(20, 4, 5, generator=g) > 0.5).double()}
    fields = PixelFields(maps, list(range(20)), image, 17, pixel=7)
    path = write_attention_page(tmp_path / "pixels.html", [], [], title="pixels", pixel_fields=fields)
    page, errors, requests = _open(browser, path)
    assert page.evaluate("window.qkvState.view") == "pixels"
    assert page.evaluate("[...R.querySelectorAll('#tabs button')].map(b => b.id)") == ["tab-pixels"]
    drawn = page.evaluate("window.qkvDrawn")
    assert drawn["pixel"] == 7
    torch.testing.assert_close(
        torch.tensor(drawn["maps"]["gradient"]), maps["gradient"][7].flatten(), rtol=0, atol=1e-5
    )
    cell = page.evaluate("window.qkvPixelCell")
    page.click("#pixelMap-1", position={"x": 3 * cell + 2, "y": 2 * cell + 2})  # row 2, column 3 = pixel 13
    drawn = page.evaluate("window.qkvDrawn")
    assert drawn["pixel"] == 13 and drawn["maps"]["mask"] == maps["mask"][13].flatten().tolist()
    assert "pixel (2, 3)" in page.inner_text("#pixelsCap")
    assert errors == [] and requests == [path.as_uri()]
