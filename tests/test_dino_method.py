"""DINO method: view ordering, the multi-crop term against a direct per-pair computation, last-layer freezing,
EMA pairs, and 2 gloo ranks = 1 rank (parameters and centre) through the full engine."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distributed import run_ranks
from motionrep.config import load_config
from motionrep.data.batch import PairBatch
from motionrep.methods import get_method, register_method
from motionrep.methods.dino import DINO, DINOConfig, pair_views
from motionrep.train.checkpoint import load_checkpoint
from motionrep.train.engine import build_method, train

G, L, N_LOCAL = 32, 16, 2


def random_pairs(b: int, gen: torch.Generator | None = None) -> PairBatch:
    return PairBatch(
        motion=torch.rand(b, 2, 3, G, G, generator=gen),
        globals=torch.rand(b, 2, 2, 3, G, G, generator=gen),
        locals=torch.rand(b, 2, N_LOCAL, 3, L, L, generator=gen),
        motion_tf=torch.zeros(b, 2, 4),
        globals_tf=torch.zeros(b, 2, 2, 4),
        locals_tf=torch.zeros(b, 2, N_LOCAL, 4),
        video=torch.zeros(b, dtype=torch.long),
        frames=torch.zeros(b, 2, dtype=torch.long),
    )


def micro_cfg(*overrides: str):
    return load_config("micro", ["train.device=cpu", f"data.n_local={N_LOCAL}", *overrides])


def test_registered_and_counts():
    assert get_method("dino") is DINO
    method = build_method(micro_cfg())
    sizes = method.module_sizes()
    assert set(sizes) == {"encoder", "teacher_encoder", "dino"} and sizes["encoder"] == sizes["teacher_encoder"]
    assert method.dino.pairs.shape == (4, 4 + 2 * N_LOCAL) and int(method.dino.pairs.sum()) == 4 * (2 + 2 * N_LOCAL)


def test_pair_views_order():
    b = 3
    sample = 1000 * torch.arange(b).view(b, 1, 1, 1, 1, 1)
    frame = 100 * torch.arange(2).view(1, 2, 1, 1, 1, 1)
    g = (sample + frame + 10 * torch.arange(2).view(1, 1, 2, 1, 1, 1)).expand(b, 2, 2, 3, 2, 2)
    loc = (sample + frame + torch.arange(3).view(1, 1, 3, 1, 1, 1)).expand(b, 2, 3, 3, 1, 1)
    gv, lv = pair_views(g, loc)
    # view-major: view v of sample i sits at row v * b + i; globals [f0c0, f0c1, f1c0, f1c1], then locals
    assert gv[:, 0, 0, 0].view(4, b)[:, 1].tolist() == [1000, 1010, 1100, 1110]
    assert lv[:, 0, 0, 0].view(6, b)[:, 2].tolist() == [2000, 2001, 2002, 2100, 2101, 2102]


def test_multicrop_term_matches_direct_computation():
    torch.manual_seed(0)
    method = build_method(micro_cfg())
    with torch.no_grad():  # make teacher and student differ
        for p in method.teacher_encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
        method.dino.loss.center.normal_()
    batch = random_pairs(3)
    center = method.dino.loss.center.clone()
    loss = method.training_step(batch, step=0)["loss"]

    cfg: DINOConfig = method.cfg.method
    views_s = [batch.globals[:, f, c] for f in range(2) for c in range(2)]
    views_s += [batch.locals[:, f, j] for f in range(2) for j in range(N_LOCAL)]
    with torch.no_grad():
        s_out = [method.dino.head(method.encoder(v)[:, 0]) for v in views_s]
        t_out = [method.dino.teacher_head(method.teacher_encoder(v)[:, 0]) for v in views_s[:4]]
    terms = []
    for i in range(4):
        for j in range(len(views_s)):
            if j < 4 and j % 2 == i % 2:  # identical view, or the same box in the other frame
                continue
            q = F.softmax((t_out[i] - center) / cfg.teacher_temp, dim=-1)
            terms.append(-(q * F.log_softmax(s_out[j] / cfg.student_temp, dim=-1)).sum(-1).mean())
    assert len(terms) == 4 * (2 + 2 * N_LOCAL)
    torch.testing.assert_close(loss.detach(), torch.stack(terms).mean(), rtol=1e-5, atol=1e-5)
    expected_center = 0.9 * center + 0.1 * torch.cat(t_out).mean(0, keepdim=True)
    torch.testing.assert_close(method.dino.loss.center, expected_center, rtol=1e-5, atol=1e-6)
    assert math.isfinite(loss.item()) and loss.requires_grad


def test_last_layer_frozen_for_the_first_steps_and_ema_pairs():
    method = build_method(micro_cfg("optim.freeze_last_layer_steps=2", "model.drop_path_rate=0.1"))
    pairs = method.ema_pairs()
    assert [(s, t) for s, t in pairs] == [
        (method.encoder, method.teacher_encoder),
        (method.dino.head, method.dino.teacher_head),
    ]
    for student, teacher in pairs:
        assert all(
            torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values(), strict=True)
        )
        assert not any(p.requires_grad for p in teacher.parameters())
    assert max(b.drop_path.p for b in method.teacher_encoder.blocks) == 0.0
    assert max(b.drop_path.p for b in method.encoder.blocks) == pytest.approx(0.1)
    last = method.dino.head.last_layer_params()
    trainable_last = [p for p in last if p.requires_grad]
    for step, frozen in ((1, True), (2, False)):
        method.zero_grad(set_to_none=True)
        method.training_step(random_pairs(2), step)["loss"].backward()
        method.on_after_backward(step)
        assert all((p.grad is None) == frozen for p in trainable_last)
        assert method.encoder.patch_embed.proj.weight.grad is not None


@dataclass
class FixedDINOConfig(DINOConfig):
    name: str = "dino_fixed"


class FixedPairs(torch.utils.data.Dataset):
    """Random crops that are a pure function of (epoch, index), without the video pipeline."""

    samples_per_item = 1

    def __len__(self) -> int:
        return 16

    def __getitem__(self, key):
        epoch, index = key
        return random_pairs(1, torch.Generator().manual_seed(100 * epoch + index))

    def collate(self, items):
        return PairBatch.cat(items)


@register_method("dino_fixed")
class FixedDINO(DINO):
    Config = FixedDINOConfig

    @classmethod
    def build_dataset(cls, cfg):
        return FixedPairs()


DDP_OVERRIDES = ["method.name=dino_fixed", "train.steps=2", "train.batch_size=4", "train.ckpt_every=10"]


def _train_rank(run_dir: str) -> dict:
    train(micro_cfg(*DDP_OVERRIDES), run_dir)
    return {}


def test_two_gloo_ranks_equal_one_rank(tmp_path):
    train(micro_cfg(*DDP_OVERRIDES), tmp_path / "one")
    run_ranks(_train_rank, 2, str(tmp_path / "two"))
    one = load_checkpoint(Path(tmp_path / "one" / "checkpoints" / "last.pt"))["method"]
    two = load_checkpoint(Path(tmp_path / "two" / "checkpoints" / "last.pt"))["method"]
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=2e-5, msg=key)
    assert one["dino.loss.center"].abs().sum() > 0
