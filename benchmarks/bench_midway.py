"""Midway training-step throughput, achieved GFLOP/s against the measured fp32 matmul peak (MFU) and peak memory.

One optimiser step = student and teacher encoders on both motion crops, the bidirectional dynamics loss, the
two-frame multi-crop DINO term, backward, per-parameter clipping, AdamW and the EMA of every pair, on random
inputs of the preset's shapes. FLOPs are counted (not estimated) with ``torch.utils.flop_counter`` on one extra
step run with the math attention kernel, so attention matmuls are included; the forward FLOPs of one pair are
reported like the paper's "GFLOPs per example" (which counts multiply-accumulates: divide ours by 2).

    .venv/bin/python benchmarks/bench_midway.py --preset midway-synth-tiny --batch 16
    .venv/bin/python benchmarks/bench_midway.py --preset midway-bdd-vits --batch 2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from motionrep.config import load_config
from motionrep.data.batch import PairBatch
from motionrep.ops.ema import ema_update
from motionrep.train.engine import build_method
from motionrep.train.optim import apply_schedules, build_optimizer, clip_grad_per_param


def fp32_matmul_peak(n: int = 2048, seconds: float = 3.0) -> float:
    """Best GFLOP/s of an n x n fp32 matmul over ``seconds``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best, stop = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def random_pairs(cfg, batch: int) -> PairBatch:
    d = cfg.data
    return PairBatch(
        motion=torch.rand(batch, 2, 3, d.motion_size, d.motion_size),
        globals=torch.rand(batch, 2, 2, 3, d.global_size, d.global_size),
        locals=torch.rand(batch, 2, d.n_local, 3, d.local_size, d.local_size),
        motion_tf=torch.zeros(batch, 2, 4),
        globals_tf=torch.zeros(batch, 2, 2, 4),
        locals_tf=torch.zeros(batch, 2, d.n_local, 4),
        video=torch.zeros(batch, dtype=torch.long),
        frames=torch.zeros(batch, 2, dtype=torch.long),
    )


def count_flops(method, batch: PairBatch) -> dict[str, float]:
    """Counted GFLOP of one step's forward (total and dynamics-loss part) and forward + backward."""
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as dyn_counter:
            method.dynamics_loss(batch.motion)
        with FlopCounterMode(display=False) as fwd_counter:
            loss = method.training_step(batch, step=1000)["loss"]
        with FlopCounterMode(display=False) as bwd_counter:
            loss.backward()
    method.zero_grad(set_to_none=True)
    fwd, bwd = fwd_counter.get_total_flops(), bwd_counter.get_total_flops()
    return {"forward": fwd / 1e9, "dynamics_forward": dyn_counter.get_total_flops() / 1e9, "step": (fwd + bwd) / 1e9}


def time_steps(method, cfg, batch: PairBatch, steps: int, warmup: int) -> list[float]:
    opt = build_optimizer(method.param_groups(), cfg.optim.betas)
    apply_schedules(opt, cfg.optim.lr, cfg.optim.weight_decay)
    params = [p for g in opt.param_groups for p in g["params"]]
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        method.training_step(batch, step=1000)["loss"].backward()
        clip_grad_per_param(params, cfg.optim.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for student, teacher in method.ema_pairs():
            ema_update(student, teacher, 0.996)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="midway-synth-tiny")
    parser.add_argument("--batch", type=int, default=16, help="pairs per step")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.preset, ["train.device=cpu", "train.steps=1"])
    method = build_method(cfg).train()
    batch = random_pairs(cfg, args.batch)
    flops = count_flops(method, batch)
    peak = fp32_matmul_peak()
    times = time_steps(method, cfg, batch, args.steps, args.warmup)
    sec = statistics.median(times)
    sizes = method.module_sizes()
    result = {
        "preset": args.preset,
        "threads": args.threads,
        "batch_pairs": args.batch,
        "params": sizes,
        "s_per_step": sec,
        "s_per_step_all": times,
        "pairs_per_s": args.batch / sec,
        "gflop_per_step": flops["step"],
        "forward_gflop_per_pair": flops["forward"] / args.batch,
        "dynamics_forward_gflop_per_pair": flops["dynamics_forward"] / args.batch,
        "gflops": flops["step"] / sec,
        "fp32_matmul_peak_gflops": peak,
        "mfu": flops["step"] / sec / peak,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_average_1min": os.getloadavg()[0],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
