"""Named hook points: identity modules at TransformerLens's places, and :func:`record`, which keeps what they see.

Every attention module has ``hook_q``, ``hook_k``, ``hook_v`` (after the projections; ``hook_rot_q``/``hook_rot_k``
after rotary positions), ``hook_attn_scores`` (what the softmax receives), ``hook_pattern`` (the weights) and
``hook_z`` (each head's output before W_O); every block ``hook_resid_pre``, ``hook_attn_out``, ``hook_resid_mid``,
``hook_mlp_out`` and ``hook_resid_post``. A hook point's name is its module path, ``blocks.3.attn.hook_pattern`` in a
GPT: the string TransformerLens uses. Shapes follow qkv's layout, heads before positions: ``(batch, heads, seq,
head_dim)`` for ``hook_q``/``k``/``v``/``z`` (TransformerLens: ``(batch, seq, heads, head_dim)``), ``(batch, heads,
q_len, k_len)`` for scores and pattern, ``(batch, seq, embed_dim)`` for the residual stream.

A hook point is PyTorch's own mechanism: attach ``register_forward_hook`` to it (a hook that returns a tensor
replaces the value), or let :func:`record` and ``qkv.intervene`` do it. A hook point nobody listens to returns its
input at once, and the scores and pattern, which the fast backends never materialise, are computed only when a hook
asks for them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from torch.nn.modules import module as torch_module

from qkv.errors import ConfigError

__all__ = [
    "ActivationCache",
    "DirectCall",
    "HookPoint",
    "HookPointOwner",
    "NameFilter",
    "block_hook_points",
    "hook_points",
    "record",
    "select_hook_points",
]


# PyTorch's process-wide module hooks (``register_module_forward_hook``) see hook points too; the dicts are changed
# in place, never rebound, so these names always see the current ones
_GLOBAL_FORWARD_HOOKS = torch_module._global_forward_hooks
_GLOBAL_FORWARD_PRE_HOOKS = torch_module._global_forward_pre_hooks
_GLOBAL_BACKWARD_HOOKS = torch_module._global_backward_hooks
_GLOBAL_BACKWARD_PRE_HOOKS = torch_module._global_backward_pre_hooks


def unhooked(module: nn.Module) -> bool:
    """True when no hook of any kind would run around ``module``'s forward: it may then be called directly,
    without ``nn.Module.__call__``'s machinery (a microsecond a call, a measurable share of a decoding step)."""
    return not (
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
        or _GLOBAL_FORWARD_HOOKS
        or _GLOBAL_FORWARD_PRE_HOOKS
        or _GLOBAL_BACKWARD_HOOKS
        or _GLOBAL_BACKWARD_PRE_HOOKS
    )


class DirectCall(nn.Module):
    """A module whose calls go straight to ``forward`` when nothing would run around it: no hook of any kind
    (:func:`unhooked`) and no ``Module.compile()``. ``nn.Module.__call__``'s machinery costs a few microseconds a call;
    a decoding step calls each layer's norms, attention and feed-forward once per token, so for small models that
    machinery was a measurable share of the step. With a hook attached the call takes the usual route, so hooks,
    ``register_module_forward_hook`` and FSDP's per-module hooks all still run."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled_call_impl is None and unhooked(self):
            return self.forward(*args, **kwargs)
        return super().__call__(*args, **kwargs)


class HookPoint(nn.Module):
    """The identity, with a name (its module path) where hooks attach.

    Args:
        head_axis: the dimension of the heads in the value it sees (1 in qkv's layout), or None: lets
            ``qkv.intervene`` edit single heads.
        position_axis: the dimension of the query positions (what a ``"mean"`` averages over with the batch).
    """

    def __init__(self, head_axis: int | None = None, position_axis: int = 1) -> None:
        super().__init__()
        self.head_axis, self.position_axis = head_axis, position_axis

    @property
    def active(self) -> bool:
        """True when a hook listens (the model then computes values it otherwise skips, e.g. the pattern)."""
        return not unhooked(self)

    def __call__(self, value: Tensor) -> Tensor:
        # the common case, nobody listening, skips nn.Module's call machinery (and, being written out here rather
        # than calling `active`, a second function call): unused hook points cost next to nothing
        if self._forward_hooks or self._forward_pre_hooks or _GLOBAL_FORWARD_HOOKS or _GLOBAL_FORWARD_PRE_HOOKS:
            return super().__call__(value)
        return value

    def forward(self, value: Tensor) -> Tensor:
        return value


class HookPointOwner(DirectCall):
    """A module with hook points as attributes (``self.hook_q``), read at the speed of a plain attribute.

    ``nn.Module`` keeps submodules in ``_modules`` and finds them through ``__getattr__``, a fallback that costs
    about half a microsecond a read: with a dozen hook points a layer, a measurable share of a small model's decoding
    step. A hook point assigned here is registered as usual (``named_modules``, ``to``, ``state_dict``) and also
    kept in the instance ``__dict__``, where attribute lookup finds it first.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if isinstance(value, HookPoint):
            self.__dict__[name] = value

    def __delattr__(self, name: str) -> None:
        if isinstance(self.__dict__.get(name), HookPoint):
            del self.__dict__[name]  # (then nn.Module removes the registered submodule)
        super().__delattr__(name)


def block_hook_points() -> tuple[HookPoint, HookPoint, HookPoint, HookPoint, HookPoint]:
    """A block's five hook points, ``(batch, seq, embed_dim)`` each: ``hook_resid_pre``, ``hook_attn_out``,
    ``hook_resid_mid``, ``hook_mlp_out``, ``hook_resid_post``, in that order."""
    return HookPoint(), HookPoint(), HookPoint(), HookPoint(), HookPoint()


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every hook point of ``model`` by its full name (module path), in definition order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, HookPoint)}


