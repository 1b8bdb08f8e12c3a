"""Pretrained models from HuggingFace-format directories: BERT/MiniLM encoders and GPT-2; sentence embeddings."""

from qkv.pretrained.embed import embed
from qkv.pretrained.loading import load_pretrained, load_tokenizer, save_pretrained

__all__ = ["embed", "load_pretrained", "load_tokenizer", "save_pretrained"]
