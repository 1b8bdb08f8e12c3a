"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017), on qkv's attention.

Encoder: embeddings · √d + sinusoidal positions, then blocks of self-attention (padding masked) and a feed-forward
network. Decoder: blocks of causal self-attention (on a :class:`KVCache` while decoding), cross-attention to the
encoder's states (the decoder's states are the queries, the source's the keys and values), and a feed-forward
network. Each sublayer has a residual connection, normalised after it as in the paper (``norm_placement="post"``) or
before it (``"pre"``, which trains more easily when deep). Source, target and output embeddings may be shared.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import Tensor, nn

from qkv.attention.hooks import HookPoint, HookPointOwner, block_hook_points
from qkv.attention.kv_cache import KVCache
from qkv.attention.multi_head import MultiHeadAttention
from qkv.attention.positional import SinusoidalPositions
from qkv.errors import ConfigError, ShapeError
from qkv.models.blocks import Activation, FeedForward, LayerNorm, dropout_layer
from qkv.models.config import ModelConfig
from qkv.models.output import ModelOutput
from qkv.models.seq2seq_io import check_ids, source_keep

__all__ = ["Transformer", "TransformerConfig", "TransformerDecoderState"]

NormPlacement = Literal["post", "pre"]
NORM_PLACEMENTS: tuple[str, ...] = typing.get_args(NormPlacement)


@dataclass
class TransformerConfig(ModelConfig):
    """The encoder-decoder Transformer of Vaswani et al. 2017: sinusoidal positions, post-norm (the paper) or
    pre-norm, optionally shared embeddings.
    """

    src_vocab_size: int = 64
    tgt_vocab_size: int = 64
    embed_dim: int = 128
    num_heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    ffn_dim: int = 512
    dropout: float = 0.1
    activation: Activation = "relu"  # relu (the paper) | gelu | gelu_tanh
    norm_placement: NormPlacement = "post"  # post (the paper): norm(x + f(x)) | pre: x + f(norm(x))
    share_embeddings: bool = False  # one table for source and target tokens (needs one shared vocabulary)
    tie_output: bool = True  # the output layer reuses the target embedding
    max_seq_len: int = 256  # longest source or target the positions cover
    max_target_len: int = 64  # default decoding limit, in target tokens
    norm_eps: float = 1e-5
    backend: str = "auto"

    def validate(self) -> None:
        self.check_choice("norm_placement")
        self.check_choice("activation")
        self.check_positive("src_vocab_size", "tgt_vocab_size", "embed_dim", "num_heads", "encoder_layers")
        self.check_positive("decoder_layers", "ffn_dim", "max_seq_len", "max_target_len")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"model.embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ConfigError(
                "model.share_embeddings needs one vocabulary for both sides (data.shared_vocab = true), got "
                f"src_vocab_size={self.src_vocab_size} and tgt_vocab_size={self.tgt_vocab_size}"
            )
        self.check_dropout()


class Residual(nn.Module):
    """One sublayer ``f`` with its residual connection: ``norm(x + f(x))`` (post) or ``x + f(norm(x))`` (pre)."""

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.pre = c.norm_placement == "pre"
        self.norm = LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.dropout = dropout_layer(c.dropout)

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(HookPointOwner):
    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(c.embed_dim, c.num_heads, dropout=c.dropout, backend=c.backend)
        self.ffn = FeedForward(c.embed_dim, c.ffn_dim, c.activation, c.dropout)
        self.attn_residual, self.ffn_residual = Residual(c), Residual(c)
        # hook points: the residual stream between sublayers (after each Residual: normalised when norm = post)
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_mid, self.hook_mlp_out, self.hook_resid_post = (
            block_hook_points()
        )

    def forward(self, x: Tensor, keep: Tensor, return_weights: bool) -> tuple[Tensor, Tensor | None]:
        weights = []

        def attend(h: Tensor) -> Tensor:
            out, w = self.attn(h, key_mask=keep, return_weights=return_weights)
            weights.append(w)
            return self.hook_attn_out(out)

        x = self.hook_resid_mid(self.attn_residual(self.hook_resid_pre(x), attend))
        return self.hook_resid_post(self.ffn_residual(x, self.mlp)), weights[0]

    def mlp(self, h: Tensor) -> Tensor:
        return self.hook_mlp_out(self.ffn(h))


