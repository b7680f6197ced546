"""Flow datasets in their on-disk layouts, the CroCo mixture, the bounded Laplacian loss and flow finetuning."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from distributed import run_ranks
from motionrep.data.catalog import DatasetLayoutError
from motionrep.data.flow_datasets import (
    chairs_things,
    croco_mix,
    flow_dataset,
    flying_chairs,
    flying_things,
    kitti2015,
    read_pfm,
    sintel,
    tartanair,
    write_pfm,
)
from motionrep.data.flowio import write_flo, write_kitti_flow, write_mask_png
from motionrep.eval.paper.flow_finetune import (
    FlowCrops,
    FlowFinetuneConfig,
    FlowModel,
    baseline_dynamics,
    bounded_scale,
    flow_finetune,
    laplacian_sums,
    train_flow,
)
from motionrep.models.vit import build_vit

H, W = 16, 24


def _img(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), value, np.uint8)).save(path)


def _flow(value: float) -> np.ndarray:
    f = np.zeros((2, H, W), np.float32)
    f[0], f[1] = value, -value
    return f


def _write_all(root):
    chairs = root / "FlyingChairs_release" / "data"
    for i in (1, 2, 3):
        _img(chairs / f"{i:05d}_img1.ppm", 10 * i)
        _img(chairs / f"{i:05d}_img2.ppm", 10 * i + 1)
        write_flo(chairs / f"{i:05d}_flow.flo", _flow(i))
    (root / "FlyingChairs_release" / "FlyingChairs_train_val.txt").write_text("1\n2\n1\n")
    sin = root / "MPI-Sintel-complete" / "training"
    for p in ("clean", "final"):
        for t in (1, 2, 3):
            _img(sin / p / "alley_1" / f"frame_{t:04d}.png", t)
    for t in (1, 2):
        (sin / "flow" / "alley_1").mkdir(parents=True, exist_ok=True)
        write_flo(sin / "flow" / "alley_1" / f"frame_{t:04d}.flo", _flow(t))
    invalid = np.zeros((H, W), bool)
    invalid[:, :3] = True
    (sin / "invalid" / "alley_1").mkdir(parents=True)
    write_mask_png(sin / "invalid" / "alley_1" / "frame_0002.png", invalid)
    kit = root / "KITTI" / "training"
    _img(kit / "image_2" / "000000_10.png", 1)
    _img(kit / "image_2" / "000000_11.png", 2)
    (kit / "flow_occ").mkdir(parents=True)
    valid = np.ones((H, W), bool)
    valid[0] = False
    write_kitti_flow(kit / "flow_occ" / "000000_10.png", _flow(2.5), valid)
    things = root / "FlyingThings3D"
    for p in ("cleanpass", "finalpass"):
        for cam in ("left", "right"):
            for t in (6, 7):
                _img(things / f"frames_{p}" / "TRAIN" / "A" / "0000" / cam / f"{t:04d}.png", t)
    for cam, c in (("left", "L"), ("right", "R")):
        fut = things / "optical_flow" / "TRAIN" / "A" / "0000" / "into_future" / cam
        past = things / "optical_flow" / "TRAIN" / "A" / "0000" / "into_past" / cam
        fut.mkdir(parents=True)
        past.mkdir(parents=True)
        three = np.zeros((H, W, 3), np.float32)
        three[..., 0], three[..., 1] = 1.5, -0.5
        write_pfm(fut / f"OpticalFlowIntoFuture_0006_{c}.pfm", three)
        write_pfm(past / f"OpticalFlowIntoPast_0007_{c}.pfm", -three)
    tart = root / "TartanAir" / "abandonedfactory" / "Easy" / "P000"
    for t in (0, 1, 2):
        _img(tart / "image_left" / f"{t:06d}_left.png", t)
    (tart / "flow").mkdir(parents=True)
    for t in (0, 1):
        np.save(tart / "flow" / f"{t:06d}_{t + 1:06d}_flow.npy", _flow(0.5 * (t + 1)).transpose(1, 2, 0))
        np.save(tart / "flow" / f"{t:06d}_{t + 1:06d}_mask.npy", np.zeros((H, W), np.uint8))


def test_pfm_round_trip(tmp_path):
    img = np.random.default_rng(0).normal(size=(5, 7, 3)).astype(np.float32)
    write_pfm(tmp_path / "a.pfm", img)
    np.testing.assert_array_equal(read_pfm(tmp_path / "a.pfm"), img)
    write_pfm(tmp_path / "b.pfm", img[..., 0])
    np.testing.assert_array_equal(read_pfm(tmp_path / "b.pfm"), img[..., 0])


def test_layouts_and_items(tmp_path):
    _write_all(tmp_path)
    chairs = flying_chairs(tmp_path)
    assert len(chairs) == 2 and len(flying_chairs(tmp_path, "val")) == 1
    i1, i2, flow, valid = chairs[1]
    assert i1.shape == (3, H, W) and i1[0, 0, 0] == 30 and i2[0, 0, 0] == 31
    assert flow[0, 0, 0] == 3 and flow[1, 0, 0] == -3 and valid.all()
    assert len(sintel(tmp_path, passes=("clean", "final"))) == 4
    clean = sintel(tmp_path, scenes=["alley_1"])
    assert len(clean) == 2 and clean[0][3].all() and clean[1][3].sum() == H * (W - 3) and not clean[1][3][:, :3].any()
    with pytest.raises(DatasetLayoutError, match="no flow pairs"):
        sintel(tmp_path, scenes=["market_2"])
    _, _, kflow, kvalid = kitti2015(tmp_path)[0]
    assert kflow[0, 5, 5] == pytest.approx(2.5, abs=1 / 64) and not kvalid[0].any() and kvalid[1:].all()
    things = flying_things(tmp_path)
    assert len(things) == 8  # 2 passes x 2 cameras x (forward, backward)
    a, b, tflow, _ = things[0]
    assert a[0, 0, 0] == 6 and b[0, 0, 0] == 7 and tflow[0, 0, 0] == 1.5 and tflow[1, 0, 0] == -0.5
    a, b, tflow, _ = things[1]
    assert a[0, 0, 0] == 7 and b[0, 0, 0] == 6 and tflow[0, 0, 0] == -1.5
    tart = tartanair(tmp_path)
    assert len(tart) == 2 and tart[1][2][0, 0, 0] == 1.0
    with pytest.raises(DatasetLayoutError, match="chairs"):
        flying_chairs(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown flow dataset"):
        flow_dataset("middlebury", tmp_path)


def test_croco_mixture_ratios(tmp_path):
    _write_all(tmp_path)
    mix = croco_mix(tmp_path)
    sizes = [len(d) for d in mix.datasets]
    assert sizes == [2] * 40 + [2] * 40 + [8] * 4 + [2] * 4 + [2]
    assert len(mix) == 40 * 2 + 40 * 2 + 4 * 8 + 4 * 2 + 2
    assert len(chairs_things(tmp_path)) == 2 + 8


def test_bounded_laplacian_by_hand():
    pred, gt = torch.zeros(1, 2, 1, 2), torch.tensor([[[[1.0, 2.0]], [[-1.0, 0.0]]]])
    conf, valid = torch.tensor([[[[0.0, 100.0]]]]), torch.tensor([[[True, False]]])
    total, count = laplacian_sums(pred, conf, gt, valid)
    s = 0.25 + 3.75 * 0.5  # sigmoid(0) = 1/2
    assert count == 1 and total.item() == pytest.approx(2.0 / s + math.log(s))
    assert bounded_scale(torch.tensor([-100.0, 100.0])).tolist() == pytest.approx([0.25, 4.0])


def test_flow_crops_pad_as_invalid(tmp_path):
    _write_all(tmp_path)
    i1, i2, flow, valid = FlowCrops(flying_chairs(tmp_path), (24, 24))[(0, 3)]
    assert i1.shape == (3, 24, 24) and flow.shape == (2, 24, 24)
    assert valid.sum() == H * W and not valid[H:].any()


def test_gradients_reach_encoder_dynamics_and_head():
    enc = build_vit("vit-micro")
    model = FlowModel(enc, baseline_dynamics(enc), width=16)
    flow, conf = model(torch.rand(1, 3, 16, 24), torch.rand(1, 3, 16, 24))
    assert flow.shape == (1, 2, 16, 24) and conf.shape == (1, 1, 16, 24)
    (flow.square().mean() + conf.mean()).backward()
    for module in (enc.patch_embed, model.dynamics.midway_blocks, model.dynamics.forward_predictors, model.head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_shared_encoder_gets_gradients_through_the_second_frame():
    enc = build_vit("vit-micro")
    model = FlowModel(enc, baseline_dynamics(enc), width=16)
    image2 = torch.rand(1, 3, 16, 24, requires_grad=True)
    flow, _ = model(torch.rand(1, 3, 16, 24), image2)
    flow.square().mean().backward()
    assert image2.grad is not None and image2.grad.abs().sum() > 0


def _finetune(root: str, frozen: bool = False):
    torch.manual_seed(0)
    enc = build_vit("vit-micro")
    model = FlowModel(enc, baseline_dynamics(enc), width=16)
    cfg = FlowFinetuneConfig(steps=2, batch_size=2, crop=(16, 16), warmup=1, width=16, workers=0, frozen=frozen)
    return train_flow(model, flying_things(root), cfg, torch.device("cpu")), model.head.out[-1].weight.sum().item()


def test_finetune_smoke_and_frozen(tmp_path):
    _write_all(tmp_path)
    enc = build_vit("vit-micro")
    model = FlowModel(enc, baseline_dynamics(enc), width=16)
    cfg = FlowFinetuneConfig(steps=2, batch_size=2, crop=(16, 16), warmup=1, width=16, workers=0, frozen=True)
    before = enc.patch_embed.proj.weight.clone()
    out = flow_finetune(model, flying_chairs(tmp_path), {"kitti": kitti2015(tmp_path)}, cfg, torch.device("cpu"))
    assert set(out) == {"final_loss", "kitti.epe", "kitti.px1", "kitti.px3", "kitti.px5"}
    assert torch.equal(before, enc.patch_embed.proj.weight) and out["kitti.epe"] >= 0


def test_training_two_ranks_equal_one_rank(tmp_path):
    _write_all(tmp_path)
    one = _finetune(str(tmp_path))
    two = run_ranks(_finetune, 2, str(tmp_path))
    assert two[0] == two[1]
    assert two[0][0] == pytest.approx(one[0], rel=1e-4) and two[0][1] == pytest.approx(one[1], rel=1e-4, abs=1e-6)
