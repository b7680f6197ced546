"""Labelled evaluation datasets: tiny fixtures in each dataset's real on-disk layout."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from motionrep.data import flowio
from motionrep.data import labeled as L
from motionrep.data.catalog import DatasetLayoutError

RNG = np.random.default_rng(0)


def _img(path: Path, h: int = 20, w: int = 30, ext_format: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, format=ext_format)


def _lab(path: Path, labels: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pal = np.zeros((256, 3), np.uint8) if palette else None
    flowio.write_label_png(path, labels.astype(np.uint8), pal)


def _const(value: int, h: int = 20, w: int = 30) -> np.ndarray:
    return np.full((h, w), value, np.uint8)


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    for split in ("train", "val"):
        _img(tmp_path / f"leftImg8bit/{split}/aachen/aachen_000000_000019_leftImg8bit.png")
        lab = _const(26)  # car -> trainId 13
        lab[:, :10] = 7  # road -> 0
        lab[:, 20:] = 1  # ego vehicle -> ignored
        _lab(tmp_path / f"gtFine/{split}/aachen/aachen_000000_000019_gtFine_labelIds.png", lab)
    data = L.load_suite("cityscapes", tmp_path, size=16)
    assert data.seg_train.images.shape == (1, 3, 16, 16) and data.seg_train.images.dtype == torch.uint8
    assert data.seg_val.num_classes == 19
    assert set(torch.unique(data.seg_val.labels).tolist()) == {0, 13, 255}
    assert data.supports("seg_linear") and not data.supports("flow_probe")


def test_ade20k_shifts_ids_and_ignores_other(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for folder, name in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        _img(base / f"images/{folder}/{name}.jpg")
        lab = _const(0)
        lab[:, 15:] = 150
        _lab(base / f"annotations/{folder}/{name}.png", lab)
    seg = L.load_seg("ade20k", tmp_path, "val", size=8)
    assert seg.num_classes == 150 and set(torch.unique(seg.labels).tolist()) == {149, 255}


def test_voc_reads_palette_labels_and_split_files(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for split, ids in (("train", ["2007_000032"]), ("val", ["2007_000033", "2007_000039"])):
        (base / "ImageSets/Segmentation").mkdir(parents=True, exist_ok=True)
        (base / f"ImageSets/Segmentation/{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            _img(base / f"JPEGImages/{i}.jpg")
            lab = _const(15)
            lab[0] = 255
            _lab(base / f"SegmentationClass/{i}.png", lab, palette=True)
    seg = L.load_seg("voc", tmp_path, "val", size=8)
    assert len(seg) == 2 and seg.class_names[15] == "person"
    assert set(torch.unique(seg.labels).tolist()) == {15, 255}


def test_bdd100k_both_layouts(tmp_path):
    _img(tmp_path / "new/images/10k/val/abc.jpg")
    _lab(tmp_path / "new/labels/sem_seg/masks/val/abc.png", _const(13))
    _img(tmp_path / "old/seg/images/val/abc.jpg")
    _lab(tmp_path / "old/seg/labels/val/abc_train_id.png", _const(2))
    assert L.load_seg("bdd100k", tmp_path / "new", "val", size=8).labels.unique().tolist() == [13]
    assert L.load_seg("bdd100k", tmp_path / "old", "val", size=8).labels.unique().tolist() == [2]


def test_davis_clips_with_object_masks(tmp_path):
    (tmp_path / "ImageSets/2017").mkdir(parents=True)
    (tmp_path / "ImageSets/2017/val.txt").write_text("bike\n")
    for t in range(3):
        _img(tmp_path / f"JPEGImages/480p/bike/{t:05d}.jpg")
        lab = _const(0)
        lab[5:10, 5 + t : 12 + t] = 2
        _lab(tmp_path / f"Annotations/480p/bike/{t:05d}.png", lab, palette=True)
    data = L.load_suite("davis", tmp_path, size=16)
    clip = data.videos.clips[0]
    assert clip.frames.shape == (3, 3, 16, 16) and clip.masks.shape == (3, 16, 16) and clip.name == "bike"
    assert set(torch.unique(clip.masks).tolist()) == {0, 2}
    assert data.supports("propagation") and not data.supports("tracking")


def test_flying_chairs_split_and_flow_scaling(tmp_path):
    data = tmp_path / "FlyingChairs_release" / "data"
    flow = np.zeros((2, 20, 30), np.float32)
    flow[0], flow[1] = 3.0, -1.5
    for k in (1, 2, 3):
        _img(data / f"{k:05d}_img1.ppm", ext_format="PPM")
        _img(data / f"{k:05d}_img2.ppm", ext_format="PPM")
        flowio.write_flo(data / f"{k:05d}_flow.flo", flow)
    (tmp_path / "FlyingChairs_train_val.txt").write_text("1\n2\n1\n")
    suite = L.load_suite("flyingchairs", tmp_path, size=10)
    assert len(suite.flow_train) == 2 and len(suite.flow_val) == 1
    f = suite.flow_val.flow[0]
    assert torch.allclose(f[0], torch.tensor(3.0 * 10 / 30)) and torch.allclose(f[1], torch.tensor(-1.5 * 10 / 20))
    assert suite.flow_val.valid.all()


def test_sintel_scene_split_and_invalid_mask(tmp_path):
    for s, scene in enumerate(["alley_1", "bamboo_1", "cave_2", "market_2"]):
        for t in (1, 2, 3):
            _img(tmp_path / f"training/clean/{scene}/frame_{t:04d}.png")
        (tmp_path / f"training/flow/{scene}").mkdir(parents=True)
        for t in (1, 2):
            flowio.write_flo(tmp_path / f"training/flow/{scene}/frame_{t:04d}.flo", np.ones((2, 20, 30), np.float32))
        if s == 3:
            inv = np.zeros((20, 30), bool)
            inv[:10] = True
            (tmp_path / f"training/invalid/{scene}").mkdir(parents=True)
            flowio.write_mask_png(tmp_path / f"training/invalid/{scene}/frame_0001.png", inv)
    train, val = L.sintel(tmp_path, "train", size=10), L.sintel(tmp_path, "val", size=10)
    assert len(train) == 6 and len(val) == 2  # the 4th scene is validation
    assert not val.valid[0, :5].any() and val.valid[0, 5:].all() and val.valid[1].all()


def test_kitti_sparse_flow(tmp_path):
    for index in (0, 170):
        _img(tmp_path / f"training/image_2/{index:06d}_10.png")
        _img(tmp_path / f"training/image_2/{index:06d}_11.png")
        flow = np.full((2, 20, 30), 2.0, np.float32)
        valid = np.zeros((20, 30), bool)
        valid[::2] = True
        (tmp_path / "training/flow_occ").mkdir(parents=True, exist_ok=True)
        flowio.write_kitti_flow(tmp_path / f"training/flow_occ/{index:06d}_10.png", flow, valid)
    data = L.load_suite("kitti", tmp_path, size=20)
    assert len(data.flow_train) == 1 and len(data.flow_val) == 1
    assert 0.3 < data.flow_val.valid.float().mean() < 0.7
    u = data.flow_val.flow[0, 0][data.flow_val.valid[0]]
    assert torch.allclose(u, torch.tensor(2.0 * 20 / 30))


@pytest.mark.parametrize("name", L.SUITES)
def test_wrong_root_names_the_expected_layout(tmp_path, name):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="expected"):
        L.load_suite(name, tmp_path / "empty", size=8)


def test_missing_label_file_is_reported(tmp_path):
    _img(tmp_path / "leftImg8bit/train/x/x_0_0_leftImg8bit.png")
    with pytest.raises(DatasetLayoutError, match="label file"):
        L.load_seg("cityscapes", tmp_path, "train")


def test_label_values_past_the_lookup_table_are_reported(tmp_path):
    lut = np.full(256, 255, np.uint8)
    lut[1:151] = np.arange(150)
    assert L.map_labels(np.array([[0, 1, 150, 151]]), lut, tmp_path).tolist() == [[255, 0, 149, 255]]
    with pytest.raises(DatasetLayoutError, match="label id 300"):
        L.map_labels(np.array([[300]]), lut, tmp_path / "a.png")


def test_voc_trainaug_reads_the_augmented_labels(tmp_path):
    base = tmp_path / "VOC2012"
    (base / "ImageSets/Segmentation").mkdir(parents=True)
    (base / "ImageSets/Segmentation/trainaug.txt").write_text("2008_000001 extra-column\n")
    _img(base / "JPEGImages/2008_000001.jpg")
    _lab(base / "SegmentationClassAug/2008_000001.png", _const(7))
    listing = L.seg_listing("voc", tmp_path, "trainaug")
    assert listing.labels == [base / "SegmentationClassAug/2008_000001.png"] and len(listing.class_names) == 21
    assert L.load_seg("voc", tmp_path, "trainaug", size=8).labels.unique().tolist() == [7]