class DecoderLayer(HookPointOwner):
    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(c.embed_dim, c.num_heads, dropout=c.dropout, backend=c.backend)
        self.cross_attn = MultiHeadAttention(c.embed_dim, c.num_heads, dropout=c.dropout, backend=c.backend)
        self.ffn = FeedForward(c.embed_dim, c.ffn_dim, c.activation, c.dropout)
        self.self_residual, self.cross_residual, self.ffn_residual = Residual(c), Residual(c), Residual(c)
        # hook points as the encoder's, and the cross-attention's (TransformerLens's T5 names)
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_mid, self.hook_mlp_out, self.hook_resid_post = (
            block_hook_points()
        )
        self.hook_cross_attn_out, self.hook_resid_mid_cross = HookPoint(), HookPoint()

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        keep: Tensor,
        cache: KVCache | None,
        layer_idx: int,
        return_weights: bool,
        memory_kv: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        weights: dict[str, Tensor | None] = {}

        def self_attend(h: Tensor) -> Tensor:
            out, weights["self"] = self.self_attn(
                h, causal=True, cache=cache, layer_idx=layer_idx, return_weights=return_weights
            )
            return self.hook_attn_out(out)

        def cross_attend(h: Tensor) -> Tensor:
            sources = {"memory_kv": memory_kv} if memory_kv is not None else {"key": memory, "value": memory}
            out, weights["cross"] = self.cross_attn(h, **sources, key_mask=keep, return_weights=return_weights)
            return self.hook_cross_attn_out(out)

        x = self.hook_resid_mid(self.self_residual(self.hook_resid_pre(x), self_attend))
        x = self.hook_resid_mid_cross(self.cross_residual(x, cross_attend))
        x = self.hook_resid_post(self.ffn_residual(x, self.mlp))
        return x, weights["self"], weights["cross"]

    def mlp(self, h: Tensor) -> Tensor:
        return self.hook_mlp_out(self.ffn(h))


@dataclass
class TransformerDecoderState:
    """The encoded source and the decoder's KV cache, for ``batch`` rows."""

    memory: Tensor  # (batch, src_len, embed_dim)
    keep: Tensor  # (batch, src_len) bool: True = a real source token
    cache: KVCache
    cross_kv: list[tuple[Tensor, Tensor]]  # per decoder layer: the source's keys and values, projected once

    def select(self, rows: Tensor) -> TransformerDecoderState:
        """Keep rows ``rows (batch,)`` in that order (beam search); the cache is reordered in place."""
        self.cache.reorder(rows)
        return TransformerDecoderState(
            self.memory.index_select(0, rows),
            self.keep.index_select(0, rows),
            self.cache,
            [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.cross_kv],
        )


