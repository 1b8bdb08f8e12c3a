"""The chunked backend: attention in O(N) memory with the online softmax (the FlashAttention algorithm).

Keys are visited one block at a time; each query row keeps a running maximum ``m``, a running sum ``l`` and an
output accumulator, rescaled whenever a larger score arrives. The backward pass is our own
:class:`torch.autograd.Function`: it stores only the output and the row log-sum-exp, and recomputes each tile's
scores instead of keeping the ``q_len × k_len`` matrix.

Tiles come from :func:`plan_tiles`: for every key block only the query rows that can see it are visited, and only
the rows on the edge of a causal/window band pay for a mask. A sliding window therefore costs O(N · window).

Scores that are a dot product (``dot``, ``scaled_dot``, ``cosine``, ``general``) are transformed and scaled *before*
the Function, so autograd differentiates the transform and the tiles are plain matmuls. Any other score (``additive``,
``location``, your own) is evaluated per tile, and its backward re-runs the score under autograd for that tile only.

Grouped-query attention is handled by viewing queries as ``(batch, kv_heads, group, q_len, dim)`` against keys
``(batch, kv_heads, 1, k_len, dim)``, so keys and values are never copied per head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.attention.call import AttentionCall
from qkv.attention.masks import Span
from qkv.attention.scores import ScoreFunction
from qkv.attention.softmax import compute_dtype

__all__ = ["DEFAULT_BLOCK_K", "DEFAULT_BLOCK_Q", "Tile", "chunked_attention", "chunked_weights", "plan_tiles"]

# Tile sizes measured on a 2-core CPU (benchmarks/attention.py): 256×256 tiles keep a tile's scores in cache;
# a sliding window wastes less of each tile with narrower key blocks.
DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 256
WINDOW_BLOCK_K = 128
_NEG_INF = float("-inf")


@dataclass(frozen=True)
class Tile:
    """Queries ``[q0, q1)`` against keys ``[k0, k1)``; ``masked`` when the causal/window band cuts through it."""

    q0: int
    q1: int
    k0: int
    k1: int
    masked: bool


def _split(lo: int, hi: int, block: int, k0: int, k1: int, masked: bool, off: int) -> list[Tile]:
    """Tiles for absolute query positions ``[lo, hi]`` (inclusive), at most ``block`` rows each."""
    return [Tile(t - off, min(t + block, hi + 1) - off, k0, k1, masked) for t in range(lo, hi + 1, block)]


def plan_tiles(q_len: int, k_len: int, span: Span, block_q: int, block_k: int) -> list[Tile]:
    """Cover exactly the (query, key) pairs that ``span`` allows, skipping key blocks nobody sees.

    Query ``i`` has absolute position ``t = i + (k_len - q_len)`` and sees keys ``[t - left, t + right]``. For a
    key block ``[k0, k1)`` the rows that see some of it are ``t ∈ [k0 - right, k1 - 1 + left]``; the rows that see
    all of it are ``t ∈ [k1 - 1 - right, k0 + left]`` and need no mask.
    """
    off = k_len - q_len
    first, last = off, off + q_len - 1
    tiles: list[Tile] = []
    for k0 in range(0, k_len, block_k):
        k1 = min(k0 + block_k, k_len)
        any_lo = first if span.right is None else max(first, k0 - span.right)
        any_hi = last if span.left is None else min(last, k1 - 1 + span.left)
        if any_lo > any_hi:
            continue  # no query sees this block: skipped entirely
        full_lo = any_lo if span.right is None else max(any_lo, k1 - 1 - span.right)
        full_hi = any_hi if span.left is None else min(any_hi, k0 + span.left)
        if full_lo > full_hi:
            tiles += _split(any_lo, any_hi, block_q, k0, k1, True, off)
            continue
        tiles += _split(any_lo, full_lo - 1, block_q, k0, k1, True, off)
        tiles += _split(full_lo, full_hi, block_q, k0, k1, False, off)
        tiles += _split(full_hi + 1, any_hi, block_q, k0, k1, True, off)
    return tiles


def _split_heads(t: Tensor | None, kv_heads: int, group: int) -> Tensor | None:
    """A 4-D mask/bias ``(b, h, q, k)`` with h in {1, heads} -> 5-D ``(b, kv_heads | 1, group | 1, q, k)``."""
    if t is None:
        return None
    if t.shape[1] == 1:
        return t.unsqueeze(2)
    return t.reshape(t.shape[0], kv_heads, group, t.shape[2], t.shape[3])


def _slice(t: Tensor, tile: Tile) -> Tensor:
    """The tile's part of a broadcastable ``(..., q, k)`` tensor (size-1 dims stay as they are)."""
    rows = slice(tile.q0, tile.q1) if t.shape[-2] != 1 else slice(None)
    cols = slice(tile.k0, tile.k1) if t.shape[-1] != 1 else slice(None)
    return t[..., rows, cols]


