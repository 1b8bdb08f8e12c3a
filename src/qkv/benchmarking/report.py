"""Benchmark rows and their Markdown table."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import torch

from qkv.devices import describe_hardware

__all__ = ["Report", "Row"]


@dataclass
class Row:
    experiment: str
    setting: str
    metric: str
    ours: float
    reference: float
    reference_name: str
    target: str  # e.g. "<= 1.05"
    unit: str = "ms"
    speedup: bool = False  # ratio = reference / ours (how many times faster) instead of ours / reference
    digits: int = 3  # significant digits of unitless figures, decimals of the ratio (at least 3): 5 for cosines

    @property
    def ratio(self) -> float:
        num, den = (self.reference, self.ours) if self.speedup else (self.ours, self.reference)
        return num / den if den else float("inf")

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        op, value = self.target.split()
        limit = float(Fraction(value))  # "1.05" or "1/20"
        return self.ratio <= limit if op == "<=" else self.ratio >= limit


def _fmt(value: float, unit: str, digits: int = 3) -> str:
    if unit == "MiB":
        return f"{value / 2**20:,.1f} MiB"
    if unit == "ms":
        return f"{value * 1e3:,.1f} ms"
    return f"{value:,.{digits}g} {unit}".rstrip()


@dataclass
class Report:
    title: str
    command: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    device: str = "cpu"
    precision: str = "fp32"
    references: str = "both measured in this run"  # or where published figures come from

    def markdown(self) -> str:
        hw = describe_hardware(torch.device(self.device))
        gpu = f", GPU {hw['gpu']}" if "gpu" in hw else ""
        lines = [
            f"# {self.title}",
            "",
            f"Produced by `{self.command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
            f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads, CPU kernels {hw['cpu_capability']} (native bf16: "
            f"{'yes' if hw['cpu_native_bf16'] else 'no'}), device {self.device}{gpu}, precision {self.precision}. "
            f"Ratios are ours / reference (speed-ups: reference / ours), {self.references}.",
            "",
            "| experiment | setting | metric | qkv | reference | ratio | target | met |",
            "|---|---|---|---:|---:|---:|---|---|",
        ]
        for r in self.rows:
            met = {True: "yes", False: "**no**", None: ""}[r.met]
            lines.append(
                f"| {r.experiment} | {r.setting} | {r.metric} | {_fmt(r.ours, r.unit, r.digits)} | "
                f"{_fmt(r.reference, r.unit, r.digits)} ({r.reference_name}) | {r.ratio:.{max(3, r.digits)}f} | "
                f"{r.target} | {met} |"
            )
        if self.notes:
            lines += ["", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.markdown())
        tmp.replace(path)
        return path
