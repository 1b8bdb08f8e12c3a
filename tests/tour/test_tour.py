"""qkv tour: each step's claim checked on the numbers the page shows (against hand computations where there is
one), and the page in both languages in Chromium (no console errors, no requests, every figure drawn)."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from qkv.cli import main
from qkv.tour import build_tour, write_tour
from qkv.tour.models import KOREAN
from qkv.tour.runs import DATES_COMMANDS, GPT_COMMANDS, TOUR_DIR, dates_runs, gpt_run, train_small_gpt


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> dict:
    runs = tmp_path_factory.mktemp("runs")  # the tour's own small GPT (seconds); no translators: their steps say so
    train_small_gpt(runs / TOUR_DIR / "gpt")
    return {step.key: step for step in build_tour(runs, train=False)}


def test_the_tour_has_every_step_in_order(steps):
    assert list(steps) == ["i_go_home", "single_head", "scaling", "multi_head", "masking", "context", "bottleneck",
                           "score_functions", "beam", "masks"]  # fmt: skip


def test_step1_each_word_weighs_itself_most_then_learned_projections_reach_the_target(steps):
    n = steps["i_go_home"].numbers
    plain = n["plain"]
    assert all(int(row.argmax()) == i for i, row in enumerate(plain))  # diagonal dominance
    torch.testing.assert_close(n["learned_row"], n["target"], rtol=0, atol=0.02)
    torch.testing.assert_close(n["new_i"], n["weighted_sum"], rtol=1e-5, atol=1e-6)
    # the neuron view runs the same head as an attention module: its hook points hold the tour's numbers
    neuron = n["neuron"]
    torch.testing.assert_close(neuron.weights[0][0, 0], n["learned_row"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(neuron.vectors.z[0][0, 0], n["new_i"], rtol=1e-5, atol=1e-6)
    q, k = neuron.vectors.q[0][0, 0], neuron.vectors.k[0][0, 2]  # "I" asks, "home" answers
    torch.testing.assert_close((q * k).sum() * neuron.vectors.scale, neuron.scores[0][0, 0, 2], rtol=1e-5, atol=1e-6)


def test_step2_nouns_put_their_weight_on_their_adjectives(steps):
    n = steps["single_head"].numbers
    torch.testing.assert_close(n["weights"].sum(dim=0), torch.ones(8))  # softmax down each query's column
    assert n["creature_on_adjectives"] > 0.9 and n["forest_on_verdant"] > 0.9
    assert n["the_creature_dot"] == 0 and n["fluffy_creature_dot"] > 0


def test_step2_the_minilm_head_found_is_the_best_of_all_72(steps):
    import qkv

    n = steps["single_head"].numbers
    model, tokenizer = qkv.load_pretrained("minilm").eval(), qkv.load_tokenizer("minilm")
    ids, mask = tokenizer.batch(["a fluffy blue creature roamed the verdant forest"])
    with torch.no_grad():
        weights = model(ids, mask, return_attention=True).attentions  # per layer (1, heads, n, n)
    # creature (4) -> fluffy (2), blue (3); forest (11) -> ve, ##rdan, ##t (8, 9, 10)
    scores = torch.stack([(w[0, :, 4, [2, 3]].sum(-1) + w[0, :, 11, [8, 9, 10]].sum(-1)) / 2 for w in weights])
    torch.testing.assert_close(n["minilm_scores"], scores, rtol=1e-4, atol=1e-5)
    assert divmod(int(scores.argmax()), 12) == (n["minilm_layer"], n["minilm_head"])
    assert n["minilm_score"] > 5 * n["minilm_median"]


def test_step3_the_spread_grows_as_root_dk_and_softmax_saturates_without_the_scale(steps):
    n = steps["scaling"].numbers
    for d, spread, scaled in zip(n["dims"], n["spread"], n["spread_scaled"]):
        assert spread == pytest.approx(math.sqrt(d), rel=0.1) and scaled == pytest.approx(1.0, rel=0.1)
    assert all(a < b for a, b in zip(n["peak"], n["peak"][1:]))  # saturation grows with d_k
    assert max(n["peak_scaled"]) - min(n["peak_scaled"]) < 0.05


def test_step4_heads_differ_and_korean_is_not_drawn_with_an_english_vocabulary(steps):
    import qkv

    n = steps["multi_head"].numbers
    assert n["distinct_targets"] >= 2 and n["max_head_similarity"] < 0.99
    assert n["heads"] * n["head_dim"] == n["out_proj"][0]
    tokens = qkv.load_tokenizer("minilm").tokenizer.encode(KOREAN[0]).tokens[1:-1]
    assert n["korean0_pieces"] == len(tokens) > n["korean0_words"] and steps["multi_head"].unavailable


def test_step5_causal_rows_sum_to_one_over_the_past_and_temperature_spreads_the_distribution(steps):
    n = steps["masking"].numbers
    torch.testing.assert_close(n["row_sums"], torch.ones_like(n["row_sums"]), rtol=0, atol=1e-5)
    assert n["future_max"] == 0.0
    assert n["entropy"] == sorted(n["entropy"]) and n["entropy"][0] < n["entropy"][-1]
    probabilities = [p for _, p in n["top5"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1


def test_step6_one_input_vector_different_final_vectors(steps):
    n = steps["context"].numbers
    cos = n["cos"]
    assert (cos[~torch.eye(3, dtype=torch.bool)] < 0.99).all()  # the final vectors of "bank" differ
    assert n["money_money"] > n["money_river"]
    assert n["analogy"] > n["control"] + 0.1


def test_step8_every_score_function_gives_a_distribution_and_dot_is_the_hand_softmax(steps):
    weights = steps["score_functions"].numbers["weights"]
    for row in weights.values():
        assert float(row.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.manual_seed(0)  # the step's example, drawn again
    h_t, h_s = torch.randn(1, 8), torch.randn(5, 8)
    torch.testing.assert_close(weights["dot"], torch.softmax(h_s @ h_t[0], dim=0), rtol=1e-5, atol=1e-6)


def test_step8_local_windows_hide_what_lies_outside_them(steps):
    n = steps["score_functions"].numbers
    rows, d, t = n["rows"], n["window"], n["step"]
    outside = torch.ones(12, dtype=torch.bool)
    outside[t - d : t + d + 1] = False
    assert (rows["global"] > 0).all() and rows["local-m"][outside].eq(0).all()
    assert float(rows["local-m"].sum()) == pytest.approx(1.0, abs=1e-6)
    support = rows["local-p"].nonzero().flatten()
    assert 0 < len(support) <= 2 * d + 1 and int(support[-1] - support[0]) <= 2 * d
    assert n["local_p_sum"] < 1.0  # the Gaussian multiplies the normalised weights


def test_step10_made_and_pixelcnn_masks_are_the_texts_figures(steps):
    n = steps["masks"].numbers
    assert n["made"] == [[0, 0, 0], [1, 0, 0], [1, 1, 0]]
    assert n["mask_a"][2] == [1, 1, 0, 0, 0] and n["mask_b"][2] == [1, 1, 1, 0, 0]
    assert n["mask_a"][3:] == [[0] * 5] * 2 and n["mask_a"][:2] == [[1] * 5] * 2


def test_without_trained_translators_the_dates_steps_say_how_to_make_them(steps, tmp_path):
    assert steps["bottleneck"].unavailable == "runs" and steps["beam"].unavailable == "runs"
    text = write_tour(tmp_path / "t.html", "en", list(steps.values())).read_text(encoding="utf-8")
    assert DATES_COMMANDS.split(";")[0] in text


def test_no_training_trains_nothing_and_the_gpt_step_names_its_command(tmp_path, monkeypatch):
    """--no-training with no runs at all: nothing is written anywhere (no run, no temporary directory), and the
    masking step says which command makes the GPT it needs, in both languages."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    runs = tmp_path / "runs"
    steps = {step.key: step for step in build_tour(runs, train=False)}
    assert not runs.exists() and list((tmp_path / "tmp").iterdir()) == []
    assert steps["masking"].unavailable == "runs" and steps["masking"].numbers == {"commands": GPT_COMMANDS}
    for lang, words in (("en", "character-level GPT"), ("ko", "문자 단위 GPT")):
        page = write_tour(tmp_path / f"t-{lang}.html", lang, list(steps.values())).read_text(encoding="utf-8")
        assert words in page and GPT_COMMANDS in page


