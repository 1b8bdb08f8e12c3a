"""``qkv.intervene``: edit what a model computes at its named hook points while it runs, on its fast backend.

Keys are hook point names (``blocks.3.attn.hook_z``, ``blocks.3.hook_resid_post``: see
:mod:`qkv.attention.hooks`), the same key space as :func:`qkv.record`. Values say what to put there instead:
``"zero"``, ``"mean"`` (over the batch and the positions of the same forward pass; over real tokens only with
``token_mask``), a tensor (broadcast to the value: a recorded activation patched in, or a reference mean), or a
function ``value -> value``. Where the hook point has a head axis (``hook_q``, ``hook_k``, ``hook_v``, ``hook_z``,
``hook_attn_scores``, ``hook_pattern``), a ``{head: edit}`` mapping edits single heads: zero-ablating head 3 of
layer 0 is ``{"blocks.0.attn.hook_z": {3: "zero"}}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from qkv.attention.hooks import HookPoint, select_hook_points
from qkv.errors import ConfigError

__all__ = ["ABLATIONS", "Edit", "apply_edit", "head_means", "intervene"]

ABLATIONS = ("zero", "mean")
#: what replaces a hook point's value (or one head's slice of it)
Edit = Literal["zero", "mean"] | Tensor | Callable[[Tensor], Tensor]


def head_means(out: Tensor, token_mask: Tensor | None = None) -> Tensor:
    """Each head's mean output ``(heads, head_dim)`` over the batch and positions of ``out (batch, heads, q_len,
    head_dim)``: over the real tokens only when ``token_mask (batch, q_len)`` (1 = a real token, as BERT's
    ``attention_mask``) is given, so padding never pulls the mean (as nnsight's examples average)."""
    return _mean(out, 2, token_mask).squeeze(2).squeeze(0)


def _mean(value: Tensor, position_axis: int, token_mask: Tensor | None) -> Tensor:
    """The mean over the batch (dim 0) and ``position_axis``, kept as size-1 dims; over the real tokens of
    ``token_mask (batch, positions)`` when given."""
    dims = (0, position_axis)
    if token_mask is None:
        return value.mean(dim=dims, keepdim=True)
    positions = value.shape[position_axis]
    if token_mask.shape != (value.shape[0], positions):
        raise ConfigError(
            f"token_mask must be (batch, positions) = ({value.shape[0]}, {positions}) for this hook point, got "
            f"{tuple(token_mask.shape)}"
        )
    shape = [1] * value.dim()
    shape[0], shape[position_axis] = value.shape[0], positions
    weights = token_mask.to(device=value.device, dtype=value.dtype).view(shape)
    return (value * weights).sum(dim=dims, keepdim=True) / weights.sum(dim=dims, keepdim=True).clamp_min(1)


def apply_edit(
    value: Tensor, edit: Edit, position_axis: int, token_mask: Tensor | None = None, what: str = ""
) -> Tensor:
    """``value`` with ``edit`` applied (a new tensor; ``value`` is not changed)."""
    if isinstance(edit, str):
        if edit == "zero":
            return torch.zeros_like(value)
        if edit == "mean":
            return _mean(value, position_axis, token_mask).expand_as(value)
        raise ConfigError(f"unknown edit {edit!r} for {what}; choose 'zero', 'mean', a tensor or a function")
    if isinstance(edit, Tensor):
        try:
            fits = torch.broadcast_shapes(edit.shape, value.shape) == value.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ConfigError(
                f"the tensor for {what} has shape {tuple(edit.shape)}, which does not broadcast to the value's "
                f"{tuple(value.shape)}"
            )
        return edit.to(device=value.device, dtype=value.dtype).expand_as(value)
    if callable(edit):
        out = edit(value)
        if not isinstance(out, Tensor) or out.shape != value.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(f"the function for {what} must return a tensor of shape {tuple(value.shape)}, got {got}")
        return out
    raise ConfigError(f"an edit for {what} is 'zero', 'mean', a tensor or a function, got {type(edit).__name__}")


def _editor(
    name: str, point: HookPoint, edit: Edit | Mapping[int, Edit], token_mask: Tensor | None
) -> Callable[[nn.Module, Any, Tensor], Tensor]:
    """A forward hook for ``point`` that returns the edited value."""
    if isinstance(edit, Mapping):
        if point.head_axis is None:
            raise ConfigError(f"{name} has no head axis: give one edit for the whole value, not {{head: edit}}")
        axis = point.head_axis
        position_axis = point.position_axis - (point.position_axis > axis)  # (in one head's slice)

        def edit_heads(_module: nn.Module, _args: Any, value: Tensor) -> Tensor:
            out = value.clone()
            for head, one in edit.items():
                if not (isinstance(head, int) and 0 <= head < value.shape[axis]):
                    raise ConfigError(f"head {head!r} does not exist: {name} has {value.shape[axis]} heads")
                what = f"{name} head {head}"
                out.select(axis, head).copy_(apply_edit(value.select(axis, head), one, position_axis, token_mask, what))
            return out

        return edit_heads

    def edit_all(_module: nn.Module, _args: Any, value: Tensor) -> Tensor:
        return apply_edit(value, edit, point.position_axis, token_mask, name)

    return edit_all


@contextmanager
def intervene(
    model: nn.Module, edits: Mapping[str, Edit | Mapping[int, Edit]], *, token_mask: Tensor | None = None
) -> Iterator[nn.Module]:
    """Inside, the named hook points of ``model`` pass on the edited values (module docstring: what an edit is).

    ``with qkv.intervene(model, {"blocks.0.attn.hook_z": {3: "zero", 5: "mean"}}): model(ids)`` ablates two heads;
    ``{"blocks.2.hook_resid_post": cache["blocks.2.hook_resid_post"]}`` patches in a recorded activation.

    Args:
        token_mask: ``(batch, seq)``, 1 = a real token (BERT's ``attention_mask``): a ``"mean"`` averages over the
            real tokens only, never over padding.

    Yields the model. Edits nest: an inner ``intervene`` edits what an outer one passed on.
    """
    if not isinstance(edits, Mapping) or not edits:
        raise ConfigError(
            "edits must be a non-empty {hook point name: edit} mapping, e.g. {'blocks.0.attn.hook_z': 'zero'}"
        )
    points = select_hook_points(model, list(edits))
    with ExitStack() as stack:
        for name, point in points.items():
            stack.callback(point.register_forward_hook(_editor(name, point, edits[name], token_mask)).remove)
        yield model
