"""A BERT-style encoder: token + position + token-type embeddings, post-norm blocks, GELU; loads HuggingFace
BERT/MiniLM checkpoints exactly (see :mod:`qkv.pretrained`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qkv.attention.hooks import HookPoint, HookPointOwner, block_hook_points
from qkv.attention.multi_head import MultiHeadAttention
from qkv.errors import ConfigError, MaskError, ShapeError, describe_shape
from qkv.models.blocks import Activation, FeedForward, LayerNorm, dropout_layer, start_residual
from qkv.models.config import ModelConfig
from qkv.models.output import ModelOutput

__all__ = ["BertConfig", "BertEncoder"]


@dataclass
class BertConfig(ModelConfig):
    """A BERT-style encoder (all-MiniLM-L6-v2's shape by default): post-norm blocks, GELU, learned positions."""

    vocab_size: int = 30522
    embed_dim: int = 384
    num_layers: int = 6
    num_heads: int = 12
    ffn_dim: int = 1536
    max_seq_len: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    activation: Activation = "gelu"
    dropout: float = 0.0
    pad_token_id: int = 0
    backend: str = "auto"

    def validate(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")


class BertEmbeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=c.pad_token_id)
        self.position = nn.Embedding(c.max_seq_len, c.embed_dim)
        self.token_type = nn.Embedding(c.type_vocab_size, c.embed_dim)
        self.norm = LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.dropout = dropout_layer(c.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


class PostNormBlock(HookPointOwner):
    """``x = norm(x + attn(x))`` then ``x = norm(x + ffn(x))`` (BERT, and the original Transformer)."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(c.embed_dim, c.num_heads, dropout=c.dropout, backend=c.backend)
        self.norm1 = LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.ffn = FeedForward(c.embed_dim, c.ffn_dim, c.activation, c.dropout)
        self.norm2 = LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.dropout = dropout_layer(c.dropout)
        # hook points, as TransformerLens's BERT: resid_mid and resid_post before their norms
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_mid, self.hook_mlp_out, self.hook_resid_post = (
            block_hook_points()
        )
        self.hook_normalized_resid_post = HookPoint()  # the layer's output, after the last norm

    def forward(self, x: Tensor, keep: Tensor | None, return_weights: bool) -> tuple[Tensor, Tensor | None]:
        x = self.hook_resid_pre(x)
        attended, weights = self.attn(x, key_mask=keep, return_weights=return_weights)
        x = self.norm1(self.hook_resid_mid(x + self.dropout(self.hook_attn_out(attended))))
        x = self.hook_resid_post(x + self.hook_mlp_out(self.ffn(x)))
        return self.hook_normalized_resid_post(self.norm2(x)), weights


class BertEncoder(nn.Module):
    """``forward(input_ids (batch, seq), attention_mask=None, token_type_ids=None)`` ->
    ``ModelOutput(last_hidden_state (batch, seq, dim), attentions, hidden_states)``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(PostNormBlock(config) for _ in range(config.num_layers))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        return_attention: bool = False,
        output_hidden_states: bool = False,
        start_at_layer: int = 0,
        residual: Tensor | None = None,
    ) -> ModelOutput:
        """``attention_mask``: ``(batch, seq)``, 1/True for real tokens and 0/False for padding (HF convention).
        ``start_at_layer``: skip the layers before it and start from ``residual``, the stream entering it
        ``(batch, seq, embed_dim)`` (``layers.L.hook_resid_pre``; TransformerLens's argument)."""
        if input_ids.dim() != 2:
            raise ShapeError(f"input_ids must be (batch, seq), got {describe_shape(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ShapeError(
                f"{input_ids.shape[1]} tokens exceed max_seq_len={self.config.max_seq_len}; truncate the input"
            )
        keep = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise MaskError(
                    f"attention_mask must match input_ids {describe_shape(input_ids.shape)}, got "
                    f"{describe_shape(attention_mask.shape)}"
                )
            keep = attention_mask.bool()
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = start_residual(self.embeddings(input_ids, token_type_ids), start_at_layer, residual, len(self.layers))
        hidden, attentions = [x], []
        for layer in self.layers[start_at_layer:]:
            x, weights = layer(x, keep, return_attention)
            hidden.append(x)
            attentions.append(weights)
        return ModelOutput(
            last_hidden_state=x,
            attentions=tuple(attentions) if return_attention else None,
            hidden_states=tuple(hidden) if output_hidden_states else None,
        )