class Transformer(nn.Module):
    """``forward(src_ids (batch, src_len), tgt_ids (batch, tgt_len)) -> ModelOutput(logits (batch, tgt_len, vocab))``.

    ``tgt_ids`` are the decoder's inputs (``<s> y_1 … y_n``); padding (id 0) is masked in the source and ignored in
    the target (a causal decoder never looks ahead at it). With ``return_attention=True``: ``attentions`` holds the
    decoder's self-attention per layer ``(batch, heads, tgt_len, tgt_len)``, ``cross_attentions`` the decoder-to-source
    weights per layer ``(batch, heads, tgt_len, src_len)``, ``encoder_attentions`` the encoder's per layer.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        self.src_embed = nn.Embedding(c.src_vocab_size, c.embed_dim, padding_idx=0)
        self.tgt_embed = (
            self.src_embed if c.share_embeddings else nn.Embedding(c.tgt_vocab_size, c.embed_dim, padding_idx=0)
        )
        self.positions = SinusoidalPositions(c.max_seq_len, c.embed_dim)
        self.dropout = dropout_layer(c.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.decoder_layers))
        # pre-norm leaves the last residual stream unnormalised: the paper's post-norm ends in a norm already
        self.encoder_norm = LayerNorm(c.embed_dim, eps=c.norm_eps) if c.norm_placement == "pre" else nn.Identity()
        self.decoder_norm = LayerNorm(c.embed_dim, eps=c.norm_eps) if c.norm_placement == "pre" else nn.Identity()
        self.output = nn.Linear(c.embed_dim, c.tgt_vocab_size, bias=False)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)  # as the paper's reference implementation (tensor2tensor)
        # a list, not a set: a set's order follows memory addresses, and the draws must not depend on them
        tables = [self.src_embed] if c.share_embeddings else [self.src_embed, self.tgt_embed]
        for embedding in tables:
            nn.init.normal_(embedding.weight, std=c.embed_dim**-0.5)  # · √d at the input gives unit variance
            with torch.no_grad():
                embedding.weight[0].zero_()  # the padding row
        if c.tie_output:
            self.output.weight = self.tgt_embed.weight

    @property
    def source_limit(self) -> int:
        """The most source tokens (with ``</s>``) the positions cover."""
        return self.config.max_seq_len

    def _embed(self, table: nn.Embedding, ids: Tensor, start: int = 0) -> Tensor:
        if start + ids.shape[1] > self.config.max_seq_len:
            raise ShapeError(
                f"{start + ids.shape[1]} tokens exceed model.max_seq_len={self.config.max_seq_len}; "
                "shorten the input or train with a larger max_seq_len"
            )
        scaled = table(ids) * math.sqrt(self.config.embed_dim)
        return self.dropout(scaled + self.positions.span(start, ids.shape[1]).to(scaled.dtype))

    def encode(self, src_ids: Tensor, return_weights: bool = False) -> tuple[Tensor, Tensor, list[Tensor | None]]:
        """``(memory (batch, src_len, dim), keep (batch, src_len), per-layer weights)`` of ``src_ids``."""
        keep = source_keep(src_ids, self.config.src_vocab_size)
        x = self._embed(self.src_embed, src_ids)
        weights = []
        for layer in self.encoder:
            x, w = layer(x, keep, return_weights)
            weights.append(w)
        return self.encoder_norm(x), keep, weights

    def decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        keep: Tensor,
        cache: KVCache | None = None,
        return_weights: bool = False,
        cross_kv: list[tuple[Tensor, Tensor]] | None = None,
    ) -> tuple[Tensor, list[Tensor | None], list[Tensor | None]]:
        """Logits ``(batch, tgt_len, vocab)`` of ``tgt_ids`` (following the cached tokens), self and cross weights.
        ``cross_kv``: each layer's projected source keys and values (see ``begin_decoding``)."""
        start = cache.seq_len(0) if cache is not None else 0
        x = self._embed(self.tgt_embed, tgt_ids, start)
        self_weights, cross_weights = [], []
        for i, layer in enumerate(self.decoder):
            kv = cross_kv[i] if cross_kv is not None else None
            x, w_self, w_cross = layer(x, memory, keep, cache, i, return_weights, kv)
            self_weights.append(w_self)
            cross_weights.append(w_cross)
        return self.output(self.decoder_norm(x)), self_weights, cross_weights

    def forward(self, src_ids: Tensor, tgt_ids: Tensor, *, return_attention: bool = False) -> ModelOutput:
        check_ids("tgt_ids", tgt_ids, self.config.tgt_vocab_size)
        if tgt_ids.shape[0] != src_ids.shape[0]:
            raise ConfigError(f"src_ids has {src_ids.shape[0]} rows but tgt_ids has {tgt_ids.shape[0]}")
        memory, keep, enc_weights = self.encode(src_ids, return_attention)
        logits, self_weights, cross_weights = self.decode(tgt_ids, memory, keep, return_weights=return_attention)
        if not return_attention:
            return ModelOutput(logits=logits)
        return ModelOutput(
            logits=logits,
            attentions=tuple(self_weights),  # type: ignore[arg-type]  # (return_attention=True: no None)
            cross_attentions=tuple(cross_weights),  # type: ignore[arg-type]  # (return_attention=True: no None)
            encoder_attentions=tuple(enc_weights),  # type: ignore[arg-type]  # (return_attention=True: no None)
        )

    # -- step-by-step decoding (qkv.translate) -------------------------------------------------------------------
    def begin_decoding(self, src_ids: Tensor) -> TransformerDecoderState:
        memory, keep, _ = self.encode(src_ids)
        c = self.config
        cache = KVCache(
            c.decoder_layers,
            src_ids.shape[0],
            c.num_heads,
            c.max_seq_len,
            c.embed_dim // c.num_heads,
            dtype=memory.dtype,
            device=memory.device,
        )
        # the source's keys and values in every layer's cross-attention: projected here, once per source
        cross_kv = [layer.cross_attn.project_memory(memory) for layer in cast(list[DecoderLayer], self.decoder)]
        return TransformerDecoderState(memory, keep, cache, cross_kv)

    def decode_next(self, ids: Tensor, state: TransformerDecoderState) -> tuple[Tensor, TransformerDecoderState]:
        """Logits ``(batch, vocab)`` of the token after ``ids (batch, t)``; only tokens not yet cached are run."""
        new = ids[:, state.cache.seq_len(0) :]
        logits, _, _ = self.decode(new, state.memory, state.keep, state.cache, cross_kv=state.cross_kv)
        return logits[:, -1], state
