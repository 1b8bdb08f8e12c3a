"""One ``Trainer`` for every qkv model: AdamW with decay groups, warmup + cosine, clipping, accumulation, a device
(CPU, CUDA, MPS) and a precision (fp32, bf16 or fp16 autocast; ``auto`` by the hardware, ``tune`` by a timing),
periodic evaluation, atomic checkpoints, resume, ``torchrun`` (DDP), a progress bar, and ``metrics.json``.

The model-specific part is a :class:`Task`: how to get the batch of a step and how to compute its loss.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn
from tqdm import tqdm

from qkv.attention.memory import activation_bytes, check_fits
from qkv.devices import (
    autocast,
    describe_hardware,
    precision_candidates,
    resolve_compile,
    resolve_device,
    rng_preserved,
)
from qkv.errors import ConfigError, TrainingDivergedError
from qkv.tokenizers import Tokenizer
from qkv.training.best import BestWeights
from qkv.training.checkpoint import load_checkpoint_info, restore_training_state, save_checkpoint
from qkv.training.config import TrainConfig
from qkv.training.distributed import DistributedContext
from qkv.training.sharding import full_state, shard

__all__ = ["Task", "Trainer", "lr_at"]


class Task(Protocol):
    kind: str

    @property
    def tokens_per_row(self) -> int:
        """Tokens one row of a batch trains on (for tokens/s)."""

    def batch(self, split: str, batch_size: int, seed: int, step: int, rows: slice | None) -> Any: ...

    def loss(self, model: nn.Module, batch: Any) -> Tensor: ...


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / (config.warmup_steps + 1)
    if step >= config.steps:
        return config.min_lr
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def _decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (linear and embedding weights), none on biases and norm scales."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


class Trainer:
    """Trains a model on a task: AdamW with warm-up and cosine decay, gradient accumulation and clipping, autocast
    precision, periodic evaluation, atomic checkpoints, resume, DDP/FSDP under torchrun; :meth:`fit` runs it and
    returns the final metrics (also written to ``OUT/metrics.json``).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        config: TrainConfig,
        out_dir: str | Path,
        tokenizer: Tokenizer,
        run_config: dict[str, Any],
        dist_ctx: DistributedContext | None = None,
        progress: bool = True,
        quiet: bool = False,
    ) -> None:
        """``progress``: a progress bar; ``quiet``: no evaluation lines either (a caller that says what it trains
        in its own words, as the tour does). The evaluation lines name the run (``out_dir``'s name)."""
        self.quiet = quiet
        self.config, self.task, self.tokenizer = config, task, tokenizer
        self.out_dir = Path(out_dir)
        self.run_config = run_config
        self.dist = dist_ctx or DistributedContext()
        self._check_config()
        self.device = resolve_device(config.device, what="train.device")
        self._precisions = precision_candidates(config.precision, self.device, what="train.precision")
        self.precision: str | None = self._precisions[0] if len(self._precisions) == 1 else None  # None: measure
        self._check_memory(model)  # before anything is allocated or written
        self.model = model.to(self.device)
        # FSDP: every process holds a shard; the optimizer must be built over the sharded parameters
        self.sharded = self.dist.enabled and config.parallel == "fsdp"
        if self.sharded:
            shard(self.model)
        self.optimizer = torch.optim.AdamW(
            _decay_groups(model, config.weight_decay),
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            # one kernel for all parameters instead of a Python loop per tensor (CPU and CUDA have it)
            fused=self.device.type in ("cpu", "cuda"),
        )
        # fp16 scales the loss so small gradients survive; for fp32 and bf16 the scaler passes everything through
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.compiled = resolve_compile(config.compile, self.device, what="train.compile")
        # the training forward is compiled; evaluation, checkpoints and decoding use the plain module (same weights)
        self.train_model = cast(nn.Module, torch.compile(model)) if self.compiled else model
        if self.dist.enabled and not self.sharded:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.train_model, device_ids=ids)
        self.progress = progress and self.dist.is_main
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.best = BestWeights(self.out_dir)  # keep_best: the evaluation with the lowest val loss, and its weights

    def _check_config(self) -> None:
        c = self.config
        c.validate()
        if c.batch_size % self.dist.world_size:
            raise ConfigError(
                f"train.batch_size ({c.batch_size}) must be divisible by the number of processes "
                f"({self.dist.world_size}): it is the global batch, split evenly"
            )
        if c.keep_best and self.dist.enabled and c.parallel == "fsdp":
            raise ConfigError(
                "train.keep_best keeps a full copy of the best weights, which a sharded (fsdp) run does not hold on "
                "any process; use train.parallel = 'ddp' or train.keep_best = false"
            )

    # -- state ---------------------------------------------------------------------------------------------------
    def resume(self) -> int:
        """Continue from ``out_dir``'s latest checkpoint; returns the step it holds."""
        info = load_checkpoint_info(self.out_dir, kind=self.task.kind)
        restore_training_state(info, self.model, self.optimizer, self.device, sharded=self.sharded)
        if info.meta.get("grad_scaler"):  # fp16's loss scale, as it had adapted (older checkpoints lack it)
            self.scaler.load_state_dict(info.meta["grad_scaler"])
        self.step = info.step
        if self.config.keep_best:  # the best this run had seen, and when
            self.best.read()
        if self.precision is None:  # measured when the run started: keep it, so the resumed run is the same run
            self.precision = info.meta.get("precision")
        log = self.out_dir / "log.jsonl"
        if log.exists():  # keep the history of the steps the checkpoint covers
            rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            self.history = [r for r in rows if r.get("step", 0) <= self.step]
        return self.step

    def save(self) -> Path | None:
        path = None
        # a sharded run gathers the full states first (every process takes part); rank 0 writes them
        model_state, optimizer_state = full_state(self.model, self.optimizer) if self.sharded else (None, None)
        if self.dist.is_main:
            meta = {
                "kind": self.task.kind,
                "config": self.run_config,
                "history_len": len(self.history),
                "precision": self.precision,
                "grad_scaler": self.scaler.state_dict(),  # (empty unless fp16 scales the loss)
            }
            path = save_checkpoint(
                self.out_dir,
                self.step,
                self.model,
                self.optimizer,
                self.tokenizer,
                meta,
                keep=self.config.keep_checkpoints,
                model_state=model_state,
                optimizer_state=optimizer_state,
            )
            self._write_log()
        self.dist.barrier()
        return path

    def _write_log(self) -> None:
        tmp = self.out_dir / "log.jsonl.tmp"
        tmp.write_text("".join(json.dumps(row) + "\n" for row in self.history))
        tmp.replace(self.out_dir / "log.jsonl")

    # -- loop ----------------------------------------------------------------------------------------------------
    def _autocast(self) -> AbstractContextManager:
        return autocast(self.device, self.precision or "fp32")

    def _batch(self, split: str, seed: int, index: int, rows: slice | None) -> Any:
        """A batch of the task, on the model's device (made on the CPU: a function of seed and index only)."""
        batch = self.task.batch(split, self.config.batch_size, seed, index, rows)
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def _measure_precision(self) -> str:
        """Of the candidate precisions (bf16 first, then fp32), the first that is at least 10% faster per training
        micro-step than the next, timed alternately on this machine; the model, its gradients and the random number
        generators are left as they were."""
        rows = self.dist.rows(self.config.batch_size) if self.dist.enabled else None
        batch = self._batch("train", self.config.seed, 0, rows)
        timings: dict[str, list[float]] = {p: [] for p in self._precisions}
        with rng_preserved(self.device):
            for repeat in range(3):
                for precision in self._precisions:
                    t0 = time.perf_counter()
                    with autocast(self.device, precision):
                        loss = self.task.loss(self.model, batch)
                    loss.backward()
                    if repeat:  # the first round warms up both
                        timings[precision].append(time.perf_counter() - t0)
            self.optimizer.zero_grad(set_to_none=True)
        median = {p: sorted(t)[len(t) // 2] for p, t in timings.items()}
        chosen = self._precisions[0] if median[self._precisions[0]] * 1.1 <= median[self._precisions[-1]] else "fp32"
        if self.dist.enabled:  # every process uses rank 0's choice
            flag = torch.tensor([1.0 if chosen != "fp32" else 0.0], device=self.device)
            torch.distributed.broadcast(flag, 0)
            chosen = self._precisions[0] if flag.item() else "fp32"
        return chosen

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over ``eval_iters`` fixed batches of each split, and the validation perplexity."""
        self.model.eval()
        out = {}
        for split in ("train", "val"):
            losses = []
            for i in range(self.config.eval_iters):
                batch = self._batch(split, self.config.seed + 7919, i, None)
                with self._autocast():
                    losses.append(float(self.task.loss(self.model, batch)))
            out[f"{split}_loss"] = sum(losses) / len(losses)
        out["val_perplexity"] = math.exp(min(out["val_loss"], 50.0))
        self.model.train()
        return out

    def _train_step(self) -> float:
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, c)
        total = 0.0
        rows = self.dist.rows(c.batch_size) if self.dist.enabled else None
        for micro in range(c.grad_accum):
            batch = self._batch("train", c.seed, self.step * c.grad_accum + micro, rows)
            last = micro == c.grad_accum - 1
            # DDP all-reduces gradients on the last micro-step only; FSDP reduce-scatters every micro-step, which
            # keeps gradients sharded (skipping it would hold full unsharded gradients: what FSDP is there to avoid)
            ddp = self.dist.enabled and not self.sharded
            sync = self.train_model.no_sync() if ddp and not last else nullcontext()  # type: ignore[operator]  # (DDP's no_sync; the module type hides it)
            with sync:
                with self._autocast():
                    loss = self.task.loss(self.train_model, batch) / c.grad_accum
                self.scaler.scale(loss).backward()
            total += float(loss.detach())
        if self.dist.enabled:  # the global mean loss, as one process would see it (and all agree on stopping)
            t = torch.tensor([total], device=self.device)
            torch.distributed.all_reduce(t)
            total = float(t) / self.dist.world_size
        if not math.isfinite(total):  # never apply (or later save) the update of a diverged step
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDivergedError(self._divergence_message(total))
        self.scaler.unscale_(self.optimizer)  # (a no-op unless fp16 scales the loss)
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _divergence_message(self, loss: float) -> str:
        c = self.config
        latest = self.out_dir / "checkpoints" / "latest"
        kept = (
            f"the last good checkpoint is {self.out_dir / 'checkpoints' / latest.read_text().strip()}"
            if latest.exists()
            else "no checkpoint had been written yet"
        )
        return (
            f"the training loss became {loss} at step {self.step + 1} (lr {lr_at(self.step, c):g}); that update was "
            f"not applied and {kept}. Lower train.lr (now {c.lr:g}) or raise train.warmup_steps"
        )

    def _check_memory(self, model: nn.Module) -> None:
        """Refuse a micro-batch whose activations alone cannot fit, before allocating or writing anything."""
        c = self.config
        rows = c.batch_size // self.dist.world_size
        device = next(model.parameters()).device
        check_fits(
            activation_bytes(model, rows * self.task.tokens_per_row),
            f"train.batch_size={c.batch_size} ({rows} rows of {self.task.tokens_per_row} tokens per process)",
            "lower train.batch_size and raise train.grad_accum to keep the same effective batch",
            device,
        )

    def fit(self) -> dict[str, Any]:
        """Train from ``self.step`` to ``config.steps``; returns (and writes) the metrics. A run that fails before
        it saved anything (a diverged loss in the first steps, Ctrl-C while it starts) removes the directory it made:
        nothing is left behind that looks like a run."""
        created = not self.out_dir.exists()
        try:
            return self._fit()
        except BaseException:  # (Ctrl-C before the first step included: after it, a checkpoint is saved)
            if created and self.dist.is_main and not (self.out_dir / "checkpoints").exists():
                shutil.rmtree(self.out_dir, ignore_errors=True)
            raise

    def _fit(self) -> dict[str, Any]:
        c = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.model.train()
        start_step, train_time, tokens = self.step, 0.0, 0
        if self.precision is None:
            self.precision = self._measure_precision()
        bar = tqdm(total=c.steps, initial=self.step, desc="train", unit="step", disable=not self.progress)
        flushed = c.flush_denormal and torch.set_flush_denormal(True)
        last_eval: dict[str, float] = {}
        try:
            while self.step < c.steps:
                t0 = time.perf_counter()
                loss = self._train_step()  # (its loss is a Python float: the step's work is done)
                elapsed = time.perf_counter() - t0
                train_time += elapsed
                tokens += c.batch_size * c.grad_accum * self.task.tokens_per_row
                self.step += 1
                self.history.append(
                    {"step": self.step, "loss": loss, "lr": lr_at(self.step - 1, c), "ms": round(1000 * elapsed, 3)}
                )
                bar.update()
                if self.step % c.eval_interval == 0 or self.step == c.steps:
                    if self.dist.is_main or self.sharded:  # (a sharded model's forward needs every process)
                        last_eval = self.evaluate()
                        self.history[-1].update(last_eval)
                        if c.keep_best:
                            self.best.offer(self.step, last_eval, self.model, write=self.dist.is_main)
                        if self.dist.is_main and not self.quiet:
                            bar.write(
                                f"{self.out_dir.name} step {self.step}/{c.steps}: train loss "
                                f"{last_eval['train_loss']:.4f}, val loss {last_eval['val_loss']:.4f}"
                            )
                    self.dist.barrier()
                    if c.keep_best and self.step == c.steps:  # the run ends with its best weights, and says so
                        if self.dist.enabled and not self.dist.is_main:  # (rank 0 evaluated, wrote, then waited)
                            self.best.read()
                        last_eval = self.best.restore(self.model, self.step)
                        if self.dist.is_main and not self.quiet:
                            bar.write(
                                f"{self.out_dir.name}: keeping the weights of step {self.best.step} (val loss "
                                f"{last_eval['val_loss']:.4f}, the lowest); they are in the final checkpoint"
                            )
                if self.step % c.log_interval == 0 or self.step == c.steps:  # after evaluating: val is never stale
                    bar.set_postfix(
                        {"loss": f"{loss:.4f}", **({"val": f"{last_eval['val_loss']:.4f}"} if last_eval else {})}
                    )
                if self.step % c.checkpoint_interval == 0 or self.step == c.steps:
                    self.save()
        except KeyboardInterrupt:
            bar.close()
            path = self.save()
            raise KeyboardInterrupt(
                f"training stopped at step {self.step} of {c.steps}; checkpoint saved to {path}"
            ) from None
        finally:
            bar.close()
            if flushed:
                torch.set_flush_denormal(False)
        bar.close()
        steps_run = self.step - start_step
        ms_per_iter = 1000 * train_time / steps_run if steps_run else float("nan")
        metrics = {
            "steps": self.step,
            "steps_this_run": steps_run,
            "train_loss": last_eval.get("train_loss", float("nan")),
            "val_loss": last_eval.get("val_loss", float("nan")),
            "val_perplexity": last_eval.get("val_perplexity", float("nan")),
            "ms_per_iter": ms_per_iter,
            "tokens_per_s": tokens / train_time if train_time else float("nan"),
            "world_size": self.dist.world_size,
            "parallel": self.config.parallel if self.dist.enabled else "none",
            "precision": self.precision,
            "compiled": self.compiled,
            **describe_hardware(self.device),
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }
        if c.keep_best and self.best.evaluation:  # train_loss and val_loss above are then the kept weights'
            metrics["best_step"] = self.best.step
        report = getattr(self.task, "report", None)
        if report is not None and (self.dist.is_main or self.sharded):  # task-specific, e.g. BLEU of a translation
            evaluation = report(self.model, progress=self.progress)
            if self.dist.is_main:
                metrics["evaluation"] = evaluation
        if self.dist.is_main:
            tmp = self.out_dir / "metrics.json.tmp"
            tmp.write_text(json.dumps(metrics, indent=2))
            tmp.replace(self.out_dir / "metrics.json")
        return metrics
