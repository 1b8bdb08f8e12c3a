"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes a few tokens, the
target model checks them all in one forward pass.

Greedy: a drafted token is kept while it is the target's own argmax, and the target's token replaces the first one
that is not, so the output is the target's greedy output. Sampling: drafted token x (drawn from the draft's q) is kept
with probability min(1, p(x) / q(x)); at the first rejection a token is drawn from the normalised max(0, p - q), and
after k acceptances one more from p: every token is distributed exactly as the target alone would draw it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qkv.decoding.config import GenerationConfig
from qkv.errors import ConfigError
from qkv.models.protocols import CausalLM

__all__ = ["speculative_decode"]


class _Runner:
    """A model with its KV cache, fed whatever of ``ids`` it has not seen yet."""

    def __init__(self, model: CausalLM) -> None:
        self.model, self.cache = model, model.new_cache(1)

    def logits(self, ids: Tensor) -> Tensor:
        """fp32 logits ``(new, vocab)`` after each of the ids not yet in the cache."""
        fed = self.cache.seq_len(0)
        return self.model(ids[:, fed:], cache=self.cache).logits[0].float()

    def keep(self, length: int) -> None:
        self.cache.truncate(length)


def speculative_decode(
    target: CausalLM, draft: CausalLM, ids: Tensor, end: int, config: GenerationConfig
) -> tuple[Tensor, int, int]:
    """Continue ``ids (1, seq)`` towards ``end`` tokens with ``target``, ``config.num_draft_tokens`` drafted by
    ``draft`` per round (the two share a vocabulary); ``config.strategy`` is greedy or sample. Returns the ids, the
    tokens drafted and those accepted. Stops short of ``end`` for the last token and at the models' shared context
    (a window that slides cannot check drafts in one pass): ``qkv.generate(..., draft_model=)`` decodes the rest
    plainly. Run under ``decoding_mode`` of both models, without gradients."""
    vocab = (target.config.vocab_size, draft.config.vocab_size)
    if vocab[0] != vocab[1]:
        raise ConfigError(f"the draft's vocabulary ({vocab[1]}) is not the target's ({vocab[0]}): they must share one")
    strategy, temperature = config.strategy, config.temperature
    generator = torch.Generator(device=ids.device)
    generator.manual_seed(config.seed if config.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    context = min(target.config.max_seq_len, draft.config.max_seq_len)
    drafted = accepted = 0
    big, small = _Runner(target), _Runner(draft)
    while ids.shape[1] < end:
        k = min(config.num_draft_tokens, end - ids.shape[1] - 1, context - ids.shape[1] - 1)
        if k < 1:
            break
        proposal, q = _draft(small, ids, k, strategy, temperature, generator)
        p = big.logits(torch.cat([ids, proposal], dim=1))[-(k + 1) :]  # (k + 1, vocab): after ids, d1 .. dk
        kept, token = _verify(proposal[0], p, q, strategy, temperature, generator)
        drafted, accepted = drafted + k, accepted + kept
        ids = torch.cat([ids, proposal[:, :kept], token.view(1, 1)], dim=1)
        big.keep(ids.shape[1] - 1)
        small.keep(ids.shape[1] - 1)
    return ids, drafted, accepted


def _draft(
    small: _Runner, ids: Tensor, k: int, strategy: str, temperature: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """k tokens ``(1, k)`` from the draft and its distributions ``(k, vocab)`` (logits for greedy)."""
    tokens, dists = [], []
    current = ids
    for _ in range(k):
        logits = small.logits(current)[-1]
        if strategy == "greedy":
            token = logits.argmax()
            dists.append(logits)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)[0]
            dists.append(probs)
        tokens.append(token)
        current = torch.cat([current, token.view(1, 1)], dim=1)
    return torch.stack(tokens).view(1, k), torch.stack(dists)


def _verify(
    proposal: Tensor, target_logits: Tensor, q: Tensor, strategy: str, temperature: float, generator: torch.Generator
) -> tuple[int, Tensor]:
    """How many drafted tokens to keep, and the token that follows them."""
    k = proposal.shape[0]
    if strategy == "greedy":
        choice = target_logits.argmax(dim=-1)  # (k + 1,)
        agree = (choice[:k] == proposal).int()
        kept = int(agree.cumprod(0).sum())  # (one read per round: how far to advance)
        return kept, choice[kept]
    p = torch.softmax(target_logits / temperature, dim=-1)  # (k + 1, vocab)
    rows = torch.arange(k, device=proposal.device)
    ratio = p[rows, proposal] / q[rows, proposal]
    draws = torch.rand(k, generator=generator, device=proposal.device)
    agree = (draws < ratio).int()
    kept = int(agree.cumprod(0).sum())
    if kept == k:  # every draft accepted: one more token from the target
        return kept, torch.multinomial(p[k], 1, generator=generator)[0]
    residual = (p[kept] - q[kept]).clamp(min=0)
    return kept, torch.multinomial(residual / residual.sum(), 1, generator=generator)[0]
