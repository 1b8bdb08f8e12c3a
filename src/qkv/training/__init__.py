"""Training: configs, the Trainer, atomic checkpoints, and torchrun (DDP) support."""

from qkv.training.checkpoint import load_checkpoint_info, resolve_checkpoint, save_checkpoint
from qkv.training.config import DataConfig, RunConfig, TrainConfig, apply_overrides, load_run_config
from qkv.training.trainer import Trainer, lr_at

__all__ = [
    "DataConfig",
    "RunConfig",
    "TrainConfig",
    "Trainer",
    "apply_overrides",
    "load_checkpoint_info",
    "load_run_config",
    "lr_at",
    "resolve_checkpoint",
    "save_checkpoint",
]
