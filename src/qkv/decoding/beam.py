"""Batched beam search on the KV cache, with a length penalty and end-of-sequence handling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.decoding.config import GenerationConfig
from qkv.decoding.controls import LogitsControls, Stopping
from qkv.decoding.output import GenerateOutput
from qkv.decoding.stepper import TokenStepper

__all__ = ["beam_search"]


def beam_search(
    stepper: TokenStepper,
    input_ids: Tensor,
    max_new_tokens: int,
    config: GenerationConfig,
    controls: LogitsControls | None = None,
    stopping: Stopping | None = None,
    *,
    keep_scores: bool = False,
) -> GenerateOutput:
    """Best continuation per row of ``input_ids (batch, seq)`` -> ``(batch, seq + new)``; with
    ``config.num_return_sequences = n`` the n best, best first: ``(batch * n, seq + new)``, rows
    ``b * n .. b * n + n - 1`` for item b. Also each returned hypothesis's beam rows (``beam_indices``) and, with
    ``keep_scores``, each step's processed log-probabilities ``(batch * num_beams, vocab)``.

    Beams are rows of one big batch ``(batch * num_beams, seq)``: ``stepper`` must step that many rows (row
    ``b * num_beams + j`` is beam j of item b). After each step the surviving beams are gathered (and the stepper's
    KV cache or decoder state reordered the same way). A hypothesis that emits EOS is set aside with score
    ``sum log p / new_len ** length_penalty``; the search ends when every row has ``num_beams`` finished hypotheses
    that no live beam can beat, or after ``max_new_tokens``.
    """
    num_beams, length_penalty, eos_token_id = config.num_beams, config.length_penalty, config.eos_token_id
    num_return_sequences = config.num_return_sequences
    batch, prompt_len = input_ids.shape
    if stopping is not None:
        stopping.start()
    k = num_beams
    ids = input_ids.repeat_interleave(k, dim=0)  # (batch * k, seq)
    # only the first beam of each row is live at the start, so the k beams do not all pick the same token
    scores = torch.full((batch, k), float("-inf"), device=ids.device)
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, int, int, Tensor]]] = [[] for _ in range(batch)]  # (score, step, row, tokens)
    parents: list[Tensor] = []  # per step: for each new beam, its row in that step's model call
    step_scores: list[Tensor] = []
    for step in range(max_new_tokens):
        logp = F.log_softmax(stepper.logits(ids), dim=-1)  # (batch * k, vocab)
        if controls is not None:  # on log-probabilities, as HuggingFace's beam search; a blocked token gets -inf
            logp = controls(logp, ids, prompt_len)
        for processor in config.logits_processors:
            logp = processor(ids, logp)
        if keep_scores:
            step_scores.append(logp)
        vocab = logp.shape[-1]
        candidates = (scores.view(-1, 1) + logp).view(batch, k * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=-1)
        next_rows, next_tokens, next_scores = [], [], []
        for b in range(batch):
            chosen = 0
            for score, index in zip(top_scores[b].tolist(), top_index[b].tolist()):
                beam, token = divmod(index, vocab)
                row = b * k + beam
                if score == float("-inf"):
                    break
                if eos_token_id is not None and token == eos_token_id:
                    hyp = torch.cat([ids[row, prompt_len:], ids.new_tensor([token])])
                    finished[b].append((score / (step + 1) ** length_penalty, step, row, hyp))
                    continue
                next_rows.append(row)
                next_tokens.append(token)
                next_scores.append(score)
                chosen += 1
                if chosen == k:
                    break
            while chosen < k:  # every candidate ended: keep dead beams so the batch keeps its shape
                next_rows.append(b * k)
                next_tokens.append(eos_token_id if eos_token_id is not None else 0)
                next_scores.append(float("-inf"))
                chosen += 1
        rows = torch.tensor(next_rows, device=ids.device)
        parents.append(rows)
        ids = torch.cat([ids[rows], torch.tensor(next_tokens, device=ids.device)[:, None]], dim=1)
        stepper.reorder(rows)
        scores = torch.tensor(next_scores, device=ids.device).view(batch, k)
        if eos_token_id is not None and _all_done(finished, scores, step + 1, length_penalty, k):
            break
        if stopping is not None and stopping(ids, logp, per_row=False):  # (asked of the live beams)
            break
    new_len = ids.shape[1] - prompt_len
    results: list[Tensor] = []
    origins: list[tuple[int, int]] = []  # (model call, row) where each returned hypothesis was last extended
    for b in range(batch):
        pool = list(finished[b])
        for beam in range(k):
            if scores[b, beam] > float("-inf"):
                normalised = scores[b, beam].item() / max(new_len, 1) ** length_penalty
                row = b * k + beam
                pool.append((normalised, len(parents) - 1, int(parents[-1][row]), ids[row, prompt_len:]))
        ranked = sorted(pool, key=lambda item: item[0], reverse=True)[:num_return_sequences]
        results.extend(item[3] for item in ranked)
        origins.extend((item[1], item[2]) for item in ranked)
        missing = num_return_sequences - len(ranked)  # (every candidate was blocked)
        results.extend(ids.new_zeros(0) for _ in range(missing))
        origins.extend((-1, -1) for _ in range(missing))
    width = max(len(r) for r in results)
    pad = eos_token_id if eos_token_id is not None else 0
    out = input_ids.new_full((batch * num_return_sequences, prompt_len + width), pad)
    out[:, :prompt_len] = input_ids.repeat_interleave(num_return_sequences, dim=0)
    for row, r in enumerate(results):
        out[row, prompt_len : prompt_len + len(r)] = r
    return GenerateOutput(out, tuple(step_scores), beam_indices=_beam_indices(parents, origins, width))


def _beam_indices(parents: list[Tensor], origins: list[tuple[int, int]], width: int) -> Tensor:
    """``(hypotheses, width)``: for each returned hypothesis and step, the row whose scores chose its token.

    A hypothesis last extended in call ``s`` from row ``r`` came, in call ``c - 1``, from row ``parents[c - 1][r_c]``;
    steps after ``s`` (it had ended) get -1. (Read back once, after the search.)
    """
    parent_rows = [p.tolist() for p in parents]
    indices = [[-1] * width for _ in origins]
    for h, (last_call, row) in enumerate(origins):
        for c in range(last_call, -1, -1):  # (a hypothesis of last_call + 1 tokens: last_call < width)
            indices[h][c] = row
            if c > 0:
                row = parent_rows[c - 1][row]
    device = parents[0].device if parents else None
    return torch.tensor(indices, dtype=torch.long, device=device).view(len(origins), width)


def _all_done(finished: list, scores: Tensor, length: int, length_penalty: float, k: int) -> bool:
    """True when every row has k finished hypotheses and its best live beam cannot beat the worst of them.

    Log-probs only fall as a beam grows, so a live beam's best final score is bounded by its current sum divided by
    the largest length penalty still reachable; we use the current length, which is exact for length_penalty <= 0
    and the usual heuristic (as in HuggingFace) otherwise.
    """
    for b, hyps in enumerate(finished):
        if len(hyps) < k:
            return False
        worst = sorted(h[0] for h in hyps)[-k]
        if scores[b].max().item() / length**length_penalty > worst:
            return False
    return True
