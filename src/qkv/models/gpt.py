"""A decoder-only language model that predicts the next token (GPT), built on :class:`MultiHeadAttention`.

Token embeddings (tied with the output layer by default), a choice of positions (learned, sinusoidal, rotary, ALiBi),
pre-norm blocks, a final norm. With a :class:`KVCache` it decodes one token at a time. The same class is the Llama
family's model (:mod:`qkv.models.llama`): RMSNorm, SwiGLU, rotary positions with scaling, grouped-query attention,
q/k/v biases (Qwen2) and a sliding window (Mistral) are settings of :class:`GPTConfig`.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import Tensor, nn

from qkv.attention.block_masks import BlockMask, block_mask
from qkv.attention.frozen import FrozenLinear
from qkv.attention.kv_cache import KVCache
from qkv.attention.mods import ScoreMod, T5RelativeBias, alibi, document
from qkv.attention.positional import (
    LearnedPositions,
    RopeScaling,
    RotaryEmbedding,
    SinusoidalPositions,
)
from qkv.errors import ConfigError, ShapeError, describe_shape
from qkv.models.blocks import (
    Activation,
    FeedForwardKind,
    Norm,
    PreNormBlock,
    dropout_layer,
    make_norm,
    start_residual,
)
from qkv.models.config import ModelConfig
from qkv.models.output import ModelOutput

__all__ = ["GPT", "GPTConfig"]

Positions = Literal["learned", "sinusoidal", "rotary", "alibi", "t5"]
POSITIONS: tuple[str, ...] = typing.get_args(Positions)


@dataclass
class GPTConfig(ModelConfig):
    """A decoder-only Transformer: GPT-2 with the defaults, the Llama family (Llama, Mistral, Qwen2) with
    :class:`~qkv.models.llama.LlamaConfig`'s; positions learned, sinusoidal, rotary, ALiBi or T5's bias.
    """

    vocab_size: int = 256
    max_seq_len: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None  # None = num_heads; fewer = grouped-query attention
    embed_dim: int = 128
    ffn_dim: int | None = None  # None = 4 * embed_dim
    dropout: float = 0.0
    positions: Positions = "learned"  # learned | sinusoidal | rotary | alibi | t5 (a learned relative bias, shared)
    t5_num_buckets: int = 32  # positions = "t5": distance buckets of the relative bias
    t5_max_distance: int = 128  # positions = "t5": distances beyond this share the last bucket
    linear_bias: bool = True  # biases in the linear layers and norms (nanoGPT's bias)
    activation: Activation = "gelu"
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    backend: str = "auto"
    norm: Norm = "layer"  # layer (LayerNorm) | rms (RMSNorm)
    feed_forward: FeedForwardKind = "mlp"  # mlp (up, activation, down) | swiglu (down(silu(gate) * up))
    qkv_bias: bool | None = None  # biases in the q/k/v projections; None = as bias (Qwen2: true with bias false)
    rope_theta: float = 10000.0  # rotary base
    rope: RopeScaling | None = None  # rotary scaling past the trained context (TOML: a [model.rope] table)
    sliding_window: int | None = None  # each token sees itself and the sliding_window - 1 tokens before it

    def validate(self) -> None:
        for name in ("positions", "activation", "norm", "feed_forward"):
            self.check_choice(name)
        self.check_positive("vocab_size", "max_seq_len", "num_layers", "num_heads", "embed_dim")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"model.embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"model.sliding_window must be >= 1 (or unset), got {self.sliding_window}")
        if self.rope is not None and self.positions != "rotary":
            raise ConfigError(f"model.rope (scaling {self.rope.kind!r}) needs positions = 'rotary'")
        self.check_dropout()

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        """The feed-forward width: ``ffn_dim``, else 4 x embed_dim for an MLP and 8/3 x (to a multiple of 32) for
        SwiGLU, which has three matrices instead of two (same parameters)."""
        if self.ffn_dim:
            return self.ffn_dim
        return 4 * self.embed_dim if self.feed_forward == "mlp" else -(-8 * self.embed_dim // 3 // 32) * 32


class GPT(nn.Module):
    """``forward(input_ids (batch, seq)) -> ModelOutput(logits (batch, seq, vocab), attentions, cache)``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.embed_dim)
        self.position_embedding: LearnedPositions | SinusoidalPositions | None = None
        if c.positions == "learned":
            self.position_embedding = LearnedPositions(c.max_seq_len, c.embed_dim)
        elif c.positions == "sinusoidal":
            self.position_embedding = SinusoidalPositions(c.max_seq_len, c.embed_dim)
        self.dropout = dropout_layer(c.dropout)
        # one rotary embedding, shared by every layer (it holds no weights, only the frequencies)
        self.rotary = RotaryEmbedding(c.head_dim, c.rope_theta, scaling=c.rope) if c.positions == "rotary" else None
        # ALiBi and T5's relative bias are score functions: no (heads, N, N) tensor, O(N) memory in the chunked backend
        self.relative_bias = (
            T5RelativeBias(c.num_heads, c.t5_num_buckets, c.t5_max_distance, bidirectional=False)
            if c.positions == "t5"
            else None
        )
        self._alibi = alibi(c.num_heads) if c.positions == "alibi" else None
        self.blocks = nn.ModuleList(
            PreNormBlock(
                c.embed_dim,
                c.num_heads,
                c.num_kv_heads,
                c.hidden_dim,
                activation=c.activation,
                dropout=c.dropout,
                linear_bias=c.linear_bias,
                norm_eps=c.norm_eps,
                rotary=self.rotary or False,
                backend=c.backend,
                norm=c.norm,
                feed_forward=c.feed_forward,
                qkv_bias=c.qkv_bias,
                window=c.sliding_window,
            )
            for _ in range(c.num_layers)
        )
        self.final_norm = make_norm(c.norm, c.embed_dim, c.norm_eps, c.linear_bias)
        self.lm_head = FrozenLinear(c.embed_dim, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2: N(0, 0.02), and the projections that write into the residual stream scaled by 1/sqrt(2 * layers)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for block in cast(list[PreNormBlock], self.blocks):
            for proj in (
                block.attn.out_proj,
                cast(nn.Linear, block.ffn.down),
            ):  # (both feed-forward kinds name it down)
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.config.num_layers))

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and isinstance(self.position_embedding, LearnedPositions):
            n -= self.position_embedding.embedding.weight.numel()
        return n

    def new_cache(self, batch_size: int, max_seq_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of up to ``max_seq_len`` (default: the context)."""
        c = self.config
        head_dim = c.head_dim
        param = next(self.parameters())
        return KVCache(
            c.num_layers,
            batch_size,
            c.num_kv_heads or c.num_heads,
            max_seq_len or c.max_seq_len,
            head_dim,
            dtype=dtype or param.dtype,
            device=param.device,
        )

    @property
    def score_mod(self) -> ScoreMod | None:
        """The score function every layer applies: ALiBi, T5's relative bias, or None."""
        return self._alibi or self.relative_bias

    def _documents(
        self, document_ids: Tensor, input_ids: Tensor, cache: KVCache | None, left_padding: Tensor | None
    ) -> tuple[Tensor, BlockMask]:
        """Per-token positions within each document ``(batch, seq)`` and the document mask's tile classes (made
        once here, used by every layer)."""
        if cache is not None or left_padding is not None:
            raise ConfigError(
                "document_ids (packed training sequences) cannot be combined with a cache or left_padding"
            )
        if document_ids.shape != input_ids.shape or document_ids.dtype.is_floating_point:
            raise ShapeError(
                f"document_ids must be integer (batch, seq) = {tuple(input_ids.shape)} like input_ids, got "
                f"{document_ids.dtype} {describe_shape(document_ids.shape)}"
            )
        batch, seq = input_ids.shape
        index = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        starts = torch.ones_like(document_ids, dtype=torch.bool)
        starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
        first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values  # each token's doc start
        blocks = block_mask(document(document_ids), batch, self.config.num_heads, seq, seq, device=input_ids.device)
        return index - first, blocks

    def forward(
        self,
        input_ids: Tensor,
        *,
        cache: KVCache | None = None,
        return_attention: bool = False,
        left_padding: Tensor | None = None,
        logits_to_keep: int | None = None,
        document_ids: Tensor | None = None,
        start_at_layer: int = 0,
        residual: Tensor | None = None,
    ) -> ModelOutput:
        """Next-token logits for every position.

        Args:
            input_ids: ``(batch, seq)`` token ids; with a cache, the tokens that follow the cached ones.
            cache: a :class:`KVCache` from :meth:`new_cache`; it is updated in place.
            return_attention: also return per-layer weights ``(batch, heads, seq, cached + seq)``.
            left_padding: ``(batch,)`` how many positions at the start of each row (cached ones included) are
                padding: prompts of different lengths in one batch. Padding is never attended to, and each row's
                positions start at its first real token, so a row computes what it would alone.
            logits_to_keep: logits only for the last this many positions (decoding needs one: a prompt's other
                positions would each cost a product with the whole output layer).
            document_ids: ``(batch, seq)`` packed sequences (training with ``data.pack``): the document of each
                token, non-decreasing along a row. A token attends only to earlier tokens of its own document and
                its position counts from the document's first token, so each document is computed as if alone.
            start_at_layer: skip the blocks before this one and start from ``residual``, the stream entering it
                ``(batch, seq, embed_dim)`` (e.g. recorded at ``blocks.L.hook_resid_pre``); TransformerLens's
                argument. Attentions are then those of the blocks run.
        """
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ShapeError(
                f"input_ids must be integer (batch, seq), got {input_ids.dtype} {describe_shape(input_ids.shape)}"
            )
        start = cache.seq_len(0) if cache is not None else 0
        seq = input_ids.shape[1]
        if start + seq > self.config.max_seq_len:
            raise ShapeError(
                f"{start + seq} tokens exceed the model's context max_seq_len={self.config.max_seq_len}; "
                "keep only the last max_seq_len tokens"
            )
        if input_ids.numel() and start == 0:  # a prompt; later decoding steps feed ids the decoder itself chose
            low, high = (int(v) for v in torch.aminmax(input_ids))
            if low < 0 or high >= self.config.vocab_size:
                raise ShapeError(f"token ids must be in [0, {self.config.vocab_size}), got {low if low < 0 else high}")
        x = self.token_embedding(input_ids)
        positions = torch.arange(start, start + seq, device=input_ids.device)  # (rotary and per-row positions)
        mask = None
        documents = None
        if document_ids is not None:
            positions, documents = self._documents(document_ids, input_ids, cache, left_padding)
        if left_padding is not None:  # per row: positions count from the first real token; padded keys are hidden
            positions = (positions - left_padding.to(positions.device)[:, None]).clamp(min=0)  # (batch, seq)
            keys = torch.arange(start + seq, device=input_ids.device)
            mask = (keys >= left_padding.to(keys.device)[:, None])[:, None, None, :]  # (batch, 1, 1, keys)
        if self.position_embedding is not None:
            table = self.position_embedding
            per_row = left_padding is not None or document_ids is not None
            x = x + (table(positions, trusted=True) if per_row else table.span(start, seq))
        x = self.dropout(x)
        angles = None
        if self.rotary is not None:  # once for every layer (the layers share one rotary embedding)
            angles = self.rotary.angles(positions, trusted=True)
        if start_at_layer and cache is not None:
            raise ConfigError("start_at_layer skips blocks, whose cache would stay empty: not with a cache")
        x = start_residual(x, start_at_layer, residual, len(self.blocks))
        attentions = []
        for i, block in enumerate(self.blocks):
            if i < start_at_layer:
                continue
            x, weights = block(
                x,
                mask=mask,
                block_mask=documents,
                score_mod=self.score_mod,  # (relative distances: padding shifts nothing)
                cache=cache,
                layer_idx=i,
                rotary_angles=angles,
                return_weights=return_attention,
            )
            if return_attention:
                attentions.append(weights)
        if logits_to_keep is not None:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.final_norm(x))
        return ModelOutput(logits=logits, attentions=tuple(attentions) if return_attention else None, cache=cache)
