"""Pretrained models from HuggingFace-format directories: BERT/MiniLM encoders and GPT-2; sentence embeddings."""

from qkv.models.families import HFFormat, register_hf_format
from qkv.pretrained.bert import bert_from_hf
from qkv.pretrained.embed import embed
from qkv.pretrained.gpt2 import gpt2_from_hf, save_gpt2
from qkv.pretrained.llama import llama_from_hf, save_llama
from qkv.pretrained.loading import load_pretrained, load_tokenizer, save_pretrained

# the converters register themselves with the family registry: models/ names no converter
register_hf_format("gpt", HFFormat(("gpt2",), gpt2_from_hf, save_gpt2))
register_hf_format("llama", HFFormat(("llama", "mistral", "qwen2"), llama_from_hf, save_llama))
register_hf_format("bert", HFFormat(("bert",), bert_from_hf))

__all__ = ["embed", "load_pretrained", "load_tokenizer", "save_pretrained"]
