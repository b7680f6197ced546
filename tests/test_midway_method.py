"""The ``midway`` method: presets, reduction to the DINO baseline, EMA scope, every Table 3 row and Table 5 variant,
bidirectional loss through the encoders, parameter counts of the ViT-S recipe, and a CLI training smoke run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from motionrep.cli import app
from motionrep.config import ConfigError, load_config
from motionrep.data.batch import PairBatch
from motionrep.methods import get_method
from motionrep.methods.midway import Midway
from motionrep.models.dynamics import MidwayDynamics, cls_and_patches
from motionrep.models.vit import VIT_PRESETS, build_vit
from motionrep.train.checkpoint import load_checkpoint
from motionrep.train.engine import build_method


def random_batch(b: int = 2, size: int = 32, local: int = 16, n_local: int = 2) -> PairBatch:
    return PairBatch(
        motion=torch.rand(b, 2, 3, size, size),
        globals=torch.rand(b, 2, 2, 3, size, size),
        locals=torch.rand(b, 2, n_local, 3, local, local),
        motion_tf=torch.zeros(b, 2, 4),
        globals_tf=torch.zeros(b, 2, 2, 4),
        locals_tf=torch.zeros(b, 2, n_local, 4),
        video=torch.zeros(b, dtype=torch.long),
        frames=torch.zeros(b, 2, dtype=torch.long),
    )


def micro(*overrides: str) -> Midway:
    return build_method(load_config("midway-micro", list(overrides)))


@pytest.mark.parametrize("preset", ["midway-micro", "midway-synth-tiny", "midway-bdd-vits", "midway-bdd-vitb"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert get_method(cfg.method.name) is Midway
    assert cfg.method.midway.levels[-1] <= VIT_PRESETS[cfg.model.name]["depth"]


def test_walking_tours_preset_demands_a_step_count():
    with pytest.raises(ConfigError, match="train.steps"):
        load_config("midway-wt-vits")
    cfg = load_config("midway-wt-vits", ["train.steps=10"])
    assert cfg.optim.lr_scale_extra == 5.0 and cfg.data.gap == [15, 30]


def test_vits_recipe_parameter_counts():
    cfg = load_config("midway-bdd-vits")
    vit = VIT_PRESETS[cfg.model.name]
    assert sum(p.numel() for p in build_vit(cfg.model.name).parameters()) == 21_665_664
    grid = (cfg.data.motion_size // vit["patch_size"],) * 2
    dyn = MidwayDynamics(cfg.method.midway, vit["embed_dim"], grid)
    assert dyn.num_student_parameters() == 36_600_000
    assert sum(p.numel() for _, t in dyn.ema_pairs() for p in t.parameters()) == 7_169_088


def test_synth_tiny_sizes_match_the_design():
    cfg = load_config("midway-synth-tiny")
    assert sum(p.numel() for p in build_vit(cfg.model.name).parameters()) == 1_223_040
    dyn = MidwayDynamics(cfg.method.midway, 128, (8, 8))
    assert round(dyn.num_student_parameters() / 1e6, 2) == 2.40  # midway.md §17.1


def test_no_latent_dynamics_is_exactly_the_dino_baseline():
    midway = micro("method.midway.latent_dynamics=false")
    dino = build_method(load_config("micro"))
    assert not hasattr(midway, "dynamics")
    ms, ds = midway.state_dict(), dino.state_dict()
    assert ms.keys() == ds.keys() and all(torch.equal(ms[k], ds[k]) for k in ms)
    batch = random_batch()
    out_m, out_d = midway.training_step(batch, 0), dino.training_step(batch, 0)
    assert out_m.keys() == out_d.keys()
    torch.testing.assert_close(out_m["loss"], out_d["loss"])


def test_ema_scope():
    method = micro()
    dyn = method.dynamics
    pairs = method.ema_pairs()
    students = {id(s) for s, _ in pairs}
    expected = [method.encoder, method.dino.head, dyn.student_embed, dyn.student_backward]
    assert students == {id(m) for m in expected} and len(pairs) == 4
    teacher_params = {id(p) for _, t in pairs for p in t.parameters()}
    frozen = {id(p) for p in method.parameters() if not p.requires_grad}
    assert teacher_params == frozen
    for student, teacher in pairs:
        assert [n for n, _ in student.named_parameters()] == [n for n, _ in teacher.named_parameters()]


def test_dynamics_loss_is_the_mean_of_both_directions_through_the_encoders():
    method = micro().eval()
    motion = torch.rand(2, 2, 3, 32, 32)
    with torch.no_grad():
        loss, logs = method.dynamics_loss(motion)
        sx, sy = (method.taps(method.encoder, motion[:, k]) for k in (0, 1))
        tx, ty = (method.taps(method.teacher_encoder, motion[:, k]) for k in (0, 1))
        forward, backward = method.dynamics(sx, ty).loss, method.dynamics(sy, tx).loss
    torch.testing.assert_close(loss, (forward + backward) / 2)
    one_way = micro("method.midway.bidirectional=false").eval()
    with torch.no_grad():
        torch.testing.assert_close(one_way.dynamics_loss(motion)[0], forward)
    assert {"dyn_l1", "copy_l3", "gate_mean/l2/b2", "gate_var/l3/b2", "token_cos_l4"} <= logs.keys()


# Table 3 rows (midway.md §8.2) at micro scale: levels [9, 12] -> [3, 4] and [3, 6, 9, 12] -> [1, 2, 3, 4].
TABLE3 = {
    "2-LD": ["method.midway.backward=false", "method.midway.levels=[3,4]", "method.midway.refinement=false",
             "method.midway.gating=false"],
    "3-LD+Bw": ["method.midway.levels=[3,4]", "method.midway.refinement=false", "method.midway.gating=false"],
    "4-LD+Bw+ML": ["method.midway.refinement=false", "method.midway.gating=false"],
    "5-LD+Bw+ML+Ref": ["method.midway.gating=false"],
    "6-full": [],
    "7-no-backward": ["method.midway.backward=false"],
    "8-no-multilevel": ["method.midway.levels=[3,4]"],
    "9-no-refinement": ["method.midway.refinement=false"],
}  # fmt: skip
TABLE5 = {
    "half-dim": ["method.midway.motion_dim=16"],
    "double-dim": ["method.midway.motion_dim=64"],
    "midway-1": ["method.midway.midway_depth=1"],
    "midway-2": ["method.midway.midway_depth=2"],
    "forward-1": ["method.midway.forward_depth=1"],
    "forward-2": ["method.midway.forward_depth=2"],
}


@pytest.mark.parametrize("overrides", [*TABLE3.values(), *TABLE5.values()], ids=[*TABLE3, *TABLE5])
def test_ablation_builds_expected_modules_and_trains_one_step(overrides):
    method = micro(*overrides)
    cfg = method.cfg.method.midway
    dyn = method.dynamics
    n = len(cfg.levels) - 1
    assert len(dyn.midway_blocks) == len(dyn.forward_predictors) == n
    assert all(len(blocks) == cfg.midway_depth for blocks in dyn.midway_blocks)
    assert all(blocks[0].attn.qkv.in_features == cfg.motion_dim for blocks in dyn.midway_blocks)
    assert all(len(p.blocks) == cfg.forward_depth for p in dyn.forward_predictors)
    gates = cfg.forward_depth - 1 if cfg.gating else 0
    assert all(len(p.gates) == gates for p in dyn.forward_predictors)
    assert hasattr(dyn, "student_backward") == cfg.backward == hasattr(dyn, "teacher_backward")
    assert cfg.source_mode == ("prediction" if cfg.refinement in (None, True) else "features")
    out = method.training_step(random_batch(), 0)
    assert {f"dyn_l{lv}" for lv in cfg.levels[:-1]} <= out.keys()
    out["loss"].backward()
    silent = [k for k, p in dyn.named_parameters() if p.requires_grad and p.grad is None]
    assert not silent, f"trainable dynamics parameters without gradient: {silent}"


def test_base_model_row_has_no_dynamics():
    method = micro("method.midway.latent_dynamics=false")
    assert set(method.training_step(random_batch(), 0)) == {"loss", "dino"}
    assert "dynamics" not in method.module_sizes()


def test_register_tokens_are_dropped_before_the_dynamics():
    method = micro("model.num_register_tokens=2")
    taps = method.taps(method.encoder, torch.rand(1, 3, 32, 32))
    assert all(z.shape[1] == method.dynamics.num_tokens == 17 for z in taps)
    full = method.encoder(torch.rand(1, 3, 32, 32), taps=[1])[0]
    torch.testing.assert_close(cls_and_patches(full, 3), torch.cat([full[:, :1], full[:, 3:]], 1))
    assert torch.isfinite(method.training_step(random_batch(), 0)["loss"])


def test_bad_levels_fail_clearly():
    with pytest.raises(ConfigError, match="encoder depth"):
        micro("method.midway.levels=[2,8]")
    with pytest.raises(ConfigError, match="levels"):
        load_config("midway-micro", ["method.midway.levels=[4,2]"])


def test_cli_training_beats_the_copy_baseline(tmp_path):
    run = tmp_path / "run"
    overrides = [
        "train.steps=10", "optim.lr=2e-3", "data.synth_videos=4", "data.photometric=false",
        "data.motion_scale=[1.0,1.0]", "data.gap=[1,1]",
    ]  # fmt: skip
    result = CliRunner().invoke(app, ["pretrain", "midway-micro", *overrides, "--out", str(run)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 10 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    cfg = load_config(run / "config.yaml")
    init, trained = build_method(cfg), build_method(cfg)
    trained.load_state_dict(load_checkpoint(run / "checkpoints" / "last.pt")["method"])
    dataset = Midway.build_dataset(cfg)
    motion = torch.cat([dataset[i].motion for i in range(len(dataset))])
    ratios = {}
    with torch.no_grad():
        for name, method in (("init", init), ("trained", trained)):
            _, logs = method.dynamics_loss(motion)
            ratios[name] = [float(logs[f"dyn_l{lv}"] / logs[f"copy_l{lv}"]) for lv in (1, 2, 3)]
    # Untrained, the predictor is a near-copy (ratio ~1); a few steps already beat the copy baseline everywhere.
    assert all(r > 0.95 for r in ratios["init"])
    assert all(r < 0.9 for r in ratios["trained"]), ratios


def _fixed_batch() -> PairBatch:
    torch.manual_seed(123)
    return random_batch(b=4)


def _ddp_gradients() -> dict[str, torch.Tensor]:
    """Gradients after one DDP backward of this rank's half of the fixed global batch (run by ``run_ranks``)."""
    from torch.nn.parallel import DistributedDataParallel

    from motionrep.train import dist

    method = micro()
    batch = _fixed_batch()
    rows = slice(2 * dist.rank(), 2 * dist.rank() + 2)
    half = PairBatch(
        **{f.name: getattr(batch, f.name)[rows] for f in dataclasses.fields(PairBatch) if f.name != "skipped"}
    )
    ddp = DistributedDataParallel(method)  # keep a reference: the reducer lives as long as the wrapper
    ddp(half, 0)["loss"].backward()
    return {k: p.grad for k, p in method.named_parameters() if p.grad is not None}


def test_two_gloo_ranks_give_the_gradients_of_one():
    from distributed import run_ranks

    method = micro()
    method.training_step(_fixed_batch(), 0)["loss"].backward()
    expected = {k: p.grad for k, p in method.named_parameters() if p.grad is not None}
    ranks = run_ranks(_ddp_gradients, 2)
    assert ranks[0].keys() == expected.keys()
    assert any(k.startswith("dynamics.") for k in expected)
    for got in ranks:
        for key, grad in expected.items():
            torch.testing.assert_close(got[key], grad, atol=1e-6, rtol=1e-4)
