"""The RNN encoder-decoder with attention of Bahdanau et al. (2015) and Luong et al. (2015), and the no-attention
baseline (Sutskever et al. 2014: the decoder starts from the encoder's last state and sees nothing else).

Encoder: a bidirectional GRU or LSTM; each direction has ``hidden_dim / 2`` units, so a source state (a key and a
value) has ``hidden_dim`` numbers, like the decoder's. Decoder, one target token per step ``t``:

* **Luong**: ``h_t = RNN([y_{t-1}; s_{t-1}], h_{t-1})`` (input feeding: the last attentional state goes back in);
  scores of ``h_t`` against the source with ``dot``, ``general``, ``concat`` or ``location``; weights over the
  whole source (**global**), over ``[t - D, t + D]`` (**local-m**), or over ``[p_t - D, p_t + D]`` with
  ``p_t = S · sigmoid(v_pᵀ tanh(W_p h_t))`` and the weights multiplied by ``exp(-(s - p_t)² / 2σ²)``, ``σ = D / 2``
  (**local-p**); context ``c_t``; attentional state ``s_t = tanh(W_c [c_t; h_t])``; output ``softmax(W_s s_t)``.
* **Bahdanau**: the *previous* state ``h_{t-1}`` is the query of an additive score; ``h_t = RNN([y_{t-1}; c_t],
  h_{t-1})``; output ``softmax(W_s tanh(W_o [h_t; c_t; y_{t-1}]))`` (the paper's maxout layer replaced by tanh).

Every score is a module of the core's score registry and every weighting goes through :func:`qkv.attend`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from qkv.attention.attend import attend
from qkv.attention.scores import ScoreFunction, make_score
from qkv.errors import ConfigError
from qkv.models.blocks import dropout_layer
from qkv.models.config import ModelConfig
from qkv.models.output import ModelOutput
from qkv.models.seq2seq_io import check_ids, source_keep

__all__ = ["ALIGNMENTS", "ATTENTIONS", "LUONG_SCORES", "RNNDecoderState", "RNNSeq2Seq", "RNNSeq2SeqConfig"]

ATTENTIONS = ("none", "luong", "bahdanau")
LUONG_SCORES = {"dot": "dot", "general": "general", "concat": "additive", "location": "location"}  # -> registry name
ALIGNMENTS = ("global", "local-m", "local-p")
CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


@dataclass
class RNNSeq2SeqConfig(ModelConfig):
    """The RNN encoder-decoder: a bidirectional GRU/LSTM encoder, a decoder with Luong's or Bahdanau's attention
    (global or local), or none (the fixed-vector baseline).
    """

    src_vocab_size: int = 64
    tgt_vocab_size: int = 64
    embed_dim: int = 64
    hidden_dim: int = 128  # decoder units; each encoder direction has half
    num_layers: int = 1
    cell: Literal["gru", "lstm"] = "gru"
    attention: Literal["none", "luong", "bahdanau"] = "luong"
    score: Literal["dot", "general", "concat", "location"] = "general"  # Luong's (Bahdanau is always additive)
    alignment: Literal["global", "local-m", "local-p"] = "global"  # Luong only
    window: int = 10  # D: a local window covers [p_t - D, p_t + D]
    input_feeding: bool = True  # Luong only
    dropout: float = 0.1
    max_source_len: int = 64  # source tokens (with </s>) the location score can place
    max_target_len: int = 64  # default decoding limit, in target tokens

    def validate(self) -> None:
        for name in ("cell", "attention", "score", "alignment"):
            self.check_choice(name)
        self.check_positive(
            "src_vocab_size", "tgt_vocab_size", "embed_dim", "hidden_dim", "num_layers", "window", "max_source_len"
        )
        self.check_positive("max_target_len")
        if self.hidden_dim % 2:
            raise ConfigError(f"model.hidden_dim ({self.hidden_dim}) must be even: each encoder direction has half")
        self.check_dropout()


@dataclass
class RNNDecoderState:
    """What the decoder carries from step to step, for ``batch`` rows."""

    memory: Tensor  # (batch, src_len, hidden_dim): encoder states, the keys and values
    keep: Tensor  # (batch, src_len) bool: True = a real source token
    hidden: Tensor | tuple[Tensor, Tensor]  # (num_layers, batch, hidden_dim) [and the LSTM cell]
    feed: Tensor  # (batch, hidden_dim): the last attentional state s_{t-1} (input feeding)
    step: int = 0

    def select(self, rows: Tensor) -> RNNDecoderState:
        """The state of rows ``rows (n,)`` (beam search keeps, drops and copies rows)."""
        hidden = (
            tuple(h.index_select(1, rows) for h in self.hidden)
            if isinstance(self.hidden, tuple)
            else self.hidden.index_select(1, rows)
        )
        return replace(
            self,
            memory=self.memory.index_select(0, rows),
            keep=self.keep.index_select(0, rows),
            hidden=hidden,  # type: ignore[arg-type]  # (GRU: a tensor; LSTM: (h, c))
            feed=self.feed.index_select(0, rows),
        )


class RNNSeq2Seq(nn.Module):
    """``forward(src_ids (batch, src_len), tgt_ids (batch, tgt_len)) -> ModelOutput(logits (batch, tgt_len, vocab))``.

    ``tgt_ids`` are the decoder's inputs (``<s> y_1 … y_n``, teacher forcing); padding (id 0) in either is ignored.
    With ``return_attention=True``, ``cross_attentions`` is one tensor ``(batch, 1, tgt_len, src_len)``: the
    alignment (None for the no-attention baseline).
    """

    def __init__(self, config: RNNSeq2SeqConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        rnn = CELLS[c.cell]
        self.src_embed = nn.Embedding(c.src_vocab_size, c.embed_dim, padding_idx=0)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.embed_dim, padding_idx=0)
        self.dropout = dropout_layer(c.dropout)
        between = c.dropout if c.num_layers > 1 else 0.0
        half = c.hidden_dim // 2
        self.encoder = rnn(c.embed_dim, half, c.num_layers, batch_first=True, bidirectional=True, dropout=between)
        self.feeds_back = c.attention == "luong" and c.input_feeding
        extra = c.hidden_dim if self.feeds_back or c.attention == "bahdanau" else 0
        self.decoder = rnn(c.embed_dim + extra, c.hidden_dim, c.num_layers, batch_first=True, dropout=between)
        self.score: ScoreFunction | None = None
        self.combine: nn.Linear | None = None
        if c.attention == "luong":
            dims = {"q_dim": c.hidden_dim, "k_dim": c.hidden_dim, "hidden_dim": c.hidden_dim}
            self.score = make_score(LUONG_SCORES[c.score], **dims, max_len=c.max_source_len)
            self.combine = nn.Linear(2 * c.hidden_dim, c.hidden_dim, bias=False)  # W_c [c_t; h_t]
            if c.alignment == "local-p":  # p_t = S · sigmoid(v_pᵀ tanh(W_p h_t))
                self.position = nn.Sequential(
                    nn.Linear(c.hidden_dim, c.hidden_dim, bias=False), nn.Tanh(), nn.Linear(c.hidden_dim, 1, bias=False)
                )
        elif c.attention == "bahdanau":
            self.score = make_score("additive", q_dim=c.hidden_dim, k_dim=c.hidden_dim, hidden_dim=c.hidden_dim)
            self.combine = nn.Linear(2 * c.hidden_dim + c.embed_dim, c.hidden_dim)  # W_o [h_t; c_t; y_{t-1}]
        self.output = nn.Linear(c.hidden_dim, c.tgt_vocab_size)  # W_s

    @property
    def source_limit(self) -> int | None:
        """The most source tokens (with ``</s>``) the model can read: only the location score has a limit."""
        c = self.config
        return c.max_source_len if c.attention == "luong" and c.score == "location" else None

    # -- encoder -------------------------------------------------------------------------------------------------
    def begin_decoding(self, src_ids: Tensor) -> RNNDecoderState:
        """Encode ``src_ids (batch, src_len)`` (0 = padding) into the decoder's first state."""
        keep = source_keep(src_ids, self.config.src_vocab_size)
        lengths = keep.sum(dim=1)
        # packing runs each row only over its real tokens: padding cannot change any state
        packed = pack_padded_sequence(
            self.dropout(self.src_embed(src_ids)), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        states, final = self.encoder(packed)
        memory, _ = pad_packed_sequence(states, batch_first=True, total_length=src_ids.shape[1])
        hidden = (
            tuple(self._join_directions(f) for f in final) if isinstance(final, tuple) else self._join_directions(final)
        )
        feed = memory.new_zeros(src_ids.shape[0], self.config.hidden_dim)
        return RNNDecoderState(memory, keep, hidden, feed)  # type: ignore[arg-type]  # (GRU: a tensor; LSTM: (h, c))

    def _join_directions(self, final: Tensor) -> Tensor:
        """``(layers * 2, batch, hidden / 2)`` -> ``(layers, batch, hidden)``: forward and backward side by side."""
        layers2, batch, half = final.shape
        return final.view(layers2 // 2, 2, batch, half).transpose(1, 2).reshape(layers2 // 2, batch, 2 * half)

    # -- attention -----------------------------------------------------------------------------------------------
    def _attend(self, query: Tensor, state: RNNDecoderState) -> tuple[Tensor, Tensor]:
        """Context ``(batch, hidden)`` and weights ``(batch, src_len)`` of ``query (batch, hidden)``."""
        c = self.config
        allowed = state.keep
        centre = None
        if c.attention == "luong" and c.alignment != "global":
            positions = torch.arange(state.memory.shape[1], device=query.device, dtype=query.dtype)
            if c.alignment == "local-m":  # monotonic: source and target advance together
                centre = torch.full_like(query[:, 0], float(state.step))
            else:  # local-p: the model predicts where to look, anywhere in the real source length S
                length = state.keep.sum(dim=1).to(query.dtype)
                centre = length * torch.sigmoid(self.position(query).squeeze(-1))
            allowed = allowed & ((positions - centre[:, None]).abs() <= c.window)
        keys = state.memory[:, None]  # (batch, 1 head, src_len, hidden)
        # the reference backend: one query per step is tiny, and local-p needs gradients through the weights
        mask = allowed[:, None, None]  # (batch, 1, 1, src_len)
        assert self.score is not None  # (only a model with attention attends)
        out, all_weights = attend(
            query[:, None, None], keys, keys, mask, score=self.score, backend="reference", return_weights=True
        )
        assert all_weights is not None  # (asked for)
        weights = all_weights[:, 0, 0]
        if c.attention == "luong" and c.alignment == "local-p":
            # Luong's Gaussian multiplies the softmax weights *after* normalisation, which attend's output (a
            # normalised weighting) cannot express, so the context is summed here from the reweighted weights.
            sigma = c.window / 2
            assert centre is not None  # (a local alignment has one)
            weights = weights * torch.exp(-((positions - centre[:, None]) ** 2) / (2 * sigma**2))
            return torch.bmm(weights[:, None], state.memory)[:, 0], weights
        return out[:, 0, 0], weights

    # -- decoder -------------------------------------------------------------------------------------------------
    def decode_step(self, tokens: Tensor, state: RNNDecoderState) -> tuple[Tensor, RNNDecoderState, Tensor | None]:
        """One step: ``tokens (batch,)`` -> ``(logits (batch, vocab), next state, weights (batch, src_len) | None)``."""
        c = self.config
        x = self.dropout(self.tgt_embed(tokens))  # (batch, embed)
        weights = None
        if c.attention == "bahdanau":
            top = (state.hidden[0] if isinstance(state.hidden, tuple) else state.hidden)[-1]  # h_{t-1} (batch, hidden)
            context, weights = self._attend(top, state)
            out, hidden = self.decoder(torch.cat([x, context], dim=-1)[:, None], state.hidden)
            attentional = torch.tanh(self.combine(torch.cat([out[:, 0], context, x], dim=-1)))  # type: ignore[misc]  # (set when input feeding is on)
        else:
            step_in = torch.cat([x, state.feed], dim=-1) if self.feeds_back else x
            out, hidden = self.decoder(step_in[:, None], state.hidden)
            attentional = out[:, 0]  # the baseline predicts from h_t alone
            if c.attention == "luong":
                context, weights = self._attend(attentional, state)
                attentional = torch.tanh(self.combine(torch.cat([context, attentional], dim=-1)))  # type: ignore[misc]  # (set when input feeding is on)
        logits = self.output(self.dropout(attentional))
        return logits, replace(state, hidden=hidden, feed=attentional, step=state.step + 1), weights

    def decode_next(self, ids: Tensor, state: RNNDecoderState) -> tuple[Tensor, RNNDecoderState]:
        """Logits ``(batch, vocab)`` of the token after ``ids (batch, t)``; the state already holds ``ids[:, :-1]``."""
        logits, state, _ = self.decode_step(ids[:, -1], state)
        return logits, state

    def forward(self, src_ids: Tensor, tgt_ids: Tensor, *, return_attention: bool = False) -> ModelOutput:
        check_ids("tgt_ids", tgt_ids, self.config.tgt_vocab_size)
        if tgt_ids.shape[0] != src_ids.shape[0]:
            raise ConfigError(f"src_ids has {src_ids.shape[0]} rows but tgt_ids has {tgt_ids.shape[0]}")
        state = self.begin_decoding(src_ids)
        logits, alignment = [], []
        for t in range(tgt_ids.shape[1]):  # teacher forcing: step t reads the true token t
            step_logits, state, weights = self.decode_step(tgt_ids[:, t], state)
            logits.append(step_logits)
            if weights is not None:
                alignment.append(weights)
        cross = None
        if return_attention and alignment:
            cross = (torch.stack(alignment, dim=1)[:, None],)  # (batch, 1, tgt_len, src_len)
        return ModelOutput(logits=torch.stack(logits, dim=1), cross_attentions=cross)
