"""The training engine: one loop for every registered method, single process or torchrun DDP.

Per optimiser step ``s`` (0-based, ``S`` steps in total): lr, weight decay and EMA momentum from
:mod:`motionrep.ops.schedules`; ``train.grad_accum`` micro-batches of ``batch_size / (world * grad_accum)``
samples per rank; fp16 autocast + GradScaler on CUDA only; per-parameter gradient clipping; the method's hooks;
AdamW; EMA of every (student, teacher) pair. ``RUN_DIR`` receives ``config.yaml``, ``metrics.jsonl`` and
``checkpoints/`` (``last.pt`` and ``step_XXXXXXXX.pt``; see :func:`checkpoint_state` for the layout).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

from motionrep.config import Config, ConfigError, config_diff, load_config, parse_config, save_config, to_yaml
from motionrep.methods import Method, get_method
from motionrep.ops.ema import ema_update
from motionrep.ops.schedules import cosine as cosine_schedule
from motionrep.ops.schedules import ema_momentum, warmup_cosine, warmup_steps
from motionrep.train import dist
from motionrep.train.checkpoint import CheckpointDir, load_checkpoint, rng_state, set_rng_state
from motionrep.train.logging import MetricsLogger, progress_bar, require_tensorboard
from motionrep.train.optim import apply_schedules, build_optimizer, clip_grad_per_param


class NonFiniteLossError(RuntimeError):
    """Training stopped because a loss term became NaN or infinite."""


class DatasetError(RuntimeError):
    """The method's training data cannot be built (missing or empty dataset, bad layout)."""


class RunDirError(RuntimeError):
    """The run directory does not fit the request (exists without ``--resume``, or has no checkpoint to resume)."""


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global state, used by some augmentations)
    torch.manual_seed(seed)


def move_to(batch: Any, device: torch.device) -> Any:
    """Move a batch (an object with ``.to``, a tensor, or nested dicts / lists / tuples of them) to ``device``."""
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    if hasattr(batch, "to"):
        return batch.to(device)
    return batch


def micro_batch_size(cfg: Config, world: int) -> int:
    """Samples per rank and micro-step: the global ``train.batch_size`` split over ranks and accumulation."""
    parts = world * cfg.train.grad_accum
    if cfg.train.batch_size % parts:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by world size {world} x "
            f"train.grad_accum {cfg.train.grad_accum}"
        )
    return cfg.train.batch_size // parts


def total_steps(cfg: Config, batches_per_epoch: int | None) -> int:
    """Optimiser steps of the run: ``train.steps``, or ``ceil(epochs * batches per epoch / grad_accum)``."""
    if cfg.train.epochs is None:
        return cfg.train.steps
    if not batches_per_epoch:
        raise ConfigError("train.epochs needs a dataset of known, non-zero length; set train.steps instead")
    return max(1, math.ceil(cfg.train.epochs * batches_per_epoch / cfg.train.grad_accum))


@dataclasses.dataclass(frozen=True)
class Schedules:
    """lr, weight decay and EMA momentum of the run at any optimiser step."""

    cfg: Config
    total: int

    @property
    def peak_lr(self) -> float:
        o = self.cfg.optim
        scale = self.cfg.train.batch_size / o.lr_reference_batch if o.lr_reference_batch else 1.0
        return o.lr * scale * o.lr_scale_extra

    @property
    def warmup(self) -> int:
        return warmup_steps(self.total, self.cfg.optim.warmup_steps, self.cfg.optim.warmup_fraction)

    def lr(self, step: int) -> float:
        return warmup_cosine(step, self.total, self.peak_lr, self.cfg.optim.min_lr, self.warmup)

    def weight_decay(self, step: int) -> float:
        o = self.cfg.optim
        return cosine_schedule(step, self.total, o.weight_decay, o.weight_decay_end)

    def momentum(self, step: int) -> float:
        return ema_momentum(step, self.total, self.cfg.ema.momentum, self.cfg.ema.schedule.value)


def build_method(cfg: Config, device: torch.device | str = "cpu") -> Method:
    """The configured method on ``device`` (weights seeded by ``train.seed``); :class:`ConfigError` when the
    config describes no valid model (e.g. an unknown encoder preset)."""
    seed_everything(cfg.train.seed)
    try:
        method = get_method(cfg.method.name)(cfg)
    except ValueError as e:
        raise ConfigError(f"cannot build method {cfg.method.name!r}: {e}") from e
    return method.to(device)


