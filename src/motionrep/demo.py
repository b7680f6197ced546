"""The end-to-end demo (``motionrep demo`` / ``make demo``): synthetic world → Midway and DINO pretraining at the
same budget → evaluation suite (with a random-init baseline) → ``report.html`` + ``metrics.json`` + headline.

Output folder layout::

    DIR/world/          the synthetic world (``motionrep synth`` layout): train clips (pretraining, probes), val
    DIR/runs/midway/    the Midway run (preset ``demo-midway``)
    DIR/runs/dino/      the DINO run (preset ``demo-dino``: same steps, batch, crops, encoder)
    DIR/metrics.json    model -> {"<protocol>.<metric>": value} for ``midway``, ``dino`` and ``random``
    DIR/report.html     headline, full metrics table and figures
    DIR/demo.json       seed, budget, configs, stage timings (wall and CPU seconds), headline and verdict

Everything is seeded by one seed (training, world, probes, random initialisation). Re-running into a folder that
holds a demo needs ``resume`` (finished stages are kept, unfinished runs continue from their checkpoints) or
``overwrite`` (the demo's own outputs are deleted first).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from motionrep.config import Config, config_diff, load_config

PRESETS = {"midway": "demo-midway", "dino": "demo-dino"}  # model name -> training preset
HEADLINE = {"mIoU (%)": "seg_linear.miou", "EPE (px)": "flow_probe.epe"}  # recognition, motion
OUTPUTS = ("world", "runs", "figures", "metrics.json", "timing.json", "report.html", "demo.json")


class DemoError(ValueError):
    """A user mistake in the demo request (occupied output folder, bad budget); the message says what to do."""


@dataclass(frozen=True)
class DemoBudget:
    """How much work the demo does. ``steps``/``batch_size`` None keep the presets' values (the full demo)."""

    name: str
    steps: int | None
    batch_size: int | None
    train_videos: int  # synthetic train clips: pretraining data and the probes' training clips
    eval_videos: int  # synthetic val clips scored by the suite
    seg_steps: int  # linear segmentation probe steps
    flow_steps: int  # flow probe steps
    flow_gap: int = 1  # evaluated flow spans frames t -> t + flow_gap
    frame_step: int = 4  # evaluated frames (and flow pairs) every frame_step frames of each clip
    tap: int | None = None  # encoder block whose tokens are evaluated, for every model alike (None: the last)
    workers: int | None = None  # data-loader workers (None: the presets')

    def overrides(self, seed: int) -> list[str]:
        """Dotted config overrides applying this budget and ``seed`` to a demo preset."""
        out = [f"train.seed={seed}", f"data.synth_seed={seed}", f"data.synth_videos={self.train_videos}"]
        if self.steps is not None:
            out += [f"train.steps={self.steps}", f"train.ckpt_every={self.steps}"]
        if self.batch_size is not None:
            out.append(f"train.batch_size={self.batch_size}")
        if self.workers is not None:
            out.append(f"train.workers={self.workers}")
        return out


BUDGETS = {
    "full": DemoBudget(
        "full", None, None, train_videos=64, eval_videos=16, seg_steps=300, flow_steps=2000, frame_step=1
    ),
    "quick": DemoBudget("quick", 100, 8, train_videos=16, eval_videos=8, seg_steps=100, flow_steps=1000, frame_step=1),
    "micro": DemoBudget("micro", 2, 4, train_videos=4, eval_videos=2, seg_steps=4, flow_steps=4, workers=0),
}


@dataclass
class DemoResult:
    metrics: dict[str, dict[str, float | None]]
    headline: dict[str, dict[str, float | None]]  # model -> {headline label: value}
    holds: bool  # Midway best on EPE and at least as good as the best baseline on mIoU
    zero_flow_epe: float  # EPE of predicting no motion on the same pairs: the floor a useful flow probe beats
    report: Path
    seconds: dict[str, dict[str, float]]  # stage -> {"wall": s, "cpu": s}


def demo_configs(budget: DemoBudget, seed: int = 0) -> dict[str, Config]:
    """The two training configs; raises :class:`DemoError` unless they differ only in the ``method`` section."""
    if seed < 0:
        raise DemoError(f"the seed must be >= 0, got {seed}")
    cfgs = {name: load_config(preset, budget.overrides(seed)) for name, preset in PRESETS.items()}
    unfair = [k for k in config_diff(cfgs["midway"], cfgs["dino"]) if not k.startswith("method.")]
    if unfair:
        raise DemoError(f"demo presets must share budget, data, crops and encoder; they differ in {', '.join(unfair)}")
    return cfgs


def prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an occupied folder unless ``resume`` or ``overwrite``; with ``overwrite`` delete the demo's outputs."""
    if resume and overwrite:
        raise DemoError("choose one of --resume and --overwrite")
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out} exists and is not a folder")
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and not (resume or overwrite):
        raise DemoError(
            f"{out} is not empty; pass --resume to continue the demo in it (finished stages are kept), "
            "--overwrite to delete its demo outputs and start afresh, or choose another --out"
        )
    if overwrite:
        for name in OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (data-loader workers), user + system."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@contextmanager
def _timed(seconds: dict[str, dict[str, float]], stage: str) -> Iterator[None]:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    yield
    seconds[stage] = {"wall": round(time.perf_counter() - wall, 1), "cpu": round(_cpu_seconds() - cpu, 1)}


def _world_ready(world: Path, counts: dict[str, int], seed: int) -> bool:
    """Whether ``world`` already holds ``counts`` (split -> clips) of the world with ``seed``."""
    manifest = world / "manifest.json"
    if not manifest.is_file():
        return False
    splits = json.loads(manifest.read_text()).get("splits", {})
    return all(
        splits.get(s, {}).get("seed") == seed and len(splits.get(s, {}).get("videos", [])) == n
        for s, n in counts.items()
    )


def generate_world(world: Path, preset: str, counts: dict[str, int], seed: int) -> None:
    """Write the ``counts`` (split -> clips) of the synthetic world ``preset`` under ``world`` (replacing any)."""
    from motionrep.data.synth import SynthWorld, synth_preset, write_split

    config = synth_preset(preset)
    for split, n in counts.items():
        write_split(SynthWorld(config, split, seed, n), world, "frames")


def _trained_steps(run_dir: Path) -> int | None:
    """The step of ``run_dir``'s last checkpoint, or None without one."""
    from motionrep.train.checkpoint import load_checkpoint

    last = run_dir / "checkpoints" / "last.pt"
    return int(load_checkpoint(last)["step"]) if last.is_file() else None


def pretrain(cfg: Config, run_dir: Path, resume: bool) -> None:
    """Train ``cfg`` into ``run_dir``; with ``resume`` a finished run is kept and an unfinished one continued."""
    from motionrep.train.engine import train

    done = _trained_steps(run_dir) if resume else None
    saved = run_dir / "config.yaml"
    if done is not None and saved.is_file():
        diff = config_diff(load_config(saved), cfg)
        if diff:
            raise DemoError(f"{run_dir} was trained with other settings ({', '.join(diff)}); use --overwrite")
    if done is not None and done >= cfg.train.steps:
        return
    if resume and done is None and run_dir.exists():
        shutil.rmtree(run_dir)  # interrupted before its first checkpoint: nothing to continue
    train(cfg, run_dir, resume=done is not None)


def headline(metrics: dict[str, dict[str, float | None]]) -> tuple[dict[str, dict[str, float | None]], bool]:
    """The headline values per model, and whether Midway has the lowest EPE of all models and an mIoU at least as
    high as every other model's."""
    rows = {m: {label: values.get(key) for label, key in HEADLINE.items()} for m, values in metrics.items()}
    epe, miou = "EPE (px)", "mIoU (%)"
    mine, others = rows.get("midway", {}), [v for m, v in rows.items() if m != "midway"]
    values = [mine.get(epe), mine.get(miou)] + [o[k] for o in others for k in (epe, miou)]
    holds = bool(others) and all(v is not None for v in values)
    holds = holds and all(mine[epe] < o[epe] and mine[miou] >= o[miou] for o in others)
    return rows, holds


def format_headline(rows: dict[str, dict[str, float | None]], zero_epe: float | None = None) -> str:
    """The headline as a plain-text table (one row per model), with the zero-flow EPE as a reference line."""
    labels = list(HEADLINE)
    lines = ["model".ljust(8) + "".join(label.rjust(12) for label in labels)]
    for model, values in rows.items():
        cells = ("-" if values[k] is None else f"{values[k]:.2f}" for k in labels)
        lines.append(model.ljust(8) + "".join(c.rjust(12) for c in cells))
    if zero_epe is not None:
        lines.append(f"(predicting zero flow on the same pairs: EPE {zero_epe:.2f} px)")
    return "\n".join(lines)


