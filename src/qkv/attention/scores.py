"""Score functions: how a query and a key become one number before the softmax.

Every score maps queries ``(batch, heads, q_len, q_dim)`` and keys ``(batch, heads, k_len, k_dim)`` to raw scores
``(batch, heads, q_len, k_len)``; :func:`qkv.attend` multiplies them by ``scale`` afterwards.

| name         | score(q_i, k_j)                         | parameters                  | text                         |
|--------------|-----------------------------------------|-----------------------------|------------------------------|
| `dot`        | q_i · k_j                               | none                        | Luong et al. 2015            |
| `scaled_dot` | q_i · k_j  (scale defaults to 1/√d)     | none                        | Vaswani et al. 2017          |
| `cosine`     | q_i · k_j / (‖q_i‖ ‖k_j‖)               | none                        | Graves et al. 2014 (NTM)     |
| `general`    | q_iᵀ W k_j                              | W (q_dim × k_dim)           | Luong et al. 2015            |
| `additive`   | vᵀ tanh(W_q q_i + W_k k_j + b)          | W_q, W_k, b, v              | Bahdanau et al. 2015 (concat)|
| `location`   | (W q_i)_j                               | W (max_len × q_dim)         | Luong et al. 2015            |

Scores that are a dot product after transforming q and k (`dot`, `scaled_dot`, `cosine`, `general`) expose that
through :meth:`ScoreFunction.as_dot_product`, which lets the fused (SDPA) and fast chunked paths serve them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import TypeVar, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.errors import ConfigError, ShapeError, UnknownNameError

__all__ = [
    "AdditiveScore",
    "CosineScore",
    "DotScore",
    "GeneralScore",
    "LocationScore",
    "ScaledDotScore",
    "ScoreFunction",
    "available_scores",
    "make_score",
    "register_score",
    "resolve_score",
]


class ScoreFunction(nn.Module):
    """Base class of score functions.

    Subclasses implement either :meth:`as_dot_product` (preferred: the fast paths can use it) or :meth:`forward`.
    """

    #: a score that does not need the key vectors themselves (``location``) sets this to False.
    uses_keys: bool = True

    def default_scale(self, head_dim: int) -> float:
        """The multiplier applied to raw scores when :func:`qkv.attend` is called with ``scale=None``."""
        return 1.0

    def as_dot_product(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor] | None:
        """Return ``(q', k')`` with ``score(q, k) == q' @ k'ᵀ``, or None when the score is not of that form."""
        return None

    def check_dims(self, q_dim: int, k_dim: int) -> None:
        """Raise :class:`ShapeError` when queries of size ``q_dim`` and keys of size ``k_dim`` cannot be scored."""
        if q_dim != k_dim:
            raise ShapeError(
                f"score {self.extra_name()!r} needs queries and keys of the same size, got q_dim={q_dim} and "
                f"k_dim={k_dim}; use score='general' or 'additive' to compare vectors of different sizes"
            )

    def extra_name(self) -> str:
        return type(self).__name__

    def forward(self, q: Tensor, k: Tensor, key_start: int = 0) -> Tensor:
        """Raw scores ``(batch, heads, q_len, k_len)``.

        ``key_start`` is the absolute position of ``k[..., 0, :]`` among all keys; only position-based scores
        (``location``) use it, so that a backend may score one block of keys at a time.
        """
        pair = self.as_dot_product(q, k)
        if pair is None:  # pragma: no cover - a subclass must override one of the two
            raise NotImplementedError(f"{type(self).__name__} implements neither forward nor as_dot_product")
        q2, k2 = pair
        return q2 @ k2.transpose(-2, -1)


class _SizedScore(ScoreFunction):
    """A parametric score built for fixed query and key sizes (``self.q_dim``, ``self.k_dim``)."""

    q_dim: int
    k_dim: int

    def check_dims(self, q_dim: int, k_dim: int) -> None:
        if (q_dim, k_dim) != (self.q_dim, self.k_dim):
            raise ShapeError(
                f"score {self.extra_name()!r} was built for q_dim={self.q_dim}, k_dim={self.k_dim} but got "
                f"q_dim={q_dim}, k_dim={k_dim}"
            )


class DotScore(ScoreFunction):
    """``q · k`` (Luong's ``dot``)."""

    def extra_name(self) -> str:
        return "dot"

    def as_dot_product(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return q, k


class ScaledDotScore(DotScore):
    """``q · k / √d`` (the Transformer's scaled dot product)."""

    def extra_name(self) -> str:
        return "scaled_dot"

    def default_scale(self, head_dim: int) -> float:
        return 1.0 / math.sqrt(head_dim)


class CosineScore(ScoreFunction):
    """Cosine similarity of q and k; pass ``scale`` to :func:`qkv.attend` as a temperature (default 1)."""

    def extra_name(self) -> str:
        return "cosine"

    def as_dot_product(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        # eps keeps a zero vector from producing NaN: its cosine with anything becomes 0.
        return F.normalize(q, dim=-1, eps=1e-12), F.normalize(k, dim=-1, eps=1e-12)


class GeneralScore(_SizedScore):
    """Bilinear ``qᵀ W k`` (Luong's ``general``); W maps keys of size ``k_dim`` into the query space."""

    def __init__(self, q_dim: int, k_dim: int | None = None) -> None:
        super().__init__()
        k_dim = q_dim if k_dim is None else k_dim
        self.q_dim, self.k_dim = q_dim, k_dim
        self.weight = nn.Parameter(torch.empty(q_dim, k_dim))
        nn.init.xavier_uniform_(self.weight)

    def extra_name(self) -> str:
        return "general"

    def as_dot_product(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        # q W kᵀ == q (k Wᵀ)ᵀ: transforming the keys keeps the score a plain dot product.
        return q, k @ self.weight.to(k.dtype).t()


class AdditiveScore(_SizedScore):
    """Additive / concat score ``vᵀ tanh(W_q q + W_k k + b)`` (Bahdanau; Luong's ``concat``).

    Memory is ``q_len × k_len × hidden_dim`` per block: the chunked backend keeps it bounded for long inputs.
    """

    def __init__(self, q_dim: int, k_dim: int | None = None, hidden_dim: int | None = None) -> None:
        super().__init__()
        k_dim = q_dim if k_dim is None else k_dim
        hidden_dim = q_dim if hidden_dim is None else hidden_dim
        self.q_dim, self.k_dim = q_dim, k_dim
        self.query_proj = nn.Linear(q_dim, hidden_dim, bias=True)
        self.key_proj = nn.Linear(k_dim, hidden_dim, bias=False)
        self.v = nn.Linear(hidden_dim, 1, bias=False)

    def extra_name(self) -> str:
        return "additive"

    def forward(self, q: Tensor, k: Tensor, key_start: int = 0) -> Tensor:
        wq = self.query_proj(q)  # (b, h, q_len, hidden)
        wk = self.key_proj(k)  # (b, h, k_len, hidden)
        # broadcast to (b, h, q_len, k_len, hidden), then v projects hidden -> 1
        return self.v(torch.tanh(wq.unsqueeze(-2) + wk.unsqueeze(-3))).squeeze(-1)


class LocationScore(ScoreFunction):
    """Luong's location-based score ``a_t = W h_t``: the query alone predicts a score for each source position.

    Supports up to ``max_len`` keys; the key vectors are ignored (only their count and positions matter).
    """

    uses_keys = False

    def __init__(self, q_dim: int, max_len: int) -> None:
        super().__init__()
        self.q_dim, self.max_len = q_dim, max_len
        self.proj = nn.Linear(q_dim, max_len)

    def extra_name(self) -> str:
        return "location"

    def check_dims(self, q_dim: int, k_dim: int) -> None:
        if q_dim != self.q_dim:
            raise ShapeError(f"score 'location' was built for q_dim={self.q_dim} but got q_dim={q_dim}")

    def forward(self, q: Tensor, k: Tensor, key_start: int = 0) -> Tensor:
        k_len = k.shape[-2]
        if key_start + k_len > self.max_len:
            raise ShapeError(
                f"score 'location' was built for at most max_len={self.max_len} keys but got "
                f"{key_start + k_len}; build it with a larger max_len"
            )
        # project only onto the rows of W for this block of key positions
        weight = self.proj.weight[key_start : key_start + k_len].to(q.dtype)
        bias = self.proj.bias[key_start : key_start + k_len].to(q.dtype)
        return q @ weight.t() + bias  # (b, h, q_len, k_len): broadcasts against the keys' leading dims


ScoreFactory = Callable[..., ScoreFunction]
STANDARD_DIMS = frozenset({"q_dim", "k_dim", "hidden_dim", "max_len"})
_REGISTRY: dict[str, ScoreFactory] = {}
_PARAMETER_FREE: dict[str, ScoreFunction] = {}
F_ = TypeVar("F_", bound=ScoreFactory)


@overload
def register_score(name: str, factory: None = None, *, overwrite: bool = False) -> Callable[[F_], F_]: ...
@overload
def register_score(name: str, factory: F_, *, overwrite: bool = False) -> F_: ...
def register_score(name: str, factory: ScoreFactory | None = None, *, overwrite: bool = False):
    """Register a score function factory under ``name`` (use directly or as a class decorator).

    The factory is called with keyword dimensions (``q_dim``, ``k_dim``, ...) by :func:`make_score`; a factory that
    takes no arguments makes a parameter-free score usable as ``qkv.attend(..., score=name)``.
    """

    def add(f: F_) -> F_:
        if not overwrite and name in _REGISTRY:
            raise ConfigError(f"a score named {name!r} is already registered; pass overwrite=True to replace it")
        if not callable(f):
            raise ConfigError(f"register_score({name!r}, ...) needs a callable returning a ScoreFunction, got {f!r}")
        _REGISTRY[name] = f
        _PARAMETER_FREE.pop(name, None)
        return f

    return add if factory is None else add(factory)


def available_scores() -> list[str]:
    """Names of every registered score function."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> ScoreFactory:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError(f"unknown score {name!r}; known scores: {', '.join(available_scores())}") from None


def make_score(name: str, **dims: int) -> ScoreFunction:
    """Build a score module by name, e.g. ``make_score("general", q_dim=64)``.

    The standard sizes (``q_dim``, ``k_dim``, ``hidden_dim``, ``max_len``) are dropped when the score does not take
    them, so a caller can offer every size it knows and switch scores by name alone; any other keyword goes through
    (a misspelt one is an error, not silently ignored).
    """
    factory = _lookup(name)
    try:
        # a score class without its own __init__ shows nn.Module's (*args, **kwargs), yet takes nothing
        own_init = not (isinstance(factory, type) and inspect.getattr_static(factory, "__init__") is nn.Module.__init__)
        parameters = inspect.signature(factory).parameters.values() if own_init else []
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            taken = {p.name for p in parameters}
            dims = {key: value for key, value in dims.items() if key in taken or key not in STANDARD_DIMS}
    except (TypeError, ValueError):  # pragma: no cover - a callable without a signature gets everything
        pass
    try:
        return factory(**dims)
    except TypeError as exc:
        raise ConfigError(f"could not build score {name!r} from {dims}: {exc}") from None


def resolve_score(score: str | ScoreFunction) -> ScoreFunction:
    """Turn the ``score=`` argument of :func:`qkv.attend` into a module.

    Parameter-free scores may be named; scores with learnable weights must be passed as modules (built with
    :func:`make_score` or owned by :class:`qkv.MultiHeadAttention`), because a function call cannot own weights.
    """
    if isinstance(score, ScoreFunction):
        return score
    if not isinstance(score, str):
        raise ConfigError(f"score must be a registered name or a ScoreFunction module, got {type(score).__name__}")
    cached = _PARAMETER_FREE.get(score)
    if cached is not None:
        return cached
    factory = _lookup(score)
    try:
        module = factory()
    except TypeError:
        raise ConfigError(
            f"score {score!r} has learnable parameters, so it cannot be named in a plain attend() call; build it "
            f"once with qkv.attention.make_score({score!r}, q_dim=..., ...) and pass the module as score="
        ) from None
    _PARAMETER_FREE[score] = module
    return module


register_score("dot", DotScore)
register_score("scaled_dot", ScaledDotScore)
register_score("cosine", CosineScore)
register_score("general", GeneralScore)
register_score("additive", AdditiveScore)
register_score("concat", AdditiveScore)  # Luong's name for the same score
register_score("location", LocationScore)