def load_run(path: str | Path, device: torch.device | str = "cpu") -> Method:
    """The trained method of a run directory (its ``checkpoints/last.pt``) or of one checkpoint file, in eval mode.

    The config comes from the checkpoint itself; ``method.encoder`` is the student encoder.
    """
    path = Path(path)
    ckpt = path / "checkpoints" / "last.pt" if path.is_dir() else path
    state = load_checkpoint(ckpt)
    cfg = parse_config(state["config"])
    method = get_method(cfg.method.name)(cfg)
    method.load_state_dict(state["method"])
    return method.to(device).eval()


def build_dataset(cfg: Config) -> Any:
    """The method's training dataset; :class:`DatasetError` with the data layer's message when it cannot be built."""
    try:
        return get_method(cfg.method.name).build_dataset(cfg)
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot build the training data ({cfg.data.source}): {e}") from e


def build_loader_for(cfg: Config, dataset: Any, world: int):
    from motionrep.data.loader import build_loader

    try:
        return build_loader(
            dataset,
            batch_size=micro_batch_size(cfg, world),
            workers=cfg.train.workers,
            seed=cfg.train.seed,
            distributed=world > 1,
        )
    except ValueError as e:  # e.g. fewer videos than one batch: a data/config mistake, not a crash
        raise DatasetError(f"cannot batch the training data ({cfg.data.source}): {e}") from e


def checkpoint_state(
    step: int,
    method: Method,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loader: Any,
    cfg: Config,
) -> dict[str, Any]:
    """The checkpoint dict: ``step`` (optimiser steps done), ``method`` (state dict: student ``encoder.*``,
    teachers, heads, buffers), ``optimizer``, ``scaler``, ``loader`` (sampler position), ``rng`` (one state per
    rank), ``world_size`` and ``config`` (the resolved YAML text)."""
    states = [None] * dist.world_size()
    if dist.is_distributed():
        tdist.all_gather_object(states, rng_state())
    else:
        states = [rng_state()]
    return {
        "step": step,
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "loader": loader.state_dict(),
        "rng": states,
        "world_size": dist.world_size(),
        "config": to_yaml(cfg),
    }


class _BatchStream:
    """Endless batches from the loader, timing the wait for data."""

    def __init__(self, loader):
        self._batches = loader.batches()
        self.wait = 0.0

    def next(self):
        t0 = time.perf_counter()
        batch = next(self._batches)
        self.wait += time.perf_counter() - t0
        return batch


def _prepare_run_dir(cfg: Config, run_dir: Path, resume: bool) -> CheckpointDir:
    ckpts = CheckpointDir(run_dir / "checkpoints", cfg.train.keep_last)
    saved = run_dir / "config.yaml"
    if resume:
        if not ckpts.last.is_file():
            raise RunDirError(f"--resume: no checkpoint at {ckpts.last}")
        if saved.is_file():
            diff = config_diff(load_config(saved), cfg)
            if diff:
                raise RunDirError(f"--resume: the config differs from {saved} in: {', '.join(diff)}")
    elif saved.exists() or ckpts.last.exists():
        raise RunDirError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    dist.barrier()  # every rank has checked before rank 0 writes
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, saved)
    dist.barrier()
    return ckpts


