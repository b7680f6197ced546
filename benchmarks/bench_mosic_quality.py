"""MoSiC quality at a fixed budget: summarise `motionrep eval` results of an initial checkpoint and MoSiC runs.

Reads the ``metrics.json`` of one or more evaluations (e.g. the same models scored with different probe seeds,
``motionrep eval ... --seed S``), groups the evaluated models (e.g. the MoSiC runs of several training seeds) and
prints one markdown table: per metric and group, the mean ± sample standard deviation over every (model, evaluation)
value, the mean paired difference to the reference group (same evaluation: same seed, same data) and how many of
those differences are positive.

    python benchmarks/bench_mosic_quality.py --evals runs/mosic-bench/eval-s0 runs/mosic-bench/eval-s1 \
        --group init=dino-init --group mosic=mosic-s0,mosic-s1 --reference init \
        --out benchmarks/results/mosic_quality.json

``--axis-check N`` instead checks the training data: on N clips of ``mosic-synth-tiny``'s pipeline (crop, resize,
flip applied) the mean |colour(frame t) − colour(frame 0)| at the visible track points, for the tracks, the
transposed tracks and a static point (a track read on the wrong axes scores like the static point).

    python benchmarks/bench_mosic_quality.py --axis-check 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

METRICS = ("incontext.miou", "seg_linear.miou", "seg_linear.acc", "overcluster.miou", "overcluster.miou_k27")


def parse_group(text: str) -> tuple[str, list[str]]:
    """``NAME=model1,model2`` → (NAME, [model1, model2])."""
    name, sep, models = text.partition("=")
    if not sep or not name or not models:
        raise argparse.ArgumentTypeError(f"--group expects NAME=MODEL[,MODEL...], got {text!r}")
    return name, models.split(",")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(
    evals: list[dict[str, dict[str, float]]], groups: dict[str, list[str]], reference: str, metrics: tuple[str, ...]
) -> dict[str, dict[str, dict[str, float]]]:
    """group → metric → {mean, std, n, delta, delta_std, wins}; delta = mean over evaluations and models of the group
    of (model − mean of the reference group in the same evaluation); wins = how many of those differences are > 0."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, models in groups.items():
        out[name] = {}
        for metric in metrics:
            values, deltas = [], []
            for ev in evals:
                ref = statistics.fmean(ev[m][metric] for m in groups[reference])
                for m in models:
                    values.append(ev[m][metric])
                    deltas.append(ev[m][metric] - ref)
            mean, std = mean_std(values)
            delta, delta_std = mean_std(deltas)
            wins = sum(d > 0 for d in deltas)
            out[name][metric] = {
                "mean": mean,
                "std": std,
                "n": len(values),
                "delta": delta,
                "delta_std": delta_std,
                "wins": wins,
            }
    return out


def markdown(summary: dict[str, dict[str, dict[str, float]]], reference: str, metrics: tuple[str, ...]) -> str:
    """One row per group: mean ± std per metric, and the paired difference to the reference group."""
    head = "| group | n | " + " | ".join(metrics) + " |"
    rows = [head, "|" + "---|" * (len(metrics) + 2)]
    for name, per_metric in summary.items():
        cells = []
        for metric in metrics:
            s = per_metric[metric]
            cell = f"{s['mean']:.2f} ± {s['std']:.2f}"
            if name != reference:
                cell += f" (Δ {s['delta']:+.2f} ± {s['delta_std']:.2f}, {s['wins']}/{s['n']} > 0)"
            cells.append(cell)
        rows.append(f"| {name} | {per_metric[metrics[0]]['n']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def axis_check(num_clips: int, overrides: list[str]) -> dict[str, float]:
    """Mean colour change along tracks, transposed tracks and static points on clips of the MoSiC data pipeline."""
    import torch

    from motionrep.config import load_config
    from motionrep.methods.mosic import MoSiC
    from motionrep.ops.points import sample_tokens

    cfg = load_config("mosic-synth-tiny", ["method.init=null", *overrides])
    dataset = MoSiC.build_dataset(cfg)
    batch = dataset.collate([dataset[i] for i in range(num_clips)])
    frames, tracks = batch.frames, batch.tracks
    weight = (batch.visible & batch.in_crop).float()[:, 1:]
    b, t, _, h, w = frames.shape
    pixels = frames.flatten(0, 1).flatten(2).transpose(1, 2)  # every pixel a "token" of patch size 1

    def change(xy: torch.Tensor) -> float:
        colour = sample_tokens(pixels, xy.flatten(0, 1), 1, (h, w), mode="bilinear").view(b, t, -1, 3)
        diff = (colour[:, 1:] - colour[:, :1]).abs().mean(-1)
        return float((diff * weight).sum() / weight.sum())

    motion = (tracks[:, -1] - tracks[:, 0]).abs().mean(dim=(0, 1))
    return {
        "tracks": change(tracks),
        "transposed": change(tracks.flip(-1)),
        "static": change(tracks[:, :1].expand_as(tracks)),
        "mean_abs_dx": float(motion[0]),
        "mean_abs_dy": float(motion[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evals", nargs="+", type=Path, help="motionrep eval output directories")
    parser.add_argument("--group", action="append", type=parse_group, help="NAME=MODEL[,MODEL...]")
    parser.add_argument("--reference", help="group the differences are taken to")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS))
    parser.add_argument("--axis-check", type=int, metavar="N", help="check the tracks of N training clips instead")
    parser.add_argument("--override", nargs="*", default=[], help="config overrides for --axis-check")
    parser.add_argument("--out", type=Path, help="also write the result as JSON")
    args = parser.parse_args()

    if args.axis_check is not None:
        if args.axis_check < 1:
            sys.exit("--axis-check needs at least 1 clip")
        result = axis_check(args.axis_check, args.override)
        print(json.dumps(result, indent=2))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        return
    if not (args.evals and args.group and args.reference):
        sys.exit("--evals, --group and --reference are required (or --axis-check N)")

    groups = dict(args.group)
    if args.reference not in groups:
        sys.exit(f"--reference {args.reference!r} is not one of the groups {sorted(groups)}")
    evals = []
    for d in args.evals:
        path = d / "metrics.json"
        if not path.is_file():
            sys.exit(f"no metrics.json in {d}")
        ev = json.loads(path.read_text())
        missing = [m for ms in groups.values() for m in ms if m not in ev]
        if missing:
            sys.exit(f"{path} has no model(s) {missing}; it has {sorted(ev)}")
        absent = [
            k for k in args.metrics if any(k not in ev[m] or ev[m][k] is None for ms in groups.values() for m in ms)
        ]
        if absent:
            sys.exit(f"{path} lacks metric(s) {absent} for some model")
        evals.append(ev)
    metrics = tuple(args.metrics)
    summary = summarise(evals, groups, args.reference, metrics)
    print(markdown(summary, args.reference, metrics))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"evals": [str(d) for d in args.evals], "groups": groups, "reference": args.reference}
        args.out.write_text(json.dumps({**record, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
