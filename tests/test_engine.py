"""Training engine on a tiny registered toy method: optimiser groups, clipping, schedules, run files, gradient
accumulation, non-finite losses and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from motionrep.config import ConfigError, MethodConfig, load_config
from motionrep.methods import Method, register_method
from motionrep.models.heads import DINOHead
from motionrep.models.vit import build_vit
from motionrep.ops.ema import make_teacher
from motionrep.train.checkpoint import load_checkpoint
from motionrep.train.engine import (
    NonFiniteLossError,
    RunDirError,
    Schedules,
    load_run,
    micro_batch_size,
    total_steps,
    train,
)
from motionrep.train.logging import read_metrics
from motionrep.train.optim import apply_schedules, build_optimizer, clip_grad_per_param, decay_groups

DIE_AT = "MOTIONREP_TOY_DIE_AT_STEP"


@dataclass
class ToyBatch:
    x: torch.Tensor
    skipped: tuple[str, ...] = ()

    def to(self, device) -> ToyBatch:
        return ToyBatch(self.x.to(device), self.skipped)


class ToyData(torch.utils.data.Dataset):
    """Items are a pure function of (epoch, index), as the loader expects."""

    samples_per_item = 1

    def __init__(self, n: int, dim: int):
        self.n, self.dim = n, dim

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: tuple[int, int]) -> ToyBatch:
        epoch, index = key
        gen = torch.Generator().manual_seed(1000 * epoch + index)
        return ToyBatch(torch.randn(1, self.dim, generator=gen))

    def collate(self, items: list[ToyBatch]) -> ToyBatch:
        return ToyBatch(torch.cat([i.x for i in items]))


@dataclass
class ToyConfig(MethodConfig):
    name: str = "toy"
    dim: int = 8
    videos: int = 12
    nan_at_step: int = -1


@register_method("toy")
class Toy(Method):
    """Student/teacher linear maps; uses the global torch RNG (noise) so that RNG restoration matters."""

    Config = ToyConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        d = cfg.method.dim
        self.encoder = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d), nn.Linear(d, d))
        self.teacher = make_teacher(self.encoder)
        self.after_backward_steps: list[int] = []

    @classmethod
    def build_dataset(cls, cfg):
        return ToyData(cfg.method.videos, cfg.method.dim)

    def training_step(self, batch, step):
        x = batch.x + 0.1 * torch.randn_like(batch.x)
        mse = F.mse_loss(self.encoder(x), self.teacher(batch.x).detach() + 1.0)
        reg = 0.01 * self.encoder[0].weight.square().mean()
        if step == self.cfg.method.nan_at_step:
            reg = reg * float("nan")
        return {"loss": mse + reg, "mse": mse.detach(), "reg": reg.detach()}

    def ema_pairs(self):
        return [(self.encoder, self.teacher)]

    def on_after_backward(self, step):
        self.after_backward_steps.append(step)

    def on_before_step(self, step):
        if os.environ.get(DIE_AT) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)


TOY_YAML = """
train: {steps: 8, batch_size: 4, log_every: 1, ckpt_every: 3, keep_last: 2, workers: 0, device: cpu}
optim: {lr: 0.01, warmup_steps: 2}
ema: {momentum: 0.9}
method: {name: toy}
"""


def toy_config(tmp_path: Path, *overrides: str):
    path = tmp_path / "toy.yaml"
    path.write_text(TOY_YAML)
    return load_config(path, list(overrides))


def test_param_groups_decay_only_matrices():
    model = nn.ModuleDict({"encoder": build_vit("vit-micro"), "head": DINOHead(64, 32, hidden=16, bottleneck=8)})
    groups = decay_groups(model.named_parameters())
    decayed = {id(p) for g in groups if g["apply_wd"] for p in g["params"]}
    names = dict(model.named_parameters())
    for name, p in names.items():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        expect = p.ndim >= 2 and leaf not in ("cls_token", "pos_embed")
        assert (id(p) in decayed) == expect, name
    assert "head.last_layer.weight_g" not in [n for n, p in names.items() if p.requires_grad]  # frozen gain
    n_grouped = sum(len(g["params"]) for g in groups)
    assert n_grouped == sum(p.requires_grad for p in model.parameters())


def test_apply_schedules_scales_lr_and_skips_wd():
    a, b = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2))
    opt = build_optimizer([{"params": [a], "lr_scale": 10.0}, {"params": [b], "apply_wd": False}], betas=[0.9, 0.999])
    apply_schedules(opt, lr=1e-3, weight_decay=0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-2, 1e-3])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_per_parameter_clipping():
    params = [nn.Parameter(torch.zeros(3, 4)), nn.Parameter(torch.zeros(5)), nn.Parameter(torch.zeros(2))]
    grads = [torch.randn(3, 4) * 10, torch.randn(5) * 0.01, torch.randn(2) * 5]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    norms = clip_grad_per_param(params, 1.0)
    for p, g, n in zip(params, grads, norms, strict=True):
        expected = g * min(1.0, 1.0 / (g.norm().item() + 1e-6))
        torch.testing.assert_close(p.grad, expected)
        assert n.item() == pytest.approx(g.norm().item(), rel=1e-6)


def test_schedules_and_batch_arithmetic(tmp_path):
    cfg = toy_config(tmp_path, "optim.lr_reference_batch=2", "optim.lr_scale_extra=3", "train.steps=10")
    sched = Schedules(cfg, total_steps(cfg, None))
    assert sched.peak_lr == pytest.approx(0.01 * 4 / 2 * 3)
    assert sched.lr(0) == 0.0 and sched.lr(2) == pytest.approx(sched.peak_lr) and sched.lr(9) == pytest.approx(1e-6)
    assert sched.momentum(0) == pytest.approx(0.9) and sched.momentum(9) == 1.0
    assert sched.weight_decay(0) == pytest.approx(0.04) and sched.weight_decay(9) == pytest.approx(0.4)
    assert micro_batch_size(cfg, 2) == 2
    with pytest.raises(ConfigError, match="not divisible"):
        micro_batch_size(cfg, 3)
    epochs = toy_config(tmp_path, "train.epochs=2.5", "train.grad_accum=2")
    assert total_steps(epochs, 3) == 4


def test_train_writes_run_files(tmp_path):
    cfg = toy_config(tmp_path)
    last = train(cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(8)) and last == records[-1]
    for key in ("loss", "mse", "reg", "lr", "wd", "momentum", "samples_per_s", "data_time_frac", "skipped_videos"):
        assert all(key in r for r in records), key
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["momentum"] == 1.0 and records[0]["lr"] == 0.0
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.pt", "step_00000003.pt", "step_00000006.pt"]
    state = load_checkpoint(ckpts / "last.pt")
    assert state["step"] == 8 and load_config(tmp_path / "run" / "config.yaml") == cfg
    assert {"method", "optimizer", "scaler", "loader", "rng", "config"} <= state.keys()
    teacher = {k: v for k, v in state["method"].items() if k.startswith("teacher.")}
    student = {k.replace("encoder.", "teacher.", 1): v for k, v in state["method"].items() if k.startswith("encoder.")}
    assert teacher.keys() == student.keys() and any(not torch.equal(teacher[k], student[k]) for k in teacher)
    loaded = load_run(tmp_path / "run")
    assert isinstance(loaded, Toy) and not loaded.training
    assert all(torch.equal(v, state["method"][k]) for k, v in loaded.state_dict().items())
    with pytest.raises(RunDirError, match="--resume"):
        train(cfg, tmp_path / "run")
    with pytest.raises(RunDirError, match="train.seed"):
        train(toy_config(tmp_path, "train.seed=1"), tmp_path / "run", resume=True)


def test_gradient_accumulation_matches_full_batch(tmp_path):
    finals = []
    for accum in (1, 2):
        cfg = toy_config(tmp_path, f"train.grad_accum={accum}", "train.steps=3", "optim.clip_grad=0")
        train(cfg, tmp_path / f"run{accum}")
        finals.append(load_checkpoint(tmp_path / f"run{accum}" / "checkpoints" / "last.pt")["method"])
    for key in finals[0]:
        if key.startswith("encoder."):
            torch.testing.assert_close(finals[0][key], finals[1][key], atol=1e-6, rtol=1e-5)


def test_non_finite_loss_stops_with_step_and_term(tmp_path):
    cfg = toy_config(tmp_path, "method.nan_at_step=4")
    with pytest.raises(NonFiniteLossError, match=r"step 4: loss term 'reg' = nan.*last good checkpoint"):
        train(cfg, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3


RESUME_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import test_engine
from motionrep.train.engine import train
train(test_engine.toy_config(__import__("pathlib").Path({tmp!r})), {run!r}, resume={resume})
"""


def _run_toy(tmp_path: Path, run: str, resume: bool, die_at: int | None) -> int:
    script = RESUME_SCRIPT.format(tests=str(Path(__file__).parent), tmp=str(tmp_path), run=run, resume=resume)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(DIE_AT, None)
    if die_at is not None:
        env[DIE_AT] = str(die_at)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120).returncode


def test_resume_after_sigkill_is_exact(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    train(toy_config(tmp_path), ref)
    assert _run_toy(tmp_path, str(killed), False, die_at=5) == -signal.SIGKILL  # after the step-3 checkpoint
    partial = read_metrics(killed)
    assert partial[-1]["step"] == 4  # steps 3 and 4 were logged after the checkpoint, then lost
    train(toy_config(tmp_path), killed, resume=True)
    keys = ("step", "loss", "mse", "reg", "lr", "wd", "momentum")
    expected = [{k: r[k] for k in keys} for r in read_metrics(ref)]
    assert [{k: r[k] for k in keys} for r in read_metrics(killed)] == expected
    a = load_checkpoint(ref / "checkpoints" / "last.pt")
    b = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
    assert json.dumps(a["loader"]) == json.dumps(b["loader"])
