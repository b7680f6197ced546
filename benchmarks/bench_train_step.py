"""DINO training-step throughput for a preset (default ``dino-synth-tiny``) on this machine.

Two measurements:

* ``compute``: the optimiser step alone (student on 4 global + 2*n_local local crops, teacher on the 4 globals,
  backward, per-parameter clipping, AdamW, EMA) on random crops of the preset's shapes, with analytic FLOPs
  (2 per multiply-accumulate; backward = 2x forward) and MFU against a measured fp32 matmul peak;
* ``engine``: ``motionrep.train.engine.train`` with the real data pipeline (synthetic world, the preset's loader
  workers), read back from ``metrics.jsonl`` (samples/s and the fraction of time spent waiting for data).

    .venv/bin/python benchmarks/bench_train_step.py --out benchmarks/results/train_step.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from motionrep.config import load_config
from motionrep.data.batch import PairBatch
from motionrep.ops.ema import ema_update
from motionrep.train.engine import build_method, train
from motionrep.train.logging import read_metrics
from motionrep.train.optim import apply_schedules, build_optimizer, clip_grad_per_param


def vit_flops(model, side: int) -> float:
    """Forward FLOPs of one image: patch embedding, qkv/proj/MLP matmuls and attention."""
    d, p = model.embed_dim, model.patch_size
    n = (side // p) ** 2
    tokens = n + model.num_prefix_tokens
    per_block = 24 * tokens * d * d + 4 * tokens * tokens * d
    return 2 * n * 3 * p * p * d + model.depth * per_block


def head_flops(head) -> float:
    linears = [m for m in head.mlp.modules() if isinstance(m, torch.nn.Linear)]
    return 2 * (sum(m.in_features * m.out_features for m in linears) + head.last_layer.weight_v.numel())


def matmul_peak(seconds: float = 2.0, n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0)


def random_batch(cfg) -> PairBatch:
    b, d = cfg.train.batch_size, cfg.data
    return PairBatch(
        motion=torch.rand(b, 2, 3, d.motion_size, d.motion_size),
        globals=torch.rand(b, 2, 2, 3, d.global_size, d.global_size),
        locals=torch.rand(b, 2, d.n_local, 3, d.local_size, d.local_size),
        motion_tf=torch.zeros(b, 2, 4),
        globals_tf=torch.zeros(b, 2, 2, 4),
        locals_tf=torch.zeros(b, 2, d.n_local, 4),
        video=torch.zeros(b, dtype=torch.long),
        frames=torch.zeros(b, 2, dtype=torch.long),
    )


def bench_compute(cfg, steps: int, warmup: int) -> dict:
    method = build_method(cfg).train()
    opt = build_optimizer(method.param_groups(), cfg.optim.betas)
    apply_schedules(opt, cfg.optim.lr, cfg.optim.weight_decay)
    batch = random_batch(cfg)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        method.training_step(batch, step=1000)["loss"].backward()
        clip_grad_per_param([p for g in opt.param_groups for p in g["params"]], cfg.optim.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for s, t in method.ema_pairs():
            ema_update(s, t, 0.996)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    d, b = cfg.data, cfg.train.batch_size
    enc, head = method.encoder, method.dino.head
    n_student = 4 + 2 * d.n_local
    student = 4 * vit_flops(enc, d.global_size) + 2 * d.n_local * vit_flops(enc, d.local_size)
    fwd = student + n_student * head_flops(head)
    teacher = 4 * (vit_flops(enc, d.global_size) + head_flops(head))
    flops = b * (3 * fwd + teacher)
    sec = statistics.median(times)
    return {
        "batch_pairs": b,
        "s_per_step": sec,
        "pairs_per_s": b / sec,
        "gflop_per_step": flops / 1e9,
        "gflops": flops / sec / 1e9,
    }


def bench_engine(cfg, steps: int) -> dict:
    cfg.train.steps, cfg.train.log_every, cfg.train.ckpt_every = steps, 1, steps
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp) / "run")
        records = read_metrics(Path(tmp) / "run")[1:]  # step 0 includes worker start-up
    return {
        "steps": steps,
        "samples_per_s": statistics.median(r["samples_per_s"] for r in records),
        "data_time_frac": statistics.median(r["data_time_frac"] for r in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dino-synth-tiny")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--engine-steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.preset, ["train.device=cpu"])
    peak = matmul_peak()
    result = {
        "preset": args.preset,
        "threads": args.threads,
        "fp32_matmul_peak_gflops": peak / 1e9,
        "compute": bench_compute(cfg, args.steps, args.warmup),
    }
    result["compute"]["mfu"] = result["compute"]["gflops"] * 1e9 / peak
    result["engine"] = bench_engine(cfg, args.engine_steps)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