def test_the_tour_reuses_the_runs_the_readme_trains_before_its_own(tmp_path):
    """runs/quickstart, runs/dates-rnn and runs/dates-rnn-none (the README's names) are read when present; the
    tour's own small runs (runs/tour/...) only when they are not."""
    from tests.cli.test_cli import TINY, sets

    own = tmp_path / TOUR_DIR
    readme = tmp_path / "quickstart"
    assert gpt_run(tmp_path, train=False) is None and set(dates_runs(tmp_path, train=False).values()) == {None}
    shutil.copytree(_tiny_run(tmp_path, TINY, sets), own / "gpt")
    assert gpt_run(tmp_path, train=False) == own / "gpt"
    shutil.copytree(own / "gpt", readme)
    assert gpt_run(tmp_path, train=False) == readme
    for name in ("dates-rnn", "dates-rnn-none"):  # any trained run stands in: only the names are looked up here
        shutil.copytree(own / "gpt", own / name)
    assert dates_runs(tmp_path, train=False) == {
        "dates-rnn": own / "dates-rnn",
        "dates-rnn-none": own / "dates-rnn-none",
    }
    shutil.copytree(own / "gpt", tmp_path / "dates-rnn")
    assert dates_runs(tmp_path, train=False)["dates-rnn"] == tmp_path / "dates-rnn"


