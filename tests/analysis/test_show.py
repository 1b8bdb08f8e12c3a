"""qkv.show: what it stores is what the model computed (the payload decoded back, bit for bit), the kinds of an
encoder-decoder are told apart, padding is cut only where it has no weight, a recorded cache shows itself in IPython,
and bad input gets one clear error."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.errors import ConfigError, ShapeError
from qkv.models import GPT, BertConfig, BertEncoder, GPTConfig
from qkv.visualization import capture_attention
from tests.conftest import stored_weights


@pytest.fixture(scope="module")
def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=2)).eval()


def test_a_model_run_stores_exactly_its_captured_weights_scores_and_vectors(gpt):
    ids = torch.randint(0, 20, (1, 7))
    explorer = qkv.show(gpt, ids)
    with torch.no_grad(), capture_attention(gpt, scores=True, vectors=True) as cap:
        gpt(ids)
    kind = explorer.payload["kinds"][0]
    assert kind["tokens"] == [str(i) for i in range(7)] and kind["weights"]["encoding"] == "float32"
    assert torch.equal(stored_weights(kind), torch.stack([cap.weights(i)[0] for i in cap.layers]))
    assert kind["rollout"] is not None and kind["flow"] is not None  # 7 tokens: both, computed in Python
    vectors = explorer.kinds[0].vectors
    assert torch.equal(vectors.q[1], cap.vectors().q[1]) and vectors.scale == pytest.approx(8**-0.5)


def test_a_batch_row_is_shown_with_its_padding_cut_only_where_it_has_no_weight():
    torch.manual_seed(1)
    bert = BertEncoder(BertConfig(vocab_size=30, embed_dim=16, num_heads=2, num_layers=2, ffn_dim=32)).eval()
    ids, mask = torch.randint(5, 30, (2, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    with torch.no_grad(), capture_attention(bert) as cap:
        bert(ids, attention_mask=mask)
    explorer = qkv.show(cap, list("abcd"), row=1)
    want = torch.stack([cap.weights(i)[1, :, :4, :4] for i in cap.layers])
    assert torch.equal(stored_weights(explorer.payload["kinds"][0]), want)
    with pytest.raises(ShapeError, match="keys beyond the tokens have weight"):
        qkv.show(cap, list("abcd"), row=0)  # row 0 has no padding: its last two keys are seen
    with pytest.raises(ConfigError, match="row 2 is not a row of the batch of 2"):
        qkv.show(cap, list("abcdef"), row=2)


def test_a_recorded_cache_shows_itself_in_ipython(gpt):
    interactive = pytest.importorskip("IPython.core.interactiveshell")
    import qkv.analysis.display as show_module

    shell = interactive.InteractiveShell.instance()
    try:
        show_module._register_notebook_display()
        with torch.no_grad(), qkv.record(gpt, lambda name: ".attn." in name) as cache:
            gpt(torch.randint(0, 20, (1, 5)))
        bundle, _ = shell.display_formatter.format(cache)
        assert "qkv-explorer" in bundle["text/html"] and "recorded attention" in bundle["text/plain"]
        with torch.no_grad(), qkv.record(gpt, lambda name: name.endswith("hook_resid_post")) as residual:
            gpt(torch.randint(0, 20, (1, 5)))
        assert "qkv-explorer" not in shell.display_formatter.format(residual)[0].get("text/html", "")
    finally:
        interactive.InteractiveShell.clear_instance()


def test_bad_input_is_named(gpt):
    ids = torch.randint(0, 20, (1, 5))
    with torch.no_grad(), capture_attention(gpt) as cap:
        gpt(ids)
    with pytest.raises(ConfigError, match="give its tokenizer"):
        qkv.show(gpt, "some text")
    with pytest.raises(ShapeError, match=r"token ids must be long \(1, n\)"):
        qkv.show(gpt, ids.float())
    with pytest.raises(ConfigError, match="a list of strings, one per key"):
        qkv.show(cap, "abcde")
    with pytest.raises(ConfigError, match="tokens must be strings"):
        qkv.show(cap, [1, 2, 3, 4, 5])
    with pytest.raises(ShapeError, match="6 tokens given but the attention has 5 keys"):
        qkv.show(cap, list("abcdef"))
    with pytest.raises(ConfigError, match="cannot show a str"):
        qkv.show("attention")
    with pytest.raises(ShapeError, match="layer 9 does not exist: self-attention has 2 layers"):
        qkv.show(cap, list("abcde"), focus=(9, 0))
    with pytest.raises(ShapeError, match="lang must be one of en, ko"):
        qkv.show(cap, list("abcde")).localized("fr")
    with pytest.raises(ConfigError, match="has no hook_pattern"):
        with torch.no_grad(), qkv.record(gpt, lambda name: name.endswith("hook_z")) as cache:
            gpt(ids)
        qkv.show(cache)
