"""The MoSiC method: frame-0 efficiency, assignment modes, masking, loss weights, freezing, EMA, optimiser groups,
initialisation from checkpoints, config validation."""

import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import motionrep.methods.mosic as mosic
from distributed import run_ranks
from motionrep.cli import app
from motionrep.config import Config, ConfigError, ModelConfig, load_config, to_yaml
from motionrep.methods.mosic import MoSiC, MoSiCConfig
from motionrep.models.vit import build_vit, resample_pos_embed
from motionrep.ops.ema import ema_update
from motionrep.ops.points import grid_points
from motionrep.train.checkpoint import load_checkpoint
from motionrep.train.logging import read_metrics

P, S, SIZE = 8, 4, 32  # vit-micro: patch 8, 4 x 4 tokens on 32 x 32 frames


def make(model: ModelConfig | None = None, **method) -> MoSiC:
    method = {"grid_size": S, "num_prototypes": 8, "head_dims": [64, 32], **method}
    return MoSiC(Config(model=model or ModelConfig(name="vit-micro"), method=MoSiCConfig(**method)))


def clip(b: int = 2, t: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random frames; one track per token centre moving one token to the right per frame (clamped at the edge)."""
    frames = torch.rand(b, t, 3, SIZE, SIZE)
    start = grid_points(S, (SIZE, SIZE))
    tracks = start.expand(b, t, -1, -1).clone()
    tracks[..., 0] = (tracks[..., 0] + P * torch.arange(t).view(1, t, 1)).clamp(max=SIZE - 1)
    visible = torch.ones(b, t, S * S, dtype=torch.bool)
    visible[:, 1:, ::5] = False
    return frames, tracks, visible, torch.ones_like(visible)


def grads(model: MoSiC) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("ema_teacher", [True, False])
def test_frame0_only_student_equals_full_computation(ema_teacher):
    model = make(ema_teacher=ema_teacher)
    data = clip()
    torch.manual_seed(1)
    fast = model.compute_losses(*data)
    fast["loss"].backward()
    g_fast = grads(model)
    model.zero_grad()
    model.student_frames = lambda t: t  # force the student through every frame
    torch.manual_seed(1)  # same masked tokens
    full = model.compute_losses(*data)
    full["loss"].backward()
    g_full = grads(model)
    assert torch.allclose(fast["loss"], full["loss"], atol=1e-6)
    assert g_fast.keys() == g_full.keys() and len(g_fast) > 0
    for name in g_fast:
        assert torch.allclose(g_fast[name], g_full[name], atol=1e-6), name


def test_propagate_frame0_gives_identical_targets_along_each_track(monkeypatch):
    seen = {}
    real_ot, real_ce = mosic.ot_assignments, mosic.cluster_cross_entropy

    def ot(scores, *args, **kw):
        seen["ot_shape"] = scores.shape
        return real_ot(scores, *args, **kw)

    def ce(student, targets, *args, **kw):
        seen["student_shape"], seen["targets"] = student.shape, targets
        return real_ce(student, targets, *args, **kw)

    monkeypatch.setattr(mosic, "ot_assignments", ot)
    monkeypatch.setattr(mosic, "cluster_cross_entropy", ce)
    model = make(assignment="propagate_frame0")
    b, t = 2, 3
    model.compute_losses(*clip(b, t))
    assert seen["ot_shape"] == (b, 1, S * S, 8)  # Sinkhorn over frame-0 columns only
    assert seen["student_shape"] == (b, t, S * S, 8)  # the student predicts at every frame
    hard = seen["targets"].argmax(-1).expand(b, t, S * S)
    assert (hard == hard[:, :1]).all()


def test_per_frame_joint_targets_cover_all_frames(monkeypatch):
    seen = {}
    real_ot = mosic.ot_assignments
    monkeypatch.setattr(mosic, "ot_assignments", lambda s, *a, **k: seen.setdefault("q", real_ot(s, *a, **k)))
    make().compute_losses(*clip(2, 3))
    assert seen["q"].shape == (2, 3, S * S, 8)
    assert not (seen["q"].argmax(-1) == seen["q"][:, :1].argmax(-1)).all()  # per-frame targets differ somewhere


def test_masking_shares_kept_tokens_across_frames_and_spares_the_teacher():
    model = make(mask_ratio=0.4, symmetric=True)  # symmetric: the student encodes every frame
    calls = {"student": [], "teacher": []}
    for branch, encoder in (("student", model.encoder), ("teacher", model.teacher_encoder)):
        embed = encoder.embed

        def record(x, keep=None, mask=None, _embed=embed, _calls=calls[branch]):
            _calls.append(keep)
            return _embed(x, keep, mask)

        encoder.embed = record
    b, t = 2, 3
    model.compute_losses(*clip(b, t))
    (keep,) = calls["student"]
    assert keep.shape == (b * t, S * S - int(S * S * 0.4))  # ⌊16 · 0.4⌋ = 6 tokens dropped per clip
    per_clip = keep.view(b, t, -1)
    assert (per_clip == per_clip[:, :1]).all()
    assert calls["teacher"] == [None]


@pytest.mark.parametrize("assignment", ["per_frame_joint", "propagate_frame0"])
def test_weights_are_zero_where_the_predicting_student_token_was_dropped(monkeypatch, assignment):
    b, t = 2, 3
    keep = torch.tensor([[0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], list(range(15))])  # drop 1 / drop 15
    monkeypatch.setattr(mosic, "random_keep", lambda *a, **k: keep)
    seen = []
    real = mosic.weighted_loss
    monkeypatch.setattr(mosic, "weighted_loss", lambda ce, w, norm: seen.append(w) or real(ce, w, norm))
    model = make(mask_ratio=0.1, assignment=assignment)
    frames, tracks, visible, in_crop = clip(b, t)
    in_crop[:, 2, 3] = False
    model.compute_losses(frames, tracks, visible, in_crop)
    (w,) = seen
    # token of each track at each frame, by hand: row = n // S, column = min(n % S + t, S - 1)
    n = torch.arange(S * S)
    col = (n % S + torch.arange(t)[:, None]).clamp(max=S - 1)
    token = (n // S) * S + col  # (T, N)
    pred_token = token[:1].expand(t, -1) if assignment == "per_frame_joint" else token
    dropped = torch.stack([pred_token == 1, pred_token == 15])  # (B, T, N)
    expected = visible & in_crop & ~dropped
    assert torch.equal(w.expand(b, t, S * S), expected.float())


def _owner(name: str) -> str:
    """``encoder.blocks.<i>`` for a block parameter, else the top-level module name."""
    parts = name.split(".")
    return ".".join(parts[:3]) if name.startswith("encoder.blocks.") else parts[0]


@pytest.mark.parametrize("depth", [12, 24])
def test_exactly_the_last_two_blocks_head_and_prototypes_get_gradients(depth):
    model = make(ModelConfig(name="vit-micro", depth=depth, embed_dim=32, num_heads=2), mask_ratio=0.0)
    graph = {}

    def record(block, args, out):
        graph[block] = out.requires_grad

    for i in (depth - 3, depth - 2):
        model.encoder.blocks[i].register_forward_hook(record)
    model.compute_losses(*clip(1, 2))["loss"].backward()
    blocks = model.encoder.blocks
    assert graph == {blocks[depth - 3]: False, blocks[depth - 2]: True}  # the frozen part builds no autograd graph
    with_grad = {_owner(n) for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {f"encoder.blocks.{depth - 2}", f"encoder.blocks.{depth - 1}", "head", "prototypes"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if p.grad is not None}


def test_replicated_block_indices_and_all():
    micro24 = ModelConfig(name="vit-micro", depth=24, embed_dim=32, num_heads=2)
    model = make(micro24, trainable_block_indices=[10, 11])
    model.compute_losses(*clip(1, 2))["loss"].backward()
    blocks = {int(n.split(".")[2]) for n, p in model.encoder.named_parameters(prefix="encoder") if p.grad is not None}
    assert blocks == {10, 11}  # gradients cross the frozen blocks 12-23
    everything = make(trainable_blocks="all")
    assert all(p.requires_grad for p in everything.encoder.parameters())
    assert not any(p.requires_grad for p in everything.teacher_encoder.parameters())


def test_vit_s_trainable_backbone_and_head_sizes():
    model = make(ModelConfig(name="vit-s14"), head_dims=[1024, 1024, 512, 256], num_prototypes=100)
    trainable = sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
    assert trainable == 3_550_464  # blocks 10 and 11 of ViT-S/14 with LayerScale: 3.55 M
    assert sum(p.numel() for p in model.head.parameters()) == 2_099_968  # ≈ 2.10 M for d = 384


def test_ema_moves_the_teacher_by_one_percent_of_the_gap():
    model = make()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    before = {
        f"{i}.{n}": (s.detach().clone(), t.detach().clone())
        for i, (sm, tm) in enumerate(model.ema_pairs())
        for (n, s), (_, t) in zip(sm.named_parameters(), tm.named_parameters(), strict=True)
    }
    for student, teacher in model.ema_pairs():
        ema_update(student, teacher, 0.99)
    after = {f"{i}.{n}": t for i, (_, tm) in enumerate(model.ema_pairs()) for n, t in tm.named_parameters()}
    moved = 0
    for key, (s, t) in before.items():
        assert torch.allclose(after[key] - t, 0.01 * (s - t), atol=1e-6), key
        moved += int(not torch.equal(s, t))
    assert moved > 0 and len(model.ema_pairs()) == 3


def test_param_groups_backbone_at_a_tenth_and_decay_rules():
    model = make()
    groups = model.param_groups()
    ids = {id(p): g for g in groups for p in g["params"]}
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    qkv = model.encoder.blocks[-1].attn.qkv
    assert ids[id(qkv.weight)]["lr_scale"] == 0.1 and ids[id(qkv.weight)]["apply_wd"]
    assert ids[id(qkv.bias)]["lr_scale"] == 0.1 and not ids[id(qkv.bias)]["apply_wd"]
    assert ids[id(model.prototypes.weight)] == next(g for g in groups if g["lr_scale"] == 1.0 and g["apply_wd"])
    assert not ids[id(model.head.mlp[0].bias)]["apply_wd"]


def test_without_ema_teacher_student_scores_and_double_epsilon(monkeypatch):
    seen = {}
    real = mosic.ot_assignments

    def ot(scores, epsilon, *a, **k):
        seen.update(shape=scores.shape, epsilon=epsilon, grad=scores.requires_grad)
        return real(scores, epsilon, *a, **k)

    monkeypatch.setattr(mosic, "ot_assignments", ot)
    model = make(ema_teacher=False)
    assert model.ema_pairs() == [] and not hasattr(model, "teacher_encoder")
    out = model.compute_losses(*clip(2, 3))
    assert seen == {"shape": (2, 3, S * S, 8), "epsilon": 0.1, "grad": False}
    out["loss"].backward()


def test_loss_statistics_and_loss_norm_switch():
    data = clip(2, 3)
    torch.manual_seed(3)
    visible = make(mask_ratio=0.0).compute_losses(*data)
    torch.manual_seed(3)
    every = make(mask_ratio=0.0, loss_norm="all_entries").compute_losses(*data)
    frac = data[2].float().mean()
    assert torch.isclose(visible["visible_frac"], frac) and torch.isclose(visible["weight_frac"], frac)
    assert torch.allclose(every["loss"], visible["loss"] * frac, atol=1e-6)
    assert 0.0 < float(visible["cluster_entropy"]) <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"assignment": "per_frame"}, "assignment"),
        ({"symmetric": True, "assignment": "propagate_frame0"}, "symmetric"),
        ({"sampling": mosic.SamplingConfig(student="nearest")}, "sampling.student"),
        ({"trainable_blocks": 0}, "trainable_blocks"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"loss_norm": "mean"}, "loss_norm"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoSiCConfig(**kwargs)


def test_bad_input_shapes_are_reported():
    frames, tracks, visible, in_crop = clip(2, 3)
    with pytest.raises(ValueError, match="tracks"):
        make().compute_losses(frames, tracks[:, :2], visible, in_crop)
    with pytest.raises(ValueError, match="visible"):
        make().compute_losses(frames, tracks, visible[..., :3], in_crop)


def test_init_from_an_official_backbone_resamples_the_position_grid(tmp_path):
    source = build_vit("vit-micro", img_size=64)  # 8 x 8 position grid, resampled to the encoder's 4 x 4
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    model = make(init=str(tmp_path / "backbone.pth"))
    assert torch.equal(model.encoder.blocks[2].mlp.fc1.weight, source.blocks[2].mlp.fc1.weight)
    resampled = resample_pos_embed(source.pos_embed.detach(), (8, 8), (S, S), antialias=True)
    assert torch.allclose(model.encoder.pos_embed, resampled)
    assert torch.equal(model.teacher_encoder.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)


def test_init_from_a_motionrep_run_takes_the_teacher_encoder_by_default(tmp_path):
    cfg = load_config("mosic-micro")
    trained = MoSiC(cfg)
    with torch.no_grad():
        trained.encoder.blocks[3].mlp.fc2.weight.add_(1.0)  # student and teacher differ
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"step": 1, "method": trained.state_dict(), "config": to_yaml(cfg)}, run / "checkpoints" / "last.pt")
    state = trained.state_dict()
    key = "blocks.3.mlp.fc2.weight"
    from_teacher = make(init=str(run))  # what the evaluation suite scores by default
    assert torch.equal(from_teacher.encoder.state_dict()[key], state[f"teacher_encoder.{key}"])
    from_student = make(init=str(run / "checkpoints" / "last.pt"), init_weights="student")
    assert torch.equal(from_student.encoder.state_dict()[key], state[f"encoder.{key}"])


def test_init_problems_are_config_errors_naming_the_keys(tmp_path):
    state = build_vit("vit-micro").state_dict()
    del state["norm.weight"]
    state["blocks.1.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=r"method\.init.*norm\.weight") as err:
        make(init=str(tmp_path / "bad.pth"))
    assert "blocks.1.extra" in str(err.value)
    with pytest.raises(ConfigError, match="method.init"):
        make(init=str(tmp_path / "missing.pth"))


def test_presets_load_and_the_clip_dataset_feeds_the_method():
    for name in ("mosic-micro", "mosic-synth-tiny", "mosic-ytvos-dinov2s"):
        assert load_config(name).method.name == "mosic"
    paper = load_config("mosic-ytvos-dinov2s")
    assert (paper.method.grid_size, paper.method.num_prototypes, paper.train.batch_size) == (16, 100, 64)
    assert paper.method.head_dims == [1024, 1024, 512, 256] and paper.ema.momentum == 0.99
    cfg = load_config("mosic-micro")
    batch = MoSiC.build_dataset(cfg)[0]
    assert batch.frames.shape == (1, 4, 3, SIZE, SIZE) and batch.tracks.shape == (1, 4, S * S, 2)
    assert batch.visible[:, 0].all()
    out = MoSiC(cfg).training_step(batch, 0)
    assert out["loss"].isfinite() and out["loss"].requires_grad


def test_cli_training_reduces_the_loss_and_resumes_exactly(tmp_path):
    run = tmp_path / "run"
    args = ["pretrain", "mosic-micro", "--out", str(run), "train.steps=12", "train.ckpt_every=11"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    losses = [r["loss"] for r in read_metrics(run)]
    assert len(losses) == 12 and sum(losses[6:]) < 0.95 * sum(losses[:6])  # second half below the first
    # resume from the step-11 checkpoint: the last step is reproduced bit for bit
    ckpts = run / "checkpoints"
    reference = load_checkpoint(ckpts / "last.pt")
    shutil.copyfile(ckpts / "step_00000011.pt", ckpts / "last.pt")
    assert CliRunner().invoke(app, [*args, "--resume"]).exit_code == 0
    resumed = load_checkpoint(ckpts / "last.pt")
    assert resumed["step"] == 12 and resumed["method"].keys() == reference["method"].keys()
    assert all(torch.equal(resumed["method"][k], reference["method"][k]) for k in reference["method"])
    assert {"teacher_head.mlp.0.weight", "prototypes.weight", "teacher_prototypes.weight"} <= reference["method"].keys()


def test_cli_reports_missing_initial_weights(tmp_path):
    result = CliRunner().invoke(app, ["pretrain", "mosic-micro", "--out", str(tmp_path / "r"), "method.init=nope.pth"])
    assert result.exit_code != 0 and "nope.pth" in result.output


def _rank_gradients(frames, tracks, visible, in_crop) -> tuple[float, dict[str, np.ndarray]]:
    """Loss statistics and gradients of this rank's shard (numpy: nothing shared with the exiting process)."""
    from motionrep.train import dist

    torch.manual_seed(0)
    model = make(mask_ratio=0.0)
    part = dist.shard(frames.shape[0])
    out = model.compute_losses(frames[part], tracks[part], visible[part], in_crop[part])
    out["loss"].backward()
    return float(out["cluster_entropy"]), {name: g.numpy() for name, g in grads(model).items()}


def test_two_gloo_ranks_give_the_gradients_of_one_rank():
    data = clip(4, 3)
    data[2][:2, 1:] = False  # unequal visible counts on the two ranks: the loss normalisation must be global
    entropy, full = _rank_gradients(*data)
    ranks = run_ranks(_rank_gradients, 2, *data)
    assert all(abs(e - entropy) < 1e-6 for e, _ in ranks)
    assert ranks[0][1].keys() == full.keys()
    for name, g in full.items():  # DDP averages the ranks' gradients
        np.testing.assert_allclose((ranks[0][1][name] + ranks[1][1][name]) / 2, g, atol=1e-5, err_msg=name)