@dataclass
class _Plan:
    """Everything the autograd Function needs besides tensors."""

    tiles: list[Tile]
    span: Span
    k_len: int
    q_len: int
    kv_heads: int
    group: int
    score: ScoreFunction | None  # None: q and k are already transformed and scaled, tiles are plain matmuls
    scale: float
    dropout: float
    seed: int


def _band_mask(tile: Tile, plan: _Plan, device: torch.device) -> Tensor:
    """The causal/window mask of one tile, ``(tq, tk)``."""
    return plan.span.block(plan.q_len, plan.k_len, (tile.q0, tile.q1), (tile.k0, tile.k1), device)


def _score_tile(plan: _Plan, qt: Tensor, kt: Tensor, k0: int) -> Tensor:
    """Raw scaled scores of a tile: ``qt (b, kvh, g, tq, d)`` x ``kt (b, kvh, 1, tk, d)`` -> ``(b, kvh, g, tq, tk)``."""
    if plan.score is None:
        return qt @ kt.transpose(-2, -1)
    # score functions take (batch, heads, len, dim): flatten the group into heads for them
    b, kvh, g, tq, d = qt.shape
    q4 = qt.reshape(b, kvh * g, tq, d)
    k4 = kt.expand(b, kvh, g, kt.shape[-2], kt.shape[-1]).reshape(b, kvh * g, kt.shape[-2], kt.shape[-1])
    return (plan.score(q4, k4, key_start=k0) * plan.scale).reshape(b, kvh, g, tq, kt.shape[-2])


def _finish_scores(plan: _Plan, s: Tensor, tile: Tile, bias5: Tensor | None, mask5: Tensor | None) -> Tensor:
    """Add the bias and apply the masks of one tile to its raw scores, in place (``s`` must be a fresh tensor)."""
    if bias5 is not None:
        s += _slice(bias5, tile)
    allowed = _slice(mask5, tile) if mask5 is not None else None
    if tile.masked:
        band = _band_mask(tile, plan, s.device)
        allowed = band if allowed is None else allowed & band
    if allowed is not None:
        s.masked_fill_(~allowed, _NEG_INF)
    return s


def _dropout_keep(plan: _Plan, index: int, shape: torch.Size, device: torch.device) -> Tensor:
    """The keep-mask of tile ``index``; regenerated identically in backward from the call's seed."""
    gen = torch.Generator(device=device)
    gen.manual_seed((plan.seed * 1_000_003 + index) % (2**63))
    return torch.rand(shape, generator=gen, device=device) >= plan.dropout


