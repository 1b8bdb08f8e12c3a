"""The special tokens of qkv's sequence-to-sequence vocabularies, defined once: the tokenizers write them, the
models mask padding by them and decoding starts and stops on them (each of those layers imports this, none of them
imports another for it)."""

from __future__ import annotations

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "SPECIALS", "UNK_ID"]

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIALS))
