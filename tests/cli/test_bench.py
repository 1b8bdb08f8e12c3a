"""`qkv bench attention` end to end at tiny sizes, and the report's ratio/target logic."""

from __future__ import annotations

import pytest

from qkv.benchmarking.report import Report, Row
from qkv.cli import main


def test_bench_attention_prints_and_writes_a_table(tmp_path, capsys):
    out = tmp_path / "bench.md"
    code = main(
        [
            "bench",
            "attention",
            "--sizes",
            "64",
            "--long",
            "256",
            "--window",
            "16",
            "--repeats",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = out.read_text()
    for experiment in (
        "P1 auto vs SDPA",
        "P2 chunked vs naive",
        "P2 chunked vs SDPA",
        "P3 window vs SDPA+mask",
        "Document mask (block_mask) vs SDPA+mask",
        "Document mask (bare mask_mod) vs SDPA+mask",
        "Document mask: non-empty tiles' matmul rate",
        "ALiBi function vs dense bias",
        "ALiBi function vs SDPA without bias",
        "Document mask vs compiled FlexAttention",
    ):
        assert experiment in table
    assert table in capsys.readouterr().out


def test_bench_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "attention", "--sizes", "ten"])
    assert info.value.code == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_row_ratio_and_targets():
    slower = Row("x", "N=1", "time", ours=2.0, reference=1.0, reference_name="ref", target="<= 1.5")
    assert slower.ratio == 2.0 and slower.met is False
    faster = Row("x", "N=1", "speed-up", ours=1.0, reference=12.0, reference_name="ref", target=">= 10", speedup=True)
    assert faster.ratio == 12.0 and faster.met is True
    memory = Row("x", "N=1", "memory", ours=1.0, reference=30.0, reference_name="ref", target="<= 1/20", unit="MiB")
    assert memory.met is True
    cosine = Row("x", "N=1", "cosine", ours=0.998084, reference=1.0, reference_name="ref", target=">= 0.999", unit="",
                 digits=5)  # fmt: skip
    assert cosine.met is False  # (a 3-digit table would print 0.998 as the ratio, and 0.99947 as 0.999)
    md = Report("t", "cmd", [slower, faster, memory, cosine]).markdown()
    assert "| **no** |" in md and md.count("| yes |") == 2
    assert "| 0.99808 | 1 (ref) | 0.99808 | >= 0.999 | **no** |" in md