def _sum_group(t: Tensor) -> Tensor:
    """Sum per-query-head key/value gradients ``(b, kvh, g, n, d)`` over the group (no copy when g = 1)."""
    return t if t.shape[2] == 1 else t.sum(dim=2, keepdim=True)


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q5, k5, v5, bias5, mask5, plan: _Plan, *params):  # type: ignore[no-untyped-def, override]
        b, kvh, g, q_len, _ = q5.shape
        row_max = q5.new_full((b, kvh, g, q_len), _NEG_INF)
        row_sum = q5.new_zeros((b, kvh, g, q_len))
        acc = q5.new_zeros((b, kvh, g, q_len, v5.shape[-1]))
        keep_scale = 1.0 / (1.0 - plan.dropout) if plan.dropout > 0 else 1.0
        for index, tile in enumerate(plan.tiles):
            rows = slice(tile.q0, tile.q1)
            s = _score_tile(plan, q5[..., rows, :], k5[..., tile.k0 : tile.k1, :], tile.k0)
            s = _finish_scores(plan, s, tile, bias5, mask5)
            m_old = row_max[..., rows]
            m_new = torch.maximum(m_old, s.amax(dim=-1))
            m_safe = m_new.masked_fill(torch.isneginf(m_new), 0.0)
            p = s.sub_(m_safe.unsqueeze(-1)).exp_()  # in place: the tile's scores become its probabilities
            rescale = (m_old - m_safe).exp_()  # exp(-inf) = 0 wipes an empty accumulator
            row_sum[..., rows].mul_(rescale).add_(p.sum(dim=-1))
            if plan.dropout > 0:
                p = p * _dropout_keep(plan, index, p.shape, p.device) * keep_scale
            acc[..., rows, :].mul_(rescale.unsqueeze(-1)).add_(p @ v5[..., tile.k0 : tile.k1, :])
            row_max[..., rows] = m_new
        empty = row_sum == 0  # rows that saw no allowed key: output 0, lse -inf
        out = acc / torch.where(empty, torch.ones_like(row_sum), row_sum).unsqueeze(-1)
        lse = torch.where(empty, torch.full_like(row_sum, _NEG_INF), row_max + torch.log(row_sum))
        ctx.plan = plan
        # parameters are inputs only so that autograd routes their gradients here; backward reads them off the module
        ctx.save_for_backward(q5, k5, v5, bias5, mask5, out, lse)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):  # type: ignore[no-untyped-def, override]
        q5, k5, v5, bias5, mask5, out, lse = ctx.saved_tensors
        plan: _Plan = ctx.plan
        params = tuple(plan.score.parameters()) if plan.score is not None else ()
        want_q, want_k, want_v, want_bias = ctx.needs_input_grad[:4]
        want_params = ctx.needs_input_grad[6:]
        grad_out = grad_out.contiguous()
        delta = (grad_out * out).sum(dim=-1)  # (b, kvh, g, q): rowsum(dO ∘ O) = Σ_j P_ij dP_ij
        # rows with lse = -inf had no allowed key: +inf makes exp(s - lse) = 0 there without NaN
        lse = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
        dq = torch.zeros_like(q5)
        dk = torch.zeros_like(k5)
        dv = torch.zeros_like(v5)
        dbias = torch.zeros_like(bias5) if want_bias else None
        dparams = [torch.zeros_like(p) if w else None for p, w in zip(params, want_params)]
        keep_scale = 1.0 / (1.0 - plan.dropout) if plan.dropout > 0 else 1.0
        for index, tile in enumerate(plan.tiles):
            rows, cols = slice(tile.q0, tile.q1), slice(tile.k0, tile.k1)
            qt, kt, vt, dot = q5[..., rows, :], k5[..., cols, :], v5[..., cols, :], grad_out[..., rows, :]
            generic = plan.score is not None
            if generic:  # re-run the score with autograd for this tile only
                qt, kt = qt.detach().requires_grad_(), kt.detach().requires_grad_()
                with torch.enable_grad():
                    raw = _score_tile(plan, qt, kt, tile.k0)
                s = _finish_scores(plan, raw.detach().clone(), tile, bias5, mask5)
            else:
                s = _finish_scores(plan, _score_tile(plan, qt, kt, tile.k0), tile, bias5, mask5)
            p = s.sub_(lse[..., rows].unsqueeze(-1)).exp_()
            dp = dot @ vt.transpose(-2, -1)
            if plan.dropout > 0:
                keep = _dropout_keep(plan, index, p.shape, p.device) * keep_scale
                p_applied, dp = p * keep, dp.mul_(keep)
            else:
                p_applied = p
            if want_v:
                dv[..., cols, :] += _sum_group(p_applied.transpose(-2, -1) @ dot)
            ds = dp.sub_(delta[..., rows].unsqueeze(-1)).mul_(p)  # dS = P ∘ (dP - rowsum(dO ∘ O))
            if dbias is not None:
                target = _slice(dbias, tile)
                target += ds.sum_to_size(target.shape)
            if generic:
                inputs = [qt, kt] + [p for p, w in zip(params, want_params) if w]
                grads = torch.autograd.grad(raw, inputs, ds, allow_unused=True)
                if want_q and grads[0] is not None:
                    dq[..., rows, :] += grads[0]
                if want_k and grads[1] is not None:
                    dk[..., cols, :] += grads[1]
                wanted = iter(grads[2:])
                for i, w in enumerate(want_params):
                    if w:
                        g = next(wanted)
                        if g is not None:
                            dparams[i] += g
            else:
                if want_q:
                    dq[..., rows, :] += ds @ kt
                if want_k:
                    dk[..., cols, :] += _sum_group(ds.transpose(-2, -1) @ qt)
        return (
            dq if want_q else None,
            dk if want_k else None,
            dv if want_v else None,
            dbias,
            None,
            None,
            *dparams,
        )


