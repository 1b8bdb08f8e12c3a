"""What the rest of qkv may rely on in a model of each kind, as typing protocols: a causal LM (GPT, the Llama
family, any family registered as ``CAUSAL_LM``) and an encoder-decoder (``SEQ2SEQ``). Run loaders return these
types, and decoding takes them, so a new family needs only to have these members."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from qkv.attention.kv_cache import KVCache
from qkv.devices import HasParameters

__all__ = ["CausalLM", "CausalLMConfig", "DecoderState", "LogitsOutput", "Seq2SeqConfig", "Seq2SeqLM"]


class CausalLMConfig(Protocol):
    """The settings decoding reads from a causal LM's config."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_seq_len(self) -> int: ...


class LogitsOutput(Protocol):
    """A forward pass's result with next-token logits ``(batch, seq, vocab)`` (a causal LM's :class:`ModelOutput`)."""

    @property
    def logits(self) -> Tensor: ...


class CausalLM(HasParameters, Protocol):
    """A decoder-only language model: next-token logits for ``input_ids (batch, seq)``, on a KV cache or not."""

    @property
    def config(self) -> CausalLMConfig: ...

    def __call__(
        self,
        input_ids: Tensor,
        *,
        cache: KVCache | None = None,
        left_padding: Tensor | None = None,
        logits_to_keep: int | None = None,
    ) -> LogitsOutput: ...

    def new_cache(self, batch_size: int, max_seq_len: int | None = None) -> KVCache: ...


class DecoderState(Protocol):
    """An encoder-decoder's decoding state (the encoded source, caches): rows can be kept (beam search)."""

    def select(self, rows: Tensor) -> DecoderState: ...


class Seq2SeqConfig(Protocol):
    """The settings decoding reads from an encoder-decoder's config."""

    @property
    def max_target_len(self) -> int: ...


class Seq2SeqLM(HasParameters, Protocol):
    """An encoder-decoder: the source is encoded once by ``begin_decoding``; ``decode_next`` gives the next token's
    logits ``(batch, vocab)`` and the new state."""

    @property
    def config(self) -> Seq2SeqConfig: ...

    @property
    def source_limit(self) -> int | None: ...

    def begin_decoding(self, src_ids: Tensor) -> DecoderState: ...

    def decode_next(self, ids: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]: ...
