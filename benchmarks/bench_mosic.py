"""MoSiC training-step throughput on this machine (CPU by default) for a preset, per method variant.

One optimiser step = forward (student + teacher + Sinkhorn + loss), backward, AdamW, EMA update, on one fixed batch
of ``train.batch_size`` clips from the preset's own dataset (data loading is timed separately, once per clip). The
variants run round robin, one step each per round, so that load changes of a shared machine hit them alike.
Weights are random (``method.init`` is ignored): the cost does not depend on them.

    python benchmarks/bench_mosic.py --config mosic-synth-tiny --threads 2 --steps 6 --out bench_mosic.json

The machine's 1-minute load average at the start is recorded: on a shared machine the minimum is the better
estimate of the cost of a step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from motionrep.config import load_config
from motionrep.methods.mosic import MoSiC
from motionrep.ops.ema import ema_update
from motionrep.train.optim import apply_schedules, build_optimizer

VARIANTS: dict[str, list[str]] = {
    "default (per_frame_joint, student on frame 0)": [],
    "symmetric (student on all frames)": ["method.symmetric=true"],
    "propagate_frame0 (student all frames, teacher frame 0)": ["method.assignment=propagate_frame0"],
    "no masking": ["method.mask_ratio=0.0"],
    "bilinear sampling (both branches)": ["method.sampling.student=bilinear", "method.sampling.teacher=bilinear"],
}


class StepRunner:
    """One variant's method and optimiser; :meth:`step` runs and times one optimiser step."""

    def __init__(self, method: MoSiC, momentum: float):
        self.method = method.train()
        self.momentum = momentum
        self.optimizer = build_optimizer(method.param_groups(), (0.9, 0.999))
        apply_schedules(self.optimizer, 1e-4, 0.01)
        self.times: list[float] = []

    def step(self, batch, index: int, record: bool) -> None:
        start = time.perf_counter()
        self.method.training_step(batch, index)["loss"].backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for student, teacher in self.method.ema_pairs():
            ema_update(student, teacher, self.momentum)
        if record:
            self.times.append(time.perf_counter() - start)

    def gflop(self, batch) -> float:
        """Forward + backward GFLOP of one step (PyTorch's FLOP counter: matmuls, convolutions, attention)."""
        with FlopCounterMode(display=False) as counter:
            self.method.training_step(batch, 0)["loss"].backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mosic-synth-tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="names of VARIANTS to run")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    base = load_config(args.config, ["method.init=null"])
    dataset = MoSiC.build_dataset(base)
    start = time.perf_counter()
    batch = dataset.collate([dataset[i % len(dataset)] for i in range(base.train.batch_size)])
    data_s = (time.perf_counter() - start) / base.train.batch_size

    results = {
        "config": args.config,
        "threads": args.threads,
        "device": "cpu",
        "batch_clips": base.train.batch_size,
        "clip_frames": base.data.clip_frames,
        "tracks_per_clip": base.method.grid_size**2,
        "data_ms_per_clip": round(1000 * data_s, 2),
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
        "variants": {},
    }
    runners = {}
    for name in args.variants:
        cfg = load_config(args.config, ["method.init=null", *VARIANTS[name]])
        torch.manual_seed(0)
        runners[name] = StepRunner(MoSiC(cfg), cfg.ema.momentum)
    for index in range(args.warmup + args.steps):  # round robin: load changes hit every variant alike
        for runner in runners.values():
            runner.step(batch, index, record=index >= args.warmup)
    for name, runner in runners.items():
        median = statistics.median(runner.times)
        results["variants"][name] = {
            "gflop_per_step": round(runner.gflop(batch), 2),
            "s_per_step_median": round(median, 4),
            "s_per_step_min": round(min(runner.times), 4),
            "clips_per_s_median": round(base.train.batch_size / median, 2),
        }
        gflop = results["variants"][name]["gflop_per_step"]
        print(f"{name:58s} {gflop:7.1f} GFLOP, median {median:.3f} s/step, min {min(runner.times):.3f} s", flush=True)
    print(json.dumps(results, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
