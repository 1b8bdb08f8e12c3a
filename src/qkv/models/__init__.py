"""Models built on the attention core: each is made from its dataclass config (``GPT(GPTConfig(...))``) and has a
``forward`` that can hand back per-layer attention weights."""

from qkv.models import families
from qkv.models.bert import BertConfig, BertEncoder
from qkv.models.gpt import GPT, GPTConfig
from qkv.models.llama import LlamaConfig
from qkv.models.output import ModelOutput
from qkv.models.rnn_seq2seq import RNNSeq2Seq, RNNSeq2SeqConfig
from qkv.models.transformer import Transformer, TransformerConfig

__all__ = [
    "GPT",
    "BertConfig",
    "BertEncoder",
    "GPTConfig",
    "LlamaConfig",
    "ModelOutput",
    "RNNSeq2Seq",
    "RNNSeq2SeqConfig",
    "Transformer",
    "TransformerConfig",
    "families",
]