def _tiny_run(tmp_path, tiny, sets):
    out = tmp_path / "tiny"
    config = tmp_path / "c.toml"
    config.write_text("[train]\nseed = 3\n")
    assert main(["train", str(config), "--out", str(out), "--no-progress", *sets(tiny)]) == 0
    return out


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_the_page_in_chromium_draws_every_figure_offline(steps, tmp_path, lang):
    from tests.browser import chromium, open_page

    path = write_tour(tmp_path / f"tour-{lang}.html", lang, list(steps.values()))
    with chromium() as browser:
        watched = open_page(browser, path)
        page, errors, requests = watched.page, watched.errors, watched.requests
        widths = page.evaluate("[...document.images].map(i => i.complete ? i.naturalWidth : 0)")
        # the explorer of step 1 drew itself, opened on the neuron view of "I" and "home"
        neuron = page.evaluate("document.querySelector('.qkv-explorer').qkv.drawn")
        tabs = page.evaluate("[...document.querySelector('.qkv-explorer').shadowRoot.querySelectorAll('#tabs button')]"
                             ".map(b => b.textContent)")  # fmt: skip
        sections = page.evaluate("document.querySelectorAll('section').length")
        text = page.inner_text("body")
    assert errors == [] and requests == [path.as_uri()]
    assert sections == 10 and len(widths) >= 10 and all(w > 0 for w in widths)
    i_go_home = steps["i_go_home"].numbers
    assert (neuron["query"], neuron["key"]) == (0, 2)
    assert neuron["z"] == pytest.approx(i_go_home["new_i"].tolist(), rel=1e-5, abs=1e-6)
    assert neuron["weight"] == pytest.approx(float(i_go_home["learned_row"][2]), rel=1e-5)
    assert tabs[3] == {"en": "Neuron view", "ko": "뉴런 보기"}[lang]  # the explorer speaks the page's language
    if lang == "ko":
        assert KOREAN[0] in text and "자모 조각" in text
    else:
        assert "Not shown" in text and "letter pieces" in text


