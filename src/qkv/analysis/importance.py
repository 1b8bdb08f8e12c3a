"""Head importance: how much a metric (by default the next-token loss) changes when each head is ablated.

Two ways, both ``(layers, heads)``, layers counted as :func:`qkv.visualization.attention_modules` counts them:

* ``method="exact"`` runs the ablations, at each attention module's ``hook_z``: the heads of one layer are ablated
  together, one head per copy of the batch, in one forward pass, which starts at that layer
  (``start_at_layer``, from the clean run's ``hook_resid_pre``) where the model can: the layers before it cannot
  see the ablation.
* ``method="attribution"``, attribution patching (Nanda 2023; Syed et al. 2023): the first-order Taylor estimate
  ``(ablated - actual) · d metric / d head output`` for every head from one forward and one backward pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.analysis.intervene import ABLATIONS, head_means
from qkv.attention.hooks import hook_points, record
from qkv.attention.multi_head import MultiHeadAttention, named_attention_modules
from qkv.errors import ConfigError
from qkv.models.modes import eval_mode

__all__ = ["METHODS", "causal_lm_loss", "head_importance", "rank_correlation"]

METHODS = ("exact", "attribution")
Metric = Callable[..., Tensor]  # metric(output, ids, **model_kwargs) -> (batch,)


def causal_lm_loss(output: Any, ids: Tensor, **_inputs: Any) -> Tensor:
    """Per-example mean next-token cross-entropy ``(batch,)`` of a causal LM's ``output`` on ``ids (batch, seq)``."""
    logits = output.logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (half precision: the loss in fp32)
    losses = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (batch, seq - 1)
    return losses.mean(dim=1)


def head_importance(
    model: nn.Module,
    ids: Tensor,
    ablation: str = "zero",
    metric: Metric = causal_lm_loss,
    *,
    method: str = "exact",
    heads_per_pass: int | None = None,
    **model_kwargs: Any,
) -> Tensor:
    """``metric(head ablated) - metric(clean)``, averaged over the batch, for every head: ``(layers, heads)`` fp64.

    Args:
        ids: ``(batch, seq)`` the input, passed as ``model(ids, **model_kwargs)``; tensors in ``model_kwargs``
            (e.g. BERT's ``attention_mask``) have the batch first.
        ablation: ``"zero"`` or ``"mean"`` (the head's mean output over the batch and positions; over the real
            tokens only when ``model_kwargs`` has an ``attention_mask``), as in :func:`qkv.intervene`.
        metric: ``metric(model_output, ids, **model_kwargs) -> (batch,)``, given the inputs the model was given (in
            the exact method, the batch is repeated once per head scored in a pass); the default is the next-token
            loss of a causal LM.
        method: ``"exact"`` (the ablations, run) or ``"attribution"`` (their gradient estimate, one backward
            pass).
        heads_per_pass: exact method: at most this many heads' copies of the batch in one pass (default: all the
            heads of a layer); lower it to bound memory.
    """
    if ablation not in ABLATIONS:
        raise ConfigError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if heads_per_pass is not None and heads_per_pass < 1:
        raise ConfigError(f"heads_per_pass must be at least 1, got {heads_per_pass}")
    named = named_attention_modules(model)
    if not named:
        raise ConfigError(f"{type(model).__name__} has no qkv MultiHeadAttention modules to score")
    scoring = _Scoring(model, [m for _, m in named], [n for n, _ in named], ids, ablation, metric, model_kwargs)
    with eval_mode(model):  # dropout off: an ablation's effect must not drown in noise
        if method == "attribution":
            return _attribution(scoring)
        return _exact(scoring, heads_per_pass)


@dataclass
class _Scoring:
    """What every method needs: the model, its attention modules, the input and the metric."""

    model: nn.Module
    modules: list[MultiHeadAttention]
    names: list[str]  # the modules' paths: their heads' outputs are at name + ".hook_z"
    ids: Tensor
    ablation: str
    metric: Metric
    inputs: Mapping[str, Any]  # the model's keyword arguments

    def run(self, copies: int = 1, **start: Any) -> Tensor:
        """The metric per example ``(copies · batch,)`` of one forward pass on ``copies`` copies of the input
        (``start``: ``start_at_layer`` and ``residual``, given to the model only)."""
        ids, inputs = _tile(self.ids, copies), _tile(self.inputs, copies)
        values = self.metric(self.model(ids, **inputs, **start), ids, **inputs)
        if values.shape != ids.shape[:1]:
            raise ConfigError(
                f"metric must return one value per example, shape ({ids.shape[0]},), got {tuple(values.shape)}"
            )
        return values.double()

    @property
    def token_mask(self) -> Tensor | None:
        """The real tokens ``(batch, seq)`` when the model was given a padding mask (BERT's ``attention_mask``):
        a head's mean is taken over them only."""
        return self.inputs.get("attention_mask")

    def table(self) -> Tensor:
        """Zeros ``(layers, heads)`` to fill."""
        return torch.zeros(len(self.modules), max(m.num_heads for m in self.modules), dtype=torch.float64)


