"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes a few tokens, the
target model checks them all in one forward pass.

Greedy: a drafted token is kept while it is the target's own argmax, and the target's token replaces the first one
that is not, so the output is the target's greedy output. Sampling: drafted token x (drawn from the draft's q) is kept
with probability min(1, p(x) / q(x)); at the first rejection a token is drawn from the normalised max(0, p - q), and
after k acceptances one more from p: every token is distributed exactly as the target alone would draw it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.decoding.generate import decoding_mode, generate
from qkv.decoding.stepper import DecodableModel
from qkv.devices import model_device
from qkv.errors import ConfigError, ShapeError

__all__ = ["SpeculativeResult", "speculative_generate"]


@dataclass
class SpeculativeResult:
    ids: Tensor  # (1, prompt + new)
    drafted: int  # tokens the draft proposed
    accepted: int  # of those, kept

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class _Runner:
    """A model with its KV cache, fed whatever of ``ids`` it has not seen yet."""

    def __init__(self, model: DecodableModel) -> None:
        self.model, self.cache = model, model.new_cache(1)

    def logits(self, ids: Tensor) -> Tensor:
        """fp32 logits ``(new, vocab)`` after each of the ids not yet in the cache."""
        fed = self.cache.seq_len(0)
        return self.model(ids[:, fed:], cache=self.cache).logits[0].float()

    def keep(self, length: int) -> None:
        self.cache.truncate(length)


@torch.no_grad()
def speculative_generate(
    target: DecodableModel,
    draft: DecodableModel,
    input_ids: Tensor,
    max_new_tokens: int,
    strategy: str = "greedy",
    *,
    num_draft_tokens: int = 4,
    temperature: float = 1.0,
    seed: int | None = None,
) -> SpeculativeResult:
    """Continue ``input_ids (1, seq)`` with ``target``, ``num_draft_tokens`` drafted by ``draft`` per round (the two
    share a vocabulary). Same output as ``qkv.generate(target, ...)`` for greedy, the same distribution for sampling.
    Past the target's context the rest is decoded plainly (a window that slides cannot check drafts in one pass)."""
    if strategy not in ("greedy", "sample"):
        raise ConfigError(f"speculative decoding is greedy or sample, got {strategy!r}")
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ShapeError("speculative decoding continues one prompt: input_ids must be (1, seq)")
    if num_draft_tokens < 1:
        raise ConfigError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    vocab = (target.config.vocab_size, draft.config.vocab_size)  # type: ignore[attr-defined]
    if vocab[0] != vocab[1]:
        raise ConfigError(f"the draft's vocabulary ({vocab[1]}) is not the target's ({vocab[0]}): they must share one")
    device = model_device(target)
    ids = input_ids.to(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    context = min(target.config.max_seq_len, draft.config.max_seq_len)  # type: ignore[attr-defined]
    end = ids.shape[1] + max_new_tokens
    drafted = accepted = 0
    with decoding_mode(target), decoding_mode(draft):
        big, small = _Runner(target), _Runner(draft)
        while ids.shape[1] < end:
            k = min(num_draft_tokens, end - ids.shape[1] - 1, context - ids.shape[1] - 1)
            if k < 1:
                break
            proposal, q = _draft(small, ids, k, strategy, temperature, generator)
            p = big.logits(torch.cat([ids, proposal], dim=1))[-(k + 1) :]  # (k + 1, vocab): after ids, d1 .. dk
            kept, token = _verify(proposal[0], p, q, strategy, temperature, generator)
            drafted, accepted = drafted + k, accepted + kept
            ids = torch.cat([ids, proposal[:, :kept], token.view(1, 1)], dim=1)
            big.keep(ids.shape[1] - 1)
            small.keep(ids.shape[1] - 1)
    if ids.shape[1] < end:  # the last token, or past the context: plainly, with the target alone
        ids = generate(target, ids, end - ids.shape[1], strategy, temperature=temperature, seed=seed)
    return SpeculativeResult(ids, drafted, accepted)


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