def _prepare(call: AttentionCall, block_q: int, block_k: int | None) -> tuple[Tensor, Tensor, Tensor, _Plan, tuple]:
    """Transform/scale q and k where possible and view everything as 5-D ``(b, kv_heads, group, len, dim)``."""
    if block_k is None:
        block_k = DEFAULT_BLOCK_K if call.span.left is None else WINDOW_BLOCK_K
    q, k, v = call.q, call.k, call.v
    pair = call.score.as_dot_product(q, k)
    if pair is not None:
        q, k = pair
        q = q * call.scale  # folded into q: the tiles become plain matmuls
        score, params = None, ()
    else:
        score, params = call.score, tuple(call.score.parameters())
    # fp32 throughout: the online softmax rescales repeatedly and bf16 sums would drift
    compute = compute_dtype(q.dtype)
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    b, h, q_len, _ = q.shape
    q5 = q.reshape(b, call.kv_heads, call.group, q_len, q.shape[-1])
    seed = int(torch.randint(0, 2**62, (1,)).item()) if call.dropout > 0 else 0
    plan = _Plan(
        tiles=plan_tiles(call.q_len, call.k_len, call.span, block_q, block_k),
        span=call.span,
        k_len=call.k_len,
        q_len=call.q_len,
        kv_heads=call.kv_heads,
        group=call.group,
        score=score,
        scale=call.scale,
        dropout=call.dropout,
        seed=seed,
    )
    return q5, k.unsqueeze(2), v.unsqueeze(2), plan, params


def chunked_weights(call: AttentionCall, block_q: int = DEFAULT_BLOCK_Q, block_k: int | None = None) -> Tensor:
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
            s = _score_tile(plan, q5[..., rows, :], k5[..., tile.k0 : tile.k1, :], tile.k0)
            s = _finish_scores(plan, s, tile, bias5, mask5)
            weights[..., rows, tile.k0 : tile.k1] = torch.exp(s - lse[..., rows].unsqueeze(-1))
        return weights.reshape(call.batch, call.heads, call.q_len, call.k_len)


class _NoCtx:
    """Stands in for autograd's ctx when the forward is reused for weights only."""

    def save_for_backward(self, *tensors: object) -> None:
        pass

    def mark_non_differentiable(self, *tensors: object) -> None:
        pass


def chunked_attention(
    call: AttentionCall, block_q: int = DEFAULT_BLOCK_Q, block_k: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """Returns ``out (batch, heads, q_len, v_dim)`` and, when asked for, exact weights recomputed tile by tile."""
    q5, k5, v5, plan, params = _prepare(call, block_q, block_k)
    bias5 = _split_heads(call.bias.to(q5.dtype) if call.bias is not None else None, call.kv_heads, call.group)
    mask5 = _split_heads(call.mask, call.kv_heads, call.group)
    out5, _ = _ChunkedAttention.apply(q5, k5, v5, bias5, mask5, plan, *params)
    out = out5.reshape(call.batch, call.heads, call.q_len, -1).to(call.q.dtype)
    weights = chunked_weights(call, block_q, block_k).to(call.q.dtype) if call.return_weights else None
    return out, weights