def _headline_html(
    rows: dict[str, dict[str, float | None]], holds: bool, zero_epe: float, settings: dict[str, str]
) -> str:
    import html

    head = "".join(f"<th>{html.escape(label)}</th>" for label in HEADLINE)
    body = "".join(
        f"<tr><td>{html.escape(m)}</td>"
        + "".join(f"<td>{'–' if v is None else f'{v:.2f}'}</td>" for v in values.values())
        + "</tr>"
        for m, values in rows.items()
    )
    verdict = (
        "Midway's features are better than the baselines on motion and at least as good on recognition."
        if holds
        else "This run does NOT show Midway better on motion while at least as good on recognition."
    )
    meta = " · ".join(f"{html.escape(k)}: {html.escape(v)}" for k, v in settings.items())
    return (
        "<h2>Demo headline</h2>"
        f"<p>Frozen features: linear segmentation probe (mIoU, higher is better) and flow probe (EPE, lower is "
        f"better).</p><table><thead><tr><th>model</th>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<p>Predicting zero flow on the same pairs gives EPE {zero_epe:.2f} px.</p>"
        f"<p><b>{html.escape(verdict)}</b></p><p class='meta'>{meta}</p><h2>All metrics</h2>"
    )


def _add_headline(report: Path, block: str) -> None:
    text = report.read_text()
    text = text.replace("</h1>", "</h1>" + block, 1) if "</h1>" in text else text.replace("<body>", "<body>" + block, 1)
    report.write_text(text.replace("<title>motionrep evaluation</title>", "<title>motionrep demo</title>", 1))


def run_demo(
    out: str | Path,
    budget: DemoBudget = BUDGETS["full"],
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run the whole demo into ``out`` and return its metrics, headline and stage timings (see module docstring).

    Raises :class:`DemoError` for an occupied folder or an inconsistent request; training and evaluation errors
    (``ConfigError``, ``RunDirError``, ``EvalError``) propagate with their messages.
    """
    from motionrep.eval import suite as S
    from motionrep.eval.flow import flow_zero

    out = Path(out)
    cfgs = demo_configs(budget, seed)
    prepare_out_dir(out, resume, overwrite)
    seconds: dict[str, dict[str, float]] = {}
    data = cfgs["midway"].data
    counts = {"train": budget.train_videos, "val": budget.eval_videos}
    world = out / "world"

    with _timed(seconds, "world"):
        if resume and _world_ready(world, counts, seed):
            log(f"[1/4] synthetic world: kept {world}")
        else:
            log(f"[1/4] synthetic world ({data.synth_preset} preset, seed {seed}): {counts} clips -> {world}")
            generate_world(world, data.synth_preset, counts, seed)
    for i, (name, cfg) in enumerate(cfgs.items(), start=2):
        log(
            f"[{i}/4] pretraining {name} ({PRESETS[name]}): {cfg.train.steps} steps x {cfg.train.batch_size} pairs, "
            f"{cfg.model.name} at {cfg.data.global_size} px"
        )
        with _timed(seconds, f"pretrain_{name}"):
            pretrain(cfg, out / "runs" / name, resume)

    log(f"[4/4] evaluation suite: midway, dino and random init on {budget.eval_videos} val clips")
    with _timed(seconds, "evaluate"):
        suite_cfg = S.SuiteConfig(
            baselines=("random",),
            seg_steps=budget.seg_steps,
            flow_steps=budget.flow_steps,
            tap=budget.tap,
            seed=seed,
        )
        models = [S.load_model_arg(f"{name}={out / 'runs' / name}") for name in cfgs]
        eval_data = S.synth_data(
            split="val",
            train_videos=budget.train_videos,
            eval_videos=budget.eval_videos,
            data_dir=world,
            seed=seed,
            flow_gap=budget.flow_gap,
            frame_step=budget.frame_step,
        )
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        metrics = S.run_suite(models, eval_data, suite_cfg, out, device)

    rows, holds = headline(metrics)
    zero_epe = flow_zero(eval_data.flow_val).metrics["epe"]
    settings = {
        "budget": budget.name,
        "seed": str(seed),
        "steps": str(cfgs["midway"].train.steps),
        "batch": str(cfgs["midway"].train.batch_size),
        "encoder": cfgs["midway"].model.name,
        "world": f"{data.synth_preset}, {budget.train_videos} train / {budget.eval_videos} val clips",
        "flow pairs": f"frames t -> t + {budget.flow_gap}, t every {budget.frame_step} frames",
    }
    report = out / "report.html"
    _add_headline(report, _headline_html(rows, holds, zero_epe, settings))
    summary = {
        "seed": seed,
        "budget": dataclasses.asdict(budget),
        "presets": PRESETS,
        "headline": rows,
        "holds": holds,
        "zero_flow_epe": round(zero_epe, 4),
        "seconds": seconds,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return DemoResult(metrics, rows, holds, zero_epe, report, seconds)