def _tile(value: Any, copies: int) -> Any:
    """``value`` with every tensor repeated ``copies`` times along the batch (copy-major)."""
    if isinstance(value, Tensor):
        return value.repeat(copies, *([1] * (value.dim() - 1))) if value.dim() else value
    if isinstance(value, tuple):
        return tuple(_tile(v, copies) for v in value)
    if isinstance(value, Mapping):
        return {key: _tile(v, copies) for key, v in value.items()}
    return value


@torch.no_grad()
def _exact(scoring: _Scoring, heads_per_pass: int | None) -> Tensor:
    hook_z = [f"{name}.hook_z" if name else "hook_z" for name in scoring.names]
    starts = _layer_starts(scoring)
    names = hook_z + [resid for _, resid in starts.values()]
    with record(scoring.model, names=names) as cache:  # one clean run: the metric, each head's output, each input
        clean = scoring.run()
    out = scoring.table()
    for layer, module in enumerate(scoring.modules):
        if hook_z[layer] not in cache:
            raise ConfigError(
                f"attention module {scoring.names[layer]!r} did not run on this input: it cannot be ablated"
            )
        step = heads_per_pass or module.num_heads
        for first in range(0, module.num_heads, step):
            heads = list(range(first, min(first + step, module.num_heads)))
            mean = (
                head_means(cache[hook_z[layer]][:, heads], scoring.token_mask) if scoring.ablation == "mean" else None
            )
            hook = module.hook_z.register_forward_hook(_batched_ablation(heads, scoring.ids.shape[0], mean))
            start = {}
            if layer in starts:  # the layers before this one cannot see the ablation: start from their output
                index, resid = starts[layer]
                start = {"start_at_layer": index, "residual": _tile(cache[resid], len(heads))}
            try:
                ablated = scoring.run(len(heads), **start).view(len(heads), -1)
            finally:
                hook.remove()
            out[layer, heads] = (ablated - clean).mean(dim=1).cpu()
    return out


def _layer_starts(scoring: _Scoring) -> dict[int, tuple[int, str]]:
    """For each attention module a forward pass can start at: its layer's index and the hook point of the stream
    entering that layer (``blocks.3.attn`` -> ``(3, "blocks.3.hook_resid_pre")``). Only for models whose forward
    takes ``start_at_layer`` (GPT, BERT), for modules directly inside a numbered layer."""
    if "start_at_layer" not in inspect.signature(scoring.model.forward).parameters:
        return {}
    points = hook_points(scoring.model)
    starts = {}
    for layer, name in enumerate(scoring.names):
        parent, _, _ = name.rpartition(".")
        index = parent.rpartition(".")[2]
        resid = f"{parent}.hook_resid_pre"
        if index.isdigit() and int(index) > 0 and resid in points:
            starts[layer] = (int(index), resid)
    return starts


def _batched_ablation(heads: list[int], batch: int, means: Tensor | None) -> Callable[..., Tensor]:
    """A ``hook_z`` forward hook: copy ``i`` of the batch (rows ``i·batch`` to ``(i+1)·batch``) has head
    ``heads[i]`` ablated."""
    copy = torch.arange(len(heads))
    index = torch.tensor(heads)

    def hook(_module: nn.Module, _args: Any, out: Tensor) -> Tensor:  # (copies · batch, heads, q, d)
        out = out.clone()
        view = out.view(len(heads), batch, *out.shape[1:])
        at = view[copy.to(out.device), :, index.to(out.device)]  # (copies, batch, q_len, head_dim)
        value = torch.zeros_like(at) if means is None else means.to(out)[:, None, None, :].expand_as(at)
        view[copy.to(out.device), :, index.to(out.device)] = value
        return out

    return hook


def _attribution(scoring: _Scoring) -> Tensor:
    # A zero probe added to every head's output: its gradient is the metric's gradient w.r.t. that output, with the
    # paths through every later layer kept (and no parameter needs requires_grad).
    probes: dict[int, tuple[Tensor, Tensor]] = {}

    def probe(index: int) -> Callable[..., Tensor]:
        def hook(_module: nn.Module, _args: Any, out: Tensor) -> Tensor:
            zero = torch.zeros_like(out, requires_grad=True)
            probes[index] = (out.detach(), zero)
            return out + zero

        return hook

    with ExitStack() as stack, torch.enable_grad():
        for index, module in enumerate(scoring.modules):
            stack.callback(module.hook_z.register_forward_hook(probe(index)).remove)
        value = scoring.run().mean()
        order = sorted(probes)
        grads = torch.autograd.grad(value, [probes[i][1] for i in order], allow_unused=True)
    out = scoring.table()
    for index, grad in zip(order, grads):
        actual = probes[index][0].double()  # (batch, heads, q_len, head_dim)
        if grad is None:  # the metric does not depend on this layer
            continue
        target = (
            torch.zeros_like(actual)
            if scoring.ablation == "zero"
            else head_means(actual, scoring.token_mask)[None, :, None, :]
        )
        out[index, : actual.shape[1]] = ((target - actual) * grad.double()).sum(dim=(0, 2, 3)).cpu()
    return out


def rank_correlation(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two same-shape tensors (flattened; ties ranked by position)."""
    if a.shape != b.shape:
        raise ConfigError(f"rank_correlation needs same-shape tensors, got {tuple(a.shape)} and {tuple(b.shape)}")

    def ranks(x: Tensor) -> Tensor:
        return x.flatten().argsort().argsort().double()

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))
