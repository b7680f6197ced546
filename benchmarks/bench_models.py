"""ViT forward / forward+backward throughput, achieved GFLOP/s and MFU against the measured fp32 matmul peak.

FLOPs are analytic (2 per multiply-accumulate): patch embedding ``2 n 3 p^2 D``, per block ``24 N D^2`` (qkv, proj,
MLP) plus ``4 N^2 D`` (attention scores and weighted sum); a training step (forward + backward) counts 3x the
forward. Each configuration runs in a fresh process so that its peak memory is its own: on CPU the growth of the
resident-set high-water mark (reset after building the model) over the baseline, on CUDA the peak allocation.

    .venv/bin/python benchmarks/bench_models.py --out benchmarks/results/models.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from motionrep.models.vit import build_vit

CASES = {  # name: (preset, image side, batch)
    "vit-synth-tiny@64": ("vit-synth-tiny", 64, 32),
    "vit-tiny@64": ("vit-tiny", 64, 32),
    "vit-s16@224": ("vit-s16", 224, 4),
}


def forward_flops(model, side: int) -> float:
    """Analytic forward FLOPs of one image."""
    h, w = model.grid_size((side, side))
    n, d, p = h * w, model.embed_dim, model.patch_size
    tokens = n + model.num_prefix_tokens
    hidden = model.blocks[0].mlp.fc1.out_features
    per_block = 2 * tokens * (4 * d * d + 2 * d * hidden) + 4 * tokens * tokens * d
    return 2 * n * 3 * p * p * d + model.depth * per_block


def matmul_peak(device: torch.device, sizes: tuple[int, ...] = (1024, 2048), reps: int = 10) -> float:
    """Best fp32 GFLOP/s over ``n x n`` matmuls (the best single run: the machine may be shared)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, steps: int, warmup: int) -> float:
    """Median seconds per call (robust to other processes on a shared machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _status_kib(field: str) -> int:
    """A ``VmRSS`` / ``VmHWM`` line of ``/proc/self/status`` in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    """Reset the process's resident-set high-water mark (Linux ``clear_refs`` code 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def run_case(case: str, device: str, steps: int, warmup: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    preset, side, batch = CASES[case]
    model = build_vit(preset).to(dev)
    x = torch.rand(batch, 3, side, side, device=dev)
    if dev.type == "cpu":
        _reset_peak_rss()
        base_rss = _status_kib("VmRSS")

    def forward():
        with torch.no_grad():
            model(x)

    def train_step():
        model.zero_grad(set_to_none=True)
        model(x).float().pow(2).mean().backward()

    model.eval()
    t_fwd = _timed(forward, dev, steps, warmup)
    model.train()
    t_train = _timed(train_step, dev, steps, warmup)
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    else:  # growth of the resident-set peak over the model + input baseline
        peak_mb = (_status_kib("VmHWM") - base_rss) / 1024
    flops = forward_flops(model, side)
    queue.put(
        dict(
            case=case,
            preset=preset,
            image=side,
            batch=batch,
            params=sum(p.numel() for p in model.parameters()),
            forward_gflop_per_image=flops / 1e9,
            forward_s=t_fwd,
            forward_images_per_s=batch / t_fwd,
            forward_gflops=batch * flops / t_fwd / 1e9,
            train_s=t_train,
            train_images_per_s=batch / t_train,
            train_gflops=3 * batch * flops / t_train / 1e9,
            peak_extra_mb=peak_mb,
        )
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here as well as to stdout")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    load_before = os.getloadavg()[0]
    peak = matmul_peak(dev)
    ctx = mp.get_context("spawn")
    results = []
    for case in args.cases:
        queue = ctx.Queue()
        proc = ctx.Process(target=run_case, args=(case, args.device, args.steps, args.warmup, args.threads, queue))
        proc.start()
        row = queue.get(timeout=1800)
        proc.join()
        results.append(row)
        print(json.dumps(row), file=sys.stderr)
    peak = max(peak, matmul_peak(dev))  # measured before and after the cases; MFU uses the better peak
    for row in results:
        row["forward_mfu"] = row["forward_gflops"] / peak
        row["train_mfu"] = row["train_gflops"] / peak
    report = dict(
        device=args.device,
        threads=args.threads,
        torch=torch.__version__,
        load_average_1min=[load_before, os.getloadavg()[0]],  # before / after: other processes share the CPU
        matmul_peak_gflops=peak,
        results=results,
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
