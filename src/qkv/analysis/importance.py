"""Head importance: how much a metric (by default the next-token loss) changes when each head is ablated.

Two ways, both ``(layers, heads)``, layers counted as :func:`qkv.visualization.attention_modules` counts them:

* ``method="exact"`` runs the ablations. It needs far less than one full forward per head: the layers that ran
  before the ablated head's layer cannot see the ablation, so their outputs are taken from one clean run instead of
  recomputed, and the heads of one layer are ablated together, one head per copy of the batch.
* ``method="attribution"``, attribution patching (Nanda 2023; Syed et al. 2023): the first-order Taylor estimate
  ``(ablated - actual) · d metric / d head output`` for every head from one forward and one backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.analysis.intervene import ABLATIONS, head_hooks, head_means, intervene, layer_modules
from qkv.errors import ConfigError
from qkv.models.modes import eval_mode
from qkv.visualization.capture import attention_modules

__all__ = ["METHODS", "causal_lm_loss", "head_importance", "rank_correlation"]

METHODS = ("exact", "attribution", "forwards")
Metric = Callable[..., Tensor]  # metric(output, ids, **model_kwargs) -> (batch,)


def causal_lm_loss(output: Any, ids: Tensor, **_inputs: Any) -> Tensor:  # noqa: ANN401
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
    **model_kwargs: Any,  # noqa: ANN401
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
        method: ``"exact"`` (the ablations, run), ``"attribution"`` (their gradient estimate, one backward pass) or
            ``"forwards"`` (the plain way the exact method must equal: one full forward per head under
            :func:`qkv.intervene`; for checking and timing).
        heads_per_pass: exact method: at most this many heads' copies of the batch in one pass (default: all the
            heads of a layer); lower it to bound memory.
    """
    if ablation not in ABLATIONS:
        raise ConfigError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if heads_per_pass is not None and heads_per_pass < 1:
        raise ConfigError(f"heads_per_pass must be at least 1, got {heads_per_pass}")
    modules = attention_modules(model)
    if not modules:
        raise ConfigError(f"{type(model).__name__} has no qkv MultiHeadAttention modules to score")
    scoring = _Scoring(model, modules, ids, ablation, metric, model_kwargs)
    with eval_mode(model):  # dropout off: an ablation's effect must not drown in noise, reused outputs must repeat
        if method == "attribution":
            return _attribution(scoring)
        if method == "forwards":
            return _one_forward_per_head(scoring)
        return _exact(scoring, heads_per_pass)


@dataclass
class _Scoring:
    """What every method needs: the model, its attention modules, the input and the metric."""

    model: nn.Module
    modules: list[nn.Module]
    ids: Tensor
    ablation: str
    metric: Metric
    inputs: Mapping[str, Any]  # the model's keyword arguments

    def run(self, copies: int = 1) -> Tensor:
        """The metric per example ``(copies · batch,)`` of one forward pass on ``copies`` copies of the input."""
        ids, inputs = _tile(self.ids, copies), _tile(self.inputs, copies)
        values = self.metric(self.model(ids, **inputs), ids, **inputs)
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


def _tile(value: Any, copies: int) -> Any:  # noqa: ANN401
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
    clean = _clean_run(scoring)
    out = scoring.table()
    for layer, module in enumerate(scoring.modules):
        if layer not in clean.head_outputs:
            raise ConfigError(f"attention module {layer} did not run on this input: it cannot be ablated")
        step = heads_per_pass or module.num_heads
        for first in range(0, module.num_heads, step):
            heads = list(range(first, min(first + step, module.num_heads)))
            mean = (
                head_means(clean.head_outputs[layer][:, heads], scoring.token_mask)
                if scoring.ablation == "mean"
                else None
            )
            hook = _batched_ablation(heads, scoring.ids.shape[0], mean)
            with head_hooks({module: hook}), _reuse(clean.done_before[layer], clean.layer_outputs, len(heads)):
                ablated = scoring.run(copies=len(heads)).view(len(heads), -1)
            out[layer, heads] = (ablated - clean.metric).mean(dim=1).cpu()
    return out


