"""Data: the bundled Shakespeare corpus, text files, and batching for language modelling."""

from qkv.data.text import CORPUS_PATH, LMData, load_corpus, read_text_file

__all__ = ["CORPUS_PATH", "LMData", "load_corpus", "read_text_file"]
