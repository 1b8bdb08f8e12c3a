"""Small pieces the seq2seq model tests share: a tiny task, a padded batch, a quick overfitting loop, and the
padding-invariance check."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qkv.data.pairs import pad_rows
from qkv.tokenizers.pair import PAD_ID, PairTokenizer
from tests.conftest import FP32, FP32_TIGHT

TINY_PAIRS = [
    ("March 5, 2021", "2021-03-05"),
    ("5 Mar 99", "2099-03-05"),
    ("2021년 3월 7일", "2021-03-07"),
    ("Jan 12 2050", "2050-01-12"),
    ("2064.7.30.", "2064-07-30"),
    ("the 1st of May, 2003", "2003-05-01"),
]


def tiny_tokenizer() -> PairTokenizer:
    return PairTokenizer.train(TINY_PAIRS, "char", "char", shared=True)


def tiny_batch(tok: PairTokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(src, tgt_in, tgt_out)`` of every tiny pair, padded with 0."""
    src = pad_rows([tok.encode_source(s) for s, _ in TINY_PAIRS])
    tgt = pad_rows([tok.encode_target(t) for _, t in TINY_PAIRS])
    return src, tgt[:, :-1], tgt[:, 1:]


def overfit(model: torch.nn.Module, batch, steps: int = 300, lr: float = 1e-2) -> float:
    """Train on one batch; returns the last loss."""
    torch.manual_seed(0)
    src, tgt_in, tgt_out = batch
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        logits = model(src, tgt_in).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def assert_padding_never_changes_results(model: torch.nn.Module, tok: PairTokenizer) -> None:
    """A padded batch gives each row exactly what the row gives alone: logits and every cross-attention map,
    and padded source positions get no weight."""
    src, tgt_in, _ = tiny_batch(tok)
    together = model(src, tgt_in, return_attention=True)
    for i in range(len(TINY_PAIRS)):
        s_len, t_len = int((src[i] != PAD_ID).sum()), int((tgt_in[i] != PAD_ID).sum())
        alone = model(src[i : i + 1, :s_len], tgt_in[i : i + 1, :t_len], return_attention=True)
        torch.testing.assert_close(together.logits[i, :t_len], alone.logits[0], **FP32)
        for w, w_alone in zip(together.cross_attentions or (), alone.cross_attentions or ()):
            torch.testing.assert_close(w[i, :, :t_len, :s_len], w_alone[0], **FP32_TIGHT)
            assert torch.all(w[i, :, :, s_len:] == 0)  # padded source positions get no weight