@torch.no_grad()
def _one_forward_per_head(scoring: _Scoring) -> Tensor:
    clean = scoring.run()
    out = scoring.table()
    for layer, module in enumerate(scoring.modules):
        for head in range(module.num_heads):
            with intervene(scoring.model, ablate={(layer, head): scoring.ablation}, token_mask=scoring.token_mask):
                out[layer, head] = float((scoring.run() - clean).mean())
    return out


@dataclass
class _CleanRun:
    """One unablated forward pass: its metric ``(batch,)``, each head's output, each layer module's output, and
    which layer modules had finished before each attention module started (their outputs cannot depend on its
    heads)."""

    metric: Tensor | None = None
    head_outputs: dict[int, Tensor] = field(default_factory=dict)
    layer_outputs: dict[nn.Module, Any] = field(default_factory=dict)
    done_before: dict[int, list[nn.Module]] = field(default_factory=dict)
    calls: dict[nn.Module, int] = field(default_factory=dict)


def _clean_run(scoring: _Scoring) -> _CleanRun:
    run = _CleanRun()
    model, modules = scoring.model, scoring.modules
    finished: list[nn.Module] = []
    layers = list(dict.fromkeys(layer_modules(model)))  # (a decoder layer holds two attention modules)

    def layer_done(module: nn.Module, _args: Any, output: Any) -> None:  # noqa: ANN401
        run.calls[module] = run.calls.get(module, 0) + 1
        run.layer_outputs[module] = output
        finished.append(module)

    def attention_starts(index: int) -> Callable:
        def hook(_module: nn.Module, _args: Any) -> None:  # noqa: ANN401
            run.done_before.setdefault(index, list(finished))

        return hook

    def keep_heads(index: int) -> Callable[[Tensor], Tensor]:
        def hook(out: Tensor) -> Tensor:
            run.head_outputs[index] = out
            return out

        return hook

    handles = [layer.register_forward_hook(layer_done) for layer in layers]
    handles += [m.register_forward_pre_hook(attention_starts(i)) for i, m in enumerate(modules)]
    try:
        with head_hooks({m: keep_heads(index) for index, m in enumerate(modules)}):
            run.metric = scoring.run()
    finally:
        for handle in handles:
            handle.remove()
    if any(count != 1 for count in run.calls.values()):  # a layer run twice (shared weights): nothing to reuse
        run.done_before = {index: [] for index in run.done_before}
    return run


def _batched_ablation(heads: list[int], batch: int, means: Tensor | None) -> Callable[[Tensor], Tensor]:
    """Copy ``i`` of the batch (rows ``i·batch`` to ``(i+1)·batch``) has head ``heads[i]`` ablated."""
    copy = torch.arange(len(heads))
    index = torch.tensor(heads)

    def hook(out: Tensor) -> Tensor:  # (copies · batch, heads, q_len, head_dim)
        out = out.clone()
        view = out.view(len(heads), batch, *out.shape[1:])
        at = view[copy.to(out.device), :, index.to(out.device)]  # (copies, batch, q_len, head_dim)
        value = torch.zeros_like(at) if means is None else means.to(out)[:, None, None, :].expand_as(at)
        view[copy.to(out.device), :, index.to(out.device)] = value
        return out

    return hook


@contextmanager
def _reuse(layers: list[nn.Module], outputs: Mapping[nn.Module, Any], copies: int) -> Iterator[None]:
    """Inside, each of ``layers`` returns its clean output (tiled to ``copies``) without computing anything."""
    saved = {layer: layer.__dict__.get("forward") for layer in layers}
    for layer in layers:
        tiled = _tile(outputs[layer], copies)
        layer.forward = lambda *_args, _tiled=tiled, **_kwargs: _tiled
    try:
        yield
    finally:
        for layer, forward in saved.items():
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


def _attribution(scoring: _Scoring) -> Tensor:
    # A zero probe added to every head's output: its gradient is the metric's gradient w.r.t. that output, with the
    # paths through every later layer kept (and no parameter needs requires_grad).
    probes: dict[int, tuple[Tensor, Tensor]] = {}

    def probe(index: int) -> Callable[[Tensor], Tensor]:
        def hook(out: Tensor) -> Tensor:
            zero = torch.zeros_like(out, requires_grad=True)
            probes[index] = (out.detach(), zero)
            return out + zero

        return hook

    with head_hooks({m: probe(index) for index, m in enumerate(scoring.modules)}), torch.enable_grad():
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
