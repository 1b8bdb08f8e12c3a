"""Decoding: greedy, beam search and sampling, all on the KV cache, behind one ``qkv.generate``."""

from qkv.decoding.generate import generate

__all__ = ["generate"]