#: which hook points: every one (None), a list of full names, or a test on the name (TransformerLens's names_filter)
NameFilter = Sequence[str] | Callable[[str], bool] | None


def select_hook_points(model: nn.Module, names: NameFilter | Mapping[str, Any]) -> dict[str, HookPoint]:
    """The hook points ``names`` picks; a listed name that is not one is an error that suggests the closest."""
    points = hook_points(model)
    if not points:
        raise ConfigError(f"{type(model).__name__} has no hook points (qkv's models and MultiHeadAttention have them)")
    if names is None:
        return points
    if callable(names) and not isinstance(names, Mapping):
        return {name: point for name, point in points.items() if names(name)}
    if isinstance(names, str):
        raise ConfigError(f"names must be a list of hook point names or a test on them, got the string {names!r}")
    chosen = {}
    for name in names:
        if name not in points:
            close = difflib.get_close_matches(name, list(points), n=1, cutoff=0.5)
            hint = (
                f"; did you mean {close[0]!r}?"
                if close
                else f"; {type(model).__name__} has e.g. {next(iter(points))!r}"
            )
            raise ConfigError(f"{name!r} is not a hook point of {type(model).__name__}{hint}")
        chosen[name] = points[name]
    return chosen


class ActivationCache(Mapping[str, Tensor]):
    """What :func:`record` saw, by hook point name: ``cache["blocks.0.attn.hook_z"]`` is the value of the last
    forward call (TransformerLens's ``run_with_cache`` records one call); :meth:`calls` has every call in order (a
    decoding run calls the model once per token)."""

    def __init__(self) -> None:
        self._calls: dict[str, list[Tensor]] = {}

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._calls:
            close = difflib.get_close_matches(name, list(self._calls), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"{name!r} was not recorded{hint}")
        return self._calls[name][-1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._calls)

    def __len__(self) -> int:
        return len(self._calls)

    def calls(self, name: str) -> list[Tensor]:
        """Every value hook point ``name`` saw, one per forward call, in order."""
        self[name]  # (a missing name: the error that names the closest)
        return list(self._calls[name])

    def add(self, name: str, value: Tensor) -> None:
        self._calls.setdefault(name, []).append(value)


@contextmanager
def record(model: nn.Module, names: NameFilter = None, *, detach: bool = True) -> Iterator[ActivationCache]:
    """Keep the values the chosen hook points see while inside: ``with qkv.record(model, names=[...]) as cache:
    model(ids)`` then ``cache["blocks.3.hook_resid_post"]``.

    Args:
        names: every hook point (default), a list of full names, or a test ``name -> bool`` (e.g.
            ``lambda n: n.endswith("hook_pattern")``).
        detach: keep values without their autograd graph (default); False keeps it (to differentiate through).
    """
    cache = ActivationCache()
    points = select_hook_points(model, names)

    def keeper(name: str) -> Callable[[nn.Module, Any, Tensor], None]:
        def keep(_module: nn.Module, _args: Any, value: Tensor) -> None:
            cache.add(name, value.detach() if detach else value)

        return keep

    handles = [point.register_forward_hook(keeper(name)) for name, point in points.items()]
    try:
        yield cache
    finally:
        for handle in handles:
            handle.remove()