def train(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg``'s method into ``run_dir``; returns the last logged metrics record.

    Raises :class:`NonFiniteLossError` (naming the step and loss term; checkpoints are left as they were),
    :class:`RunDirError`, :class:`DatasetError` and :class:`~motionrep.config.ConfigError`.
    """
    run_dir = Path(run_dir)
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={cfg.train.device} but CUDA is not available; use auto or cpu")
    info = dist.init_distributed(cfg.train.device)
    world, rank, device = info.world_size, info.rank, info.device
    if cfg.train.tensorboard and info.is_main:
        require_tensorboard()
    seed_everything(cfg.train.seed)
    dataset = build_dataset(cfg)
    ckpts = _prepare_run_dir(cfg, run_dir, resume)
    loader = build_loader_for(cfg, dataset, world)
    sched = Schedules(cfg, total_steps(cfg, len(loader)))
    method = build_method(cfg, device)
    optimizer = build_optimizer(method.param_groups(), cfg.optim.betas)
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    model = method
    if world > 1:
        model = DistributedDataParallel(
            method,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=cfg.train.find_unused_parameters,
        )
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    logger = MetricsLogger(run_dir, enabled=info.is_main, tensorboard=cfg.train.tensorboard)

    start = 0
    seed_everything(cfg.train.seed + rank)
    if resume:
        start = _restore(ckpts.last, method, optimizer, scaler, loader)
        logger.truncate_after(start - 1)

    stream = _BatchStream(loader)
    bar = progress_bar(sched.total, start, info.is_main)
    window_start, window_steps, record = time.perf_counter(), 0, {}
    method.train()
    try:
        for step in range(start, sched.total):
            apply_schedules(optimizer, sched.lr(step), sched.weight_decay(step))
            terms = _accumulate(model, method, stream, scaler, step, cfg.train.grad_accum, device, use_amp, ckpts)
            scaler.unscale_(optimizer)
            if cfg.optim.clip_grad > 0:
                clip_grad_per_param(trainable, cfg.optim.clip_grad)
            method.on_after_backward(step)
            method.on_before_step(step)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            momentum = sched.momentum(step)
            for student, teacher in method.ema_pairs():
                ema_update(student, teacher, momentum)
            window_steps += 1
            bar.update(1)

            if step % cfg.train.log_every == 0 or step == sched.total - 1:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                record = {
                    "step": step,
                    **terms,
                    "lr": sched.lr(step),
                    "wd": sched.weight_decay(step),
                    "momentum": momentum,
                    "samples_per_s": window_steps * cfg.train.batch_size / elapsed,
                    "data_time_frac": stream.wait / elapsed,
                    "skipped_videos": int(dist.all_reduce_sum(torch.tensor(float(loader.skip_events)))),
                }
                logger.log(record)
                bar.set_postfix(
                    loss=f"{terms['loss']:.4f}", lr=f"{record['lr']:.2e}", sps=f"{record['samples_per_s']:.1f}"
                )
                window_start, window_steps, stream.wait = time.perf_counter(), 0, 0.0

            done = step + 1
            if done % cfg.train.ckpt_every == 0 or done == sched.total:
                state = checkpoint_state(done, method, optimizer, scaler, loader, cfg)
                if info.is_main:
                    ckpts.save(state, done, periodic=done % cfg.train.ckpt_every == 0)
                dist.barrier()
    finally:
        bar.close()
        logger.close()
    return record


def _restore(path: Path, method: Method, optimizer, scaler, loader) -> int:
    """Load a checkpoint written by a run with the same world size; returns the optimiser steps already done."""
    state = load_checkpoint(path)  # on CPU: RNG states must stay there
    if state["world_size"] != dist.world_size():
        raise RunDirError(
            f"--resume: {path} was written by {state['world_size']} process(es); resume with the same number "
            f"(got {dist.world_size()}) so that data order and RNG streams continue exactly"
        )
    method.load_state_dict(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    loader.load_state_dict(state["loader"])
    set_rng_state(state["rng"][dist.rank()])
    return state["step"]


def _accumulate(model, method, stream, scaler, step, accum, device, use_amp, ckpts) -> dict[str, float]:
    """Forward and backward of ``accum`` micro-batches; returns each loss term averaged over micro-batches and ranks."""
    total = None
    for micro in range(accum):
        batch = move_to(stream.next(), device)
        sync = micro == accum - 1 or not isinstance(model, DistributedDataParallel)
        with contextlib.nullcontext() if sync else model.no_sync():
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                losses = model(batch, step)
            values = dist.all_reduce_mean(torch.stack([v.detach().float() for v in losses.values()]))
            _check_finite(losses.keys(), values, step, ckpts)
            scaler.scale(losses["loss"] / accum).backward()
        total = values if total is None else total + values
    return {name: float(v) for name, v in zip(losses.keys(), (total / accum).tolist(), strict=True)}


def _check_finite(names, values: torch.Tensor, step: int, ckpts: CheckpointDir) -> None:
    """Raise :class:`NonFiniteLossError` naming the first non-finite term (a component before the total ``loss``)."""
    bad = [(n, v) for n, v, ok in zip(names, values.tolist(), torch.isfinite(values).tolist(), strict=True) if not ok]
    if bad:
        name, value = sorted(bad, key=lambda item: item[0] == "loss")[0]
        kept = f"the last good checkpoint is {ckpts.last}" if ckpts.last.is_file() else "no checkpoint was written"
        raise NonFiniteLossError(f"non-finite loss at step {step}: loss term '{name}' = {value}; stopping ({kept})")


def dry_run(cfg: Config, warn: Callable[[str], None]) -> dict[str, int]:
    """Build the method, its optimiser and (when present) its dataset on CPU without training; returns the
    parameter count of each top-level module. A dataset that cannot be built is reported through ``warn``."""
    try:
        build_dataset(cfg)
    except DatasetError as e:
        warn(f"{e} (training would stop here)")
    method = build_method(cfg, "cpu")
    build_optimizer(method.param_groups(), cfg.optim.betas)
    return method.module_sizes()
