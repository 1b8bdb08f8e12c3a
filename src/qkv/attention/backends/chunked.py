"""The chunked backend: attention in O(N) memory with the online softmax (the FlashAttention algorithm).

Keys are visited one block at a time; each query row keeps a running maximum ``m``, a running sum ``l`` and an
output accumulator, rescaled whenever a larger score arrives. The backward pass is our own
:class:`torch.autograd.Function`: it stores only the output and the row log-sum-exp, and recomputes each tile's
scores instead of keeping the ``q_len × k_len`` matrix.

Tiles come from :mod:`qkv.attention.backends.tiles`: for every key block only the query rows that can see it are
visited, and only the rows on the edge of a causal/window band pay for a mask. A sliding window therefore costs
O(N · window); a block mask's empty tiles are never visited.

Scores that are a dot product (``dot``, ``scaled_dot``, ``cosine``, ``general``) are transformed and scaled *before*
the Function, so autograd differentiates the transform and the tiles are plain matmuls. Any other score (``additive``,
``location``, your own) is evaluated per tile, and its backward re-runs the score under autograd for that tile only.

Grouped-query attention is handled by viewing queries as ``(batch, kv_heads, group, q_len, dim)`` against keys
``(batch, kv_heads, 1, k_len, dim)``, so keys and values are never copied per head.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor

from qkv.attention.backends.tile_matmul import TileBuffer, matmul_minus, sum_group, tile_matmul
from qkv.attention.backends.tile_scores import (
    _LN2,
    _LOG2E,
    _NEG_INF,
    DEFAULT_BLOCK_K,
    DEFAULT_BLOCK_Q,
    MAX_TILE_PAIRS,
    WINDOW_BLOCK,
    _apply_masks,
    _biased_scores,
    _dropout_keep,
    _exp_,
    _finish_scores,
    _fused_relative_scores,
    _Plan,
    _score_tile,
    _slice,
    _split_heads,
)
from qkv.attention.backends.tiles import Tile, merge_rows, plan_block_tiles, plan_tiles
from qkv.attention.block_masks import cached_block_mask
from qkv.attention.call import AttentionCall
from qkv.attention.mods import captured_tensors, is_additive
from qkv.attention.softmax import compute_dtype

__all__ = ["DEFAULT_BLOCK_K", "DEFAULT_BLOCK_Q", "Tile", "chunked_attention", "chunked_weights", "plan_tiles"]


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        q5: Tensor,
        k5: Tensor,
        v5: Tensor,
        bias5: Tensor | None,
        mask5: Tensor | None,
        plan: _Plan,
        *params: Tensor,
    ) -> tuple[Tensor, Tensor]:
        b, kvh, g, q_len, _ = q5.shape
        row_max = q5.new_full((b, kvh, g, q_len), _NEG_INF)
        row_sum = q5.new_zeros((b, kvh, g, q_len))
        acc = q5.new_zeros((b, kvh, g, q_len, v5.shape[-1]))
        keep_scale = 1.0 / (1.0 - plan.dropout) if plan.dropout > 0 else 1.0
        q_blocks, k_blocks, v_blocks = plan.split_rows(q5), plan.split_cols(k5), plan.split_cols(v5)
        max_blocks, sum_blocks, acc_blocks = plan.split_rows(row_max), plan.split_rows(row_sum), plan.split_rows(acc)
        # every temporary the size of a tile or a row block lives in a buffer reused by all tiles: fresh ones of
        # that size (0.5-2 MB) come from the OS each time on a CPU, and their page faults cost more than the pass
        scores, products, scaled_q = TileBuffer(), TileBuffer(), TileBuffer()
        row, q_row = -1, q5
        for index, tile in enumerate(plan.tiles):
            if tile.i != row:  # tiles come row block by row block: scale each block of q once
                row, q_row = tile.i, plan.scaled(q_blocks[tile.i], scaled_q)
            qt, kt = q_row, plan.key_part(k_blocks, k5, tile)
            fused = _fused_relative_scores(plan, qt, kt, tile) if bias5 is None else None
            if fused is not None:
                s = _apply_masks(plan, fused, tile, mask5)
            else:
                s = _finish_scores(plan, _score_tile(plan, qt, kt, tile.k0, scores), tile, bias5, mask5)
            m_old = max_blocks[tile.i]
            m_new = torch.maximum(m_old, s.amax(dim=-1))
            m_safe = torch.nan_to_num(m_new, neginf=0.0)  # a row with nothing allowed yet keeps its -inf scores
            p = _exp_(plan, s.sub_(m_safe.unsqueeze(-1)))  # in place: the tile's scores become its probabilities
            rescale = _exp_(plan, m_old - m_safe)  # exp(-inf) = 0 wipes an empty accumulator
            sum_blocks[tile.i].mul_(rescale).add_(p.sum(dim=-1))
            if plan.dropout > 0:
                p = p * _dropout_keep(plan, index, p.shape, p.device) * keep_scale
            acc_blocks[tile.i].mul_(rescale.unsqueeze(-1)).add_(
                tile_matmul(p, plan.key_part(v_blocks, v5, tile), products)
            )
            m_old.copy_(m_new)
        empty = row_sum == 0  # rows that saw no allowed key: output 0, lse -inf
        out = acc.div_(torch.where(empty, torch.ones_like(row_sum), row_sum).unsqueeze(-1))  # (acc is ours)
        # the row log-sum-exp, in the plan's units (base 2 for base-2 plans) like the scores it is subtracted from
        log_sum = torch.log2(row_sum) if plan.base2 else torch.log(row_sum)
        lse = torch.where(empty, torch.full_like(row_sum, _NEG_INF), row_max + log_sum)
        ctx.plan = plan
        # parameters are inputs only so that autograd routes their gradients here; backward reads them off the module
        ctx.save_for_backward(q5, k5, v5, bias5, mask5, out, lse)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, _grad_lse: Tensor) -> tuple[Tensor | None, ...]:
        q5, k5, v5, bias5, mask5, out, lse = ctx.saved_tensors
        plan: _Plan = ctx.plan
        params = plan.params
        want_q, want_k, want_v, want_bias = ctx.needs_input_grad[:4]
        want_params = ctx.needs_input_grad[6:]
        n_score = plan.num_score_params
        grad_out = grad_out.contiguous()
        # rows with lse = -inf had no allowed key: +inf makes exp(s - lse) = 0 there without NaN
        lse = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
        dq = torch.zeros_like(q5)
        dk = torch.zeros_like(k5)
        dv = torch.zeros_like(v5)
        dbias = torch.zeros_like(bias5) if want_bias else None
        dparams = [torch.zeros_like(p) if w else None for p, w in zip(params, want_params)]
        keep_scale = 1.0 / (1.0 - plan.dropout) if plan.dropout > 0 else 1.0
        # a score function needs autograd unless it only adds a term and none of its tensors wants a gradient
        through_mod = plan.score_mod is not None and not (
            is_additive(plan.score_mod) and not any(want_params[n_score:])
        )
        q_blocks, k_blocks, v_blocks = plan.split_rows(q5), plan.split_cols(k5), plan.split_cols(v5)
        out_grads, out_blocks, lse_blocks = plan.split_rows(grad_out), plan.split_rows(out), plan.split_rows(lse)
        dq_blocks, dk_blocks, dv_blocks = plan.split_rows(dq), plan.split_cols(dk), plan.split_cols(dv)
        # reused buffers for every tile- and row-sized temporary, as in the forward pass
        scores, score_grads, products, scaled_q = TileBuffer(), TileBuffer(), TileBuffer(), TileBuffer()
        row, q_row, tile_delta = -1, q5, lse
        for index, tile in enumerate(plan.tiles):
            qt, dot, tile_lse = q_row, out_grads[tile.i], lse_blocks[tile.i]
            if tile.i != row:  # once per row block
                row, qt = tile.i, plan.scaled(q_blocks[tile.i], scaled_q)
                q_row = qt
                # rowsum(dO ∘ O) = Σ_j P_ij dP_ij, ``(b, kvh, g, tq)``
                tile_delta = torch.mul(dot, out_blocks[row], out=products.take(dot, tuple(dot.shape))).sum(dim=-1)
            kt, vt = plan.key_part(k_blocks, k5, tile), plan.key_part(v_blocks, v5, tile)
            generic = plan.score is not None
            fused = None
            if generic:  # re-run the score with autograd for this tile only
                qt, kt = qt.detach().requires_grad_(), kt.detach().requires_grad_()
                with torch.enable_grad():
                    raw = _score_tile(plan, qt, kt, tile.k0)
                s = raw.detach().clone()
            elif plan.base2:  # the tile's scores minus the row lse in one GEMM: exp2 of it is P (after masks)
                s = matmul_minus(qt, kt, tile_lse, scores)
            else:
                fused = None if through_mod or bias5 is not None else _fused_relative_scores(plan, qt, kt, tile)
                s = _score_tile(plan, qt, kt, tile.k0) if fused is None else fused
            if bias5 is not None:
                s += _slice(bias5, tile)
            if through_mod:  # re-run the score function with autograd for this tile only
                before = s.requires_grad_()
                with torch.enable_grad():
                    after = _biased_scores(plan, before, tile, None)
                s = after.detach().clone()
            elif plan.score_mod is not None and fused is None:  # an additive term, no gradient wanted: dS passes
                s = _biased_scores(plan, s, tile, None)
            s = _apply_masks(plan, s, tile, mask5)
            p = _exp_(plan, s if plan.base2 else s.sub_(tile_lse.unsqueeze(-1)))
            if plan.dropout > 0:
                keep = _dropout_keep(plan, index, p.shape, p.device) * keep_scale
                p_applied = p * keep
                dp = tile_matmul(dot, vt.transpose(-2, -1)).mul_(keep).sub_(tile_delta.unsqueeze(-1))
            else:
                p_applied = p
                dp = matmul_minus(dot, vt, tile_delta, score_grads)
            if want_v:
                plan.key_part(dv_blocks, dv, tile).add_(
                    sum_group(tile_matmul(p_applied.transpose(-2, -1), dot, products))
                )
            ds = dp.mul_(p)  # dS = P ∘ (dP - rowsum(dO ∘ O))
            if through_mod:  # through the score function: dS of its input, and its tensors' grads
                wanted = [i for i in range(n_score, len(params)) if want_params[i]]
                grads = torch.autograd.grad(after, [before] + [params[i] for i in wanted], ds, allow_unused=True)
                ds = grads[0]
                _accumulate(dparams, wanted, grads[1:])
            if dbias is not None:
                target = _slice(dbias, tile)
                target += ds.sum_to_size(target.shape)
            if generic:
                wanted = [i for i in range(n_score) if want_params[i]]
                grads = torch.autograd.grad(raw, [qt, kt] + [params[i] for i in wanted], ds, allow_unused=True)
                if want_q and grads[0] is not None:
                    dq_blocks[tile.i].add_(grads[0])
                if want_k and grads[1] is not None:
                    plan.key_part(dk_blocks, dk, tile).add_(grads[1])
                _accumulate(dparams, wanted, grads[2:])
            else:
                if want_q:
                    dq_blocks[tile.i].add_(tile_matmul(ds, kt, products))
                if want_k:
                    plan.key_part(dk_blocks, dk, tile).add_(sum_group(tile_matmul(ds.transpose(-2, -1), qt, products)))
        # dq so far is the gradient of the scaled q; base-2 tiles' scores were log2(e) times the natural ones
        # (d/ds' = ln 2 · d/ds)
        dq_factor = plan.q_scale * (_LN2 if plan.base2 else 1.0)
        if dq_factor != 1.0:
            dq.mul_(dq_factor)
        if plan.base2:
            dk.mul_(_LN2)
        return (
            dq if want_q else None,
            dk if want_k else None,
            dv if want_v else None,
            dbias,
            None,
            None,
            *dparams,
        )


def _accumulate(totals: list[Tensor | None], indices: list[int], grads: tuple[Tensor | None, ...]) -> None:
    """``totals[i] += g`` for each wanted parameter index and its gradient (None: the tile did not use it)."""
    for i, g in zip(indices, grads):
        if g is not None:
            total = totals[i]
            assert total is not None
            total += g


def _prepare(
    call: AttentionCall, block_q: int | None, block_k: int | None
) -> tuple[Tensor, Tensor, Tensor, _Plan, tuple]:
    """Transform/scale q and k where possible and view everything as 5-D ``(b, kv_heads, group, len, dim)``."""
    windowed = call.span.left is not None
    if block_q is None:
        block_q = DEFAULT_BLOCK_Q if not windowed else WINDOW_BLOCK
    if block_k is None:
        block_k = DEFAULT_BLOCK_K if not windowed else WINDOW_BLOCK
    q, k, v = call.q, call.k, call.v
    pair = call.score.as_dot_product(q, k)
    if pair is not None:
        q, k = pair
        # the scale is folded into q, so the tiles are plain matmuls; without a score function or a bias, log2(e)
        # too, so the tiles' scores are in base 2 and their probabilities one exp2 away (a bias would have to be
        # scaled as well, and HF-style biases of finfo.min would overflow to -inf and change fully masked rows)
        base2 = call.score_mod is None and call.bias is None
        q_scale = call.scale * _LOG2E if base2 else call.scale
        score, params = None, cast(tuple[Tensor, ...], ())
    else:
        base2, q_scale = False, 1.0
        score, params = call.score, tuple[Tensor, ...](call.score.parameters())
    # fp32 throughout: the online softmax rescales repeatedly and bf16 sums would drift
    compute = compute_dtype(q.dtype)
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    b, h, q_len, _ = q.shape
    q5 = q.reshape(b, call.kv_heads, call.group, q_len, q.shape[-1])
    seed = int(torch.randint(0, 2**62, (1,)).item()) if call.dropout > 0 else 0
    num_score_params = len(params)
    if call.score_mod is not None:
        params = params + tuple(captured_tensors(call.score_mod))
    blocks = None
    if call.mask_mod is not None:
        blocks = call.blocks or cached_block_mask(
            call.mask_mod, call.batch, call.heads, call.q_len, call.k_len, (block_q, block_k), q.device
        )
        tiles = plan_block_tiles(call.q_len, call.k_len, call.span, blocks)
        block_q, block_k = blocks.block_q, blocks.block_k
    else:
        tiles = plan_tiles(call.q_len, call.k_len, call.span, block_q, block_k)
    tiles = merge_rows(tiles, MAX_TILE_PAIRS // block_q)
    plan = _Plan(
        tiles=tiles,
        span=call.span,
        k_len=call.k_len,
        q_len=call.q_len,
        kv_heads=call.kv_heads,
        group=call.group,
        score=score,
        scale=call.scale,
        dropout=call.dropout,
        seed=seed,
        params=params,
        blocks=blocks,
        score_mod=call.score_mod,
        grid=call.grid() if call.score_mod is not None else None,
        num_score_params=num_score_params,
        base2=base2,
        q_scale=q_scale,
        block_q=block_q,
        block_k=block_k,
    )
    return q5, k.unsqueeze(2), v.unsqueeze(2), plan, params


def chunked_weights(call: AttentionCall, block_q: int | None = None, block_k: int | None = None) -> Tensor:
    """Exact weights ``(batch, heads, q_len, k_len)`` (fp32, before dropout) by recomputing tile by tile.

    Needs no gradient and computes the row statistics with one streaming pass first, so the peak memory besides the
    output is one tile.
    """
    with torch.no_grad():
        q5, k5, v5, plan, params = _prepare(call, block_q, block_k)
        plan.dropout = 0.0
        bias5 = _split_heads(call.bias.to(q5.dtype) if call.bias is not None else None, call.kv_heads, call.group)
        mask5 = _split_heads(call.mask, call.kv_heads, call.group)
        _, lse = _ChunkedAttention.forward(_NoCtx(), q5, k5, v5, bias5, mask5, plan, *params)
        lse = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
        weights = q5.new_zeros(*q5.shape[:-1], call.k_len)
        for tile in plan.tiles:
            rows = slice(tile.q0, tile.q1)
            s = _score_tile(plan, plan.scaled(q5[..., rows, :], TileBuffer()), k5[..., tile.k0 : tile.k1, :], tile.k0)
            s = _finish_scores(plan, s, tile, bias5, mask5)
            weights[..., rows, tile.k0 : tile.k1] = _exp_(plan, s.sub_(lse[..., rows].unsqueeze(-1)))
        return weights.reshape(call.batch, call.heads, call.q_len, call.k_len)


class _NoCtx:
    """Stands in for autograd's ctx when the forward is reused for weights only."""

    def save_for_backward(self, *tensors: object) -> None:
        pass

    def mark_non_differentiable(self, *tensors: object) -> None:
        pass


def chunked_attention(
    call: AttentionCall, block_q: int | None = None, block_k: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """Returns ``out (batch, heads, q_len, v_dim)`` and, when asked for, exact weights recomputed tile by tile."""
    q5, k5, v5, plan, params = _prepare(call, block_q, block_k)
    bias5 = _split_heads(call.bias.to(q5.dtype) if call.bias is not None else None, call.kv_heads, call.group)
    mask5 = _split_heads(call.mask, call.kv_heads, call.group)
    out5, _ = _ChunkedAttention.apply(q5, k5, v5, bias5, mask5, plan, *params)
    out = out5.reshape(call.batch, call.heads, call.q_len, -1).to(call.q.dtype)
    weights = chunked_weights(call, block_q, block_k).to(call.q.dtype) if call.return_weights else None
    return out, weights
