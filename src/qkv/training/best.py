"""``train.keep_best``: the weights of a run's evaluation with the lowest val loss, kept in ``RUN/best.safetensors``
(written atomically, with that evaluation's step and losses as the file's metadata) so that the run can end with them
and a resumed run knows them."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from qkv.training.checkpoint import load_weights, save_weights, weights_metadata

__all__ = ["BestWeights"]


class BestWeights:
    """The lowest-val-loss evaluation of a run so far (``evaluation``: its losses and ``step``) and its weights'
    file. Only the process that evaluates writes; every process can read."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "best.safetensors"
        self.evaluation: dict[str, float] = {}

    def read(self) -> None:
        """Take the kept evaluation from the file (a resumed run, or a process that does not evaluate)."""
        if self.path.exists():
            self.evaluation = {k: float(v) for k, v in weights_metadata(self.path).items()}

    @property
    def step(self) -> int:
        return int(self.evaluation["step"])

    def offer(self, step: int, evaluation: dict[str, float], model: nn.Module, write: bool) -> None:
        """Keep ``model``'s weights (written when ``write``) if ``evaluation`` has the lowest val loss so far."""
        if self.evaluation and evaluation["val_loss"] >= self.evaluation["val_loss"]:
            return
        self.evaluation = {"step": float(step), **evaluation}
        if write:
            save_weights(self.path, model, {k: repr(v) for k, v in self.evaluation.items()})

    def restore(self, model: nn.Module, step: int) -> dict[str, float]:
        """Load the kept weights into ``model`` (unless they are the ones it has, at ``step``); their losses."""
        if self.step != step:
            load_weights(self.path, model)
        return {k: v for k, v in self.evaluation.items() if k != "step"}
