"""Segmentation datasets in their on-disk layouts, training crops, readout training and 2 ranks = 1 rank."""

import numpy as np
import pytest
import torch
from PIL import Image

from distributed import run_ranks
from motionrep.data.catalog import DatasetLayoutError
from motionrep.data.flowio import write_label_png
from motionrep.data.labeled import SegSet
from motionrep.eval.paper.features import MultiLevelFeatures
from motionrep.eval.paper.seg_readout import ReadoutConfig, TrainCrops, rescale, seg_readout
from motionrep.eval.paper.streams import GlobalBatchSampler, SegSetItems, seg_files
from motionrep.models.vit import build_vit


def _colour_coded(n: int, h: int = 24, w: int = 32, classes: int = 3, seed: int = 0):
    """Images whose left/right halves are flat colours of their classes (class c -> grey level 60c + 20)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, h, w, dtype=torch.long)
    cls = torch.randint(classes, (n, 2), generator=g)
    labels[:, :, : w // 2] = cls[:, :1, None]
    labels[:, :, w // 2 :] = cls[:, 1:, None]
    images = (labels * 60 + 20).to(torch.uint8)[:, None].expand(-1, 3, -1, -1).contiguous()
    return images, labels


def _write_voc(root, n=4):
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    images, labels = _colour_coded(n)
    labels[:, 0, 0] = 255  # a boundary pixel
    ids = [f"2007_{i:06d}" for i in range(n)]
    for i, name in enumerate(ids):
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(base / "JPEGImages" / f"{name}.jpg", quality=100)
        write_label_png(base / "SegmentationClass" / f"{name}.png", labels[i].numpy().astype(np.uint8))
    for split, part in (("train", ids[:2]), ("val", ids[2:])):
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(part) + "\n")
    return labels


def test_voc_layout(tmp_path):
    labels = _write_voc(tmp_path)
    train, val = seg_files("voc", tmp_path, "train"), seg_files("voc", tmp_path, "val")
    assert (len(train), len(val), train.num_classes) == (2, 2, 21)
    image, label = val[1]
    assert image.shape == (3, 24, 32) and image.dtype == torch.uint8
    assert torch.equal(label, labels[3]) and label[0, 0] == 255
    with pytest.raises(DatasetLayoutError, match="split file"):
        seg_files("voc", tmp_path, "trainaug")
    with pytest.raises(ValueError, match="unknown segmentation dataset"):
        seg_files("coco", tmp_path, "val")


def test_ade20k_and_cityscapes_label_maps(tmp_path):
    ade = tmp_path / "ADEChallengeData2016"
    (ade / "images" / "validation").mkdir(parents=True)
    (ade / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(ade / "images" / "validation" / "a.jpg")
    write_label_png(ade / "annotations" / "validation" / "a.png", np.array([[0, 1, 150, 7, 2]] * 4, np.uint8))
    _, label = seg_files("ade20k", tmp_path, "validation")[0]
    assert label[0].tolist() == [255, 0, 149, 6, 1]
    city = tmp_path / "cs"
    (city / "leftImg8bit" / "val" / "ulm").mkdir(parents=True)
    (city / "gtFine" / "val" / "ulm").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(city / "leftImg8bit" / "val" / "ulm" / "u_1_leftImg8bit.png")
    ids = np.array([[7, 26, 33, 0]] * 2, np.uint8)  # road, car, bicycle, unlabeled
    write_label_png(city / "gtFine" / "val" / "ulm" / "u_1_gtFine_labelIds.png", ids)
    ds = seg_files("cityscapes", city, "val")
    assert ds.num_classes == 19 and ds[0][1][0].tolist() == [0, 13, 18, 255]


def test_bdd100k_layout(tmp_path):
    (tmp_path / "images" / "10k" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "sem_seg" / "masks" / "val").mkdir(parents=True)
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "images" / "10k" / "val" / "b1.jpg")
    write_label_png(tmp_path / "labels" / "sem_seg" / "masks" / "val" / "b1.png", np.full((3, 4), 13, np.uint8))
    ds = seg_files("bdd100k", tmp_path, "val")
    assert ds.num_classes == 19 and (ds[0][1] == 13).all()
    with pytest.raises(DatasetLayoutError, match="bdd100k"):
        seg_files("bdd100k", tmp_path, "train")


def test_train_crops_are_seeded_and_padded_with_ignore():
    images, labels = _colour_coded(1, h=10, w=12)
    crops = TrainCrops(SegSetItems(SegSet(images, labels, ["a", "b", "c"])), crop=16, short_side=10, scale_range=(1, 1))
    a, b = crops[(0, 5)], crops[(0, 5)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 16, 16) and a[1].shape == (16, 16)
    assert (a[1] == 255).sum() == 16 * 16 - 10 * 12
    img, lab = rescale(images[0], labels[0], 20)
    assert img.shape == (3, 20, 24) and lab.shape == (20, 24)


def test_global_sampler_shares_one_global_batch():
    full = list(GlobalBatchSampler(10, 4, 3, seed=1))
    assert len(full) == 3 and all(len(b) == 4 for b in full)
    assert full == list(GlobalBatchSampler(10, 4, 3, seed=1))


def _readout(mode: str):
    torch.manual_seed(0)
    images, labels = _colour_coded(6)
    data = SegSetItems(SegSet(images, labels, ["a", "b", "c"]))
    enc = build_vit("vit-micro")
    taps = [4] if mode == "linear" else [1, 2, 3, 4]
    cfg = ReadoutConfig(mode, steps=3, batch_size=4, lr=1e-2, warmup=1, crop=16, stride=8, short_side=24,
                        width=16, workers=0)  # fmt: skip
    return seg_readout(MultiLevelFeatures(enc, taps), data, data, cfg, torch.device("cpu"))


def test_readouts_train_and_score():
    for mode in ("linear", "upernet-finetune"):
        out = _readout(mode)
        assert 0 <= out["miou"] <= 100 and 0 <= out["acc"] <= 100 and np.isfinite(out["final_loss"])


def test_two_ranks_equal_one_rank():
    one = _readout("upernet")
    two = run_ranks(_readout, 2, "upernet")
    assert two[0] == two[1]
    for key in one:
        assert two[0][key] == pytest.approx(one[key], rel=1e-4, abs=1e-4)