def test_qkv_tour_writes_the_page(tmp_path, capsys):
    out = tmp_path / "tour.html"
    assert main(["tour", "--lang", "ko", "--out", str(out), "--runs", str(tmp_path), "--no-progress",
                 "--no-training"]) == 0  # fmt: skip
    assert f"written: {out}" in capsys.readouterr().out and '<html lang="ko">' in out.read_text(encoding="utf-8")
    assert main(["tour", "--out", str(tmp_path / "tour.txt")]) == 2


@pytest.mark.slow
def test_translators_trained_on_the_spot_show_attention_beating_the_bottleneck_and_beam_beating_greedy(tmp_path):
    from qkv.tour.seq2seq import bottleneck, greedy_vs_beam

    found = dates_runs(tmp_path)  # trained small into runs/tour/, and found there the next time without training
    assert found == {name: tmp_path / TOUR_DIR / name for name in ("dates-rnn", "dates-rnn-none")}
    stamps = {p: (p / "checkpoints" / "latest").stat().st_mtime_ns for p in found.values()}
    assert dates_runs(tmp_path) == found
    assert stamps == {p: (p / "checkpoints" / "latest").stat().st_mtime_ns for p in found.values()}
    step = bottleneck(found["dates-rnn"], found["dates-rnn-none"])
    assert step.numbers["with_attention"] > step.numbers["without"] + 0.3 and step.figures
    beam = greedy_vs_beam(found["dates-rnn"]).numbers
    assert beam["beam_best_score"] >= beam["greedy_score"] - 1e-6


# what the Korean page may write in Latin letters: notation, names, and the English example words it discusses
LATIN_IN_KOREAN = {
    "A", "B", "D", "K", "Q", "T", "V", "W", "X", "a", "d", "e", "h", "k", "p", "q", "s", "v", "x",  # notation
    "W_K", "W_O", "W_Q", "d_k", "h_t", "p_t", "softmax", "tanh", "nat", "UTC",
    "dot", "general", "concat", "location", "local-m", "local-p",  # Luong's names for his score functions
    "GPT", "Luong", "MADE", "MiniLM", "PixelCNN", "qkv", "Blue", "Brown",  # names (3Blue1Brown)
    "daughter", "son", "woman", "man", "table", "chair",  # the English words whose vectors the text compares
}  # fmt: skip


def test_the_korean_page_is_korean_and_its_figures_speak_korean(steps, tmp_path):
    """Every sentence, heading and table header of the Korean page is Korean (Latin letters only in notation, names,
    quoted examples and the model's own tokens), and every figure is drawn with Korean words."""
    import html as html_module
    import re

    page = write_tour(tmp_path / "ko.html", "ko", list(steps.values())).read_text(encoding="utf-8")
    code = r"<style>.*?</style>|<script.*?</script>|src=\"data:[^\"]*\"|<td>.*?</td>|<code>.*?</code>"
    text = re.sub(code, " ", page, flags=re.S)
    text = html_module.unescape(re.sub(r"<[^>]+>", " ", text))
    text = re.sub(r"“[^”]*”|\S*/tour/\S*|\d[\d.]*e[-+]\d+", " ", text)  # quoted examples, the run's path, 2.4e-07
    assert set(re.findall(r"[A-Za-z][A-Za-z_\-]*", text)) <= LATIN_IN_KOREAN
    for step in steps.values():
        for name, png in step.figures:
            assert isinstance(png, dict) and png["en"] != png["ko"], (step.key, name)


def test_numbers_are_written_for_people():
    from qkv.tour.page import fmt

    assert [fmt(x) for x in (0.5, 2.0, 0.99996, 0.0551234, 2.38e-07, 1024.0, -0.0275123)] == [
        "0.5", "2", "1.00", "0.0551", "2.38e-07", "1024", "-0.0275",
    ]  # fmt: skip
    assert fmt([("e", 0.39208582043647766), ("o", 0.111)]) == "“e” 0.392, “o” 0.111"  # never a raw float
    assert fmt((384, 384)) == "384×384" and fmt({"it": 8, "tired": 3}) == "“it”: 8; “tired”: 3"
