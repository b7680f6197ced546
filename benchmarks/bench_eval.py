"""Wall time of the synthetic evaluation suite for a ViT of a given preset (untrained weights: timing only).

    python benchmarks/bench_eval.py --arch vit-synth-tiny --threads 2 --out benchmarks/results/bench_eval.json

Prints (and optionally writes) JSON: data generation time, seconds per protocol and model (``timing.json`` of the
suite), the total, and the protocol that dominates. Baselines default to ``random,pixels,dis`` (the supervised
baseline's cost is its training steps: ``--supervised-steps``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from motionrep.eval.suite import Model, SuiteConfig, run_suite, synth_data
from motionrep.models.vit import build_vit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vit-synth-tiny")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--train-videos", type=int, default=32)
    ap.add_argument("--eval-videos", type=int, default=16)
    ap.add_argument("--baselines", default="random,pixels,dis")
    ap.add_argument("--supervised-steps", type=int, default=0)
    ap.add_argument("--seg-steps", type=int, default=300)
    ap.add_argument("--flow-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    data = synth_data(args.preset, "val", args.train_videos, args.eval_videos)
    data_seconds = time.perf_counter() - t0
    torch.manual_seed(0)
    model = Model(args.arch, "encoder", build_vit(args.arch).eval())
    baselines = tuple(b for b in args.baselines.split(",") if b and b != "none")
    cfg = SuiteConfig(
        baselines=baselines,
        seg_steps=args.seg_steps,
        flow_steps=args.flow_steps,
        supervised_steps=args.supervised_steps or None,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_suite([model], data, cfg, tmp)
        suite_seconds = time.perf_counter() - t0
        timing = json.loads((Path(tmp) / "timing.json").read_text())
    per_protocol: dict[str, float] = {}
    for protocols in timing.values():
        for name, seconds in protocols.items():
            per_protocol[name] = round(per_protocol.get(name, 0.0) + seconds, 2)
    result = {
        "arch": args.arch,
        "preset": args.preset,
        "train_videos": args.train_videos,
        "eval_videos": args.eval_videos,
        "baselines": list(baselines),
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "data_seconds": round(data_seconds, 2),
        "suite_seconds": round(suite_seconds, 2),
        "model_seconds": {name: round(sum(p.values()), 2) for name, p in timing.items()},
        "protocol_seconds_all_models": per_protocol,
        "dominant_protocol": max(per_protocol, key=per_protocol.get),
        "timing": timing,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
