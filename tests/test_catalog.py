"""Catalogs of the training layouts, each on a tiny fixture written in the dataset's real on-disk layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from motionrep.data.catalog import DatasetLayoutError, build_catalog, synthetic
from motionrep.data.sources import FrameFolderSource, PyAVSource, write_video

FRAMES = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)


def video(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, FRAMES)


def frames(folder: Path, n: int = 3, ext: str = ".jpg", pattern: str = "{:05d}") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(FRAMES[k]).save(folder / (pattern.format(k) + ext))
    return folder


def names(catalog) -> list[str]:
    return [e.name for e in catalog]


def test_bdd100k(tmp_path):
    for name in ["b1c66a42-6f7d68ca", "b1c81faa-3df17267"]:
        video(tmp_path / "bdd100k" / "videos" / "train" / f"{name}.mov")
    video(tmp_path / "bdd100k" / "videos" / "val" / "b1d0091f-75824d0d.mov")
    catalog = build_catalog("bdd100k", tmp_path / "bdd100k", split="train")
    assert names(catalog) == ["b1c66a42-6f7d68ca", "b1c81faa-3df17267"]
    with catalog[0].open() as src:
        assert isinstance(src, PyAVSource) and src.num_frames == 4
    assert names(build_catalog("bdd100k", tmp_path / "bdd100k" / "videos", split="val")) == ["b1d0091f-75824d0d"]


def test_walking_tours_videos_and_frames(tmp_path):
    video(tmp_path / "wt" / "Walking_Tour_Venice.mp4")
    video(tmp_path / "wt" / "Walking_Tour_Amsterdam.mp4")
    frames(tmp_path / "wt" / "venice_frames", ext=".png", pattern="frame_{:06d}")
    catalog = build_catalog("walking_tours", tmp_path / "wt")
    assert names(catalog) == ["Walking_Tour_Amsterdam", "Walking_Tour_Venice", "venice_frames"]
    venice = build_catalog("walking_tours", tmp_path / "wt", videos=["venice"])
    assert names(venice) == ["Walking_Tour_Venice", "venice_frames"]
    with venice[1].open() as src:
        assert isinstance(src, FrameFolderSource) and src.num_frames == 3


def test_youtube_vos(tmp_path):
    for vid in ["003234408d", "0043f083b5"]:
        frames(tmp_path / "ytvos" / "train" / "JPEGImages" / vid)
    (tmp_path / "ytvos" / "train" / "Annotations").mkdir()
    (tmp_path / "ytvos" / "train" / "JPEGImages" / "empty").mkdir()  # no frames: skipped with a warning
    catalog = build_catalog("youtube_vos", tmp_path / "ytvos", split="train")
    assert names(catalog) == ["003234408d", "0043f083b5"]
    assert [p.name for p in catalog[0].files] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert names(build_catalog("youtube_vos", tmp_path / "ytvos" / "train")) == names(catalog)


def test_davis2017(tmp_path):
    root = tmp_path / "DAVIS"
    for seq in ["bear", "bike-packing", "blackswan"]:
        frames(root / "JPEGImages" / "480p" / seq)
        (root / "Annotations" / "480p" / seq).mkdir(parents=True)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("bear\nbike-packing\nmissing-seq\n")
    (root / "ImageSets" / "2017" / "val.txt").write_text("blackswan\n")
    catalog = build_catalog("davis2017", root, split="train")
    assert names(catalog) == ["bear", "bike-packing"]
    assert catalog[0].annotations == root / "Annotations" / "480p" / "bear"
    assert names(build_catalog("davis2017", root, split="val")) == ["blackswan"]
    with pytest.raises(DatasetLayoutError, match="test-dev.txt"):
        build_catalog("davis2017", root, split="test-dev")


def test_kinetics_class_folders(tmp_path):
    video(tmp_path / "k400" / "train" / "abseiling" / "0347ZoDXyP0_000095_000105.mp4")
    video(tmp_path / "k400" / "train" / "air drumming" / "03V2idM7_KY_000003_000013.mp4")
    frames(tmp_path / "k400" / "train" / "air drumming" / "-VtLx-mcPds_000012_000022", pattern="img_{:05d}")
    catalog = build_catalog("kinetics", tmp_path / "k400", split="train")
    assert [(e.name, e.label, e.kind) for e in catalog] == [
        ("0347ZoDXyP0_000095_000105", "abseiling", "video"),
        ("03V2idM7_KY_000003_000013", "air drumming", "video"),
        ("-VtLx-mcPds_000012_000022", "air drumming", "frames"),
    ]


def test_any_video_folder_is_recursive(tmp_path):
    video(tmp_path / "a.mp4")
    video(tmp_path / "sub" / "b.mkv")
    (tmp_path / "notes.txt").write_text("not a video")
    assert names(build_catalog("video_folder", tmp_path)) == ["a", "sub/b"]


def test_frame_folders(tmp_path):
    frames(tmp_path / "frames" / "val_00001", ext=".png")
    frames(tmp_path / "frames" / "val_00000", ext=".png")
    catalog = build_catalog("frame_folders", tmp_path / "frames", fps=10)
    assert names(catalog) == ["val_00000", "val_00001"] and catalog[0].fps == 10


@pytest.mark.parametrize(
    "layout", ["bdd100k", "walking_tours", "youtube_vos", "kinetics", "video_folder", "frame_folders"]
)
def test_empty_dataset_names_path_and_layout(tmp_path, layout):
    (tmp_path / "sub").mkdir()
    with pytest.raises(DatasetLayoutError, match=str(tmp_path)) as err:
        build_catalog(layout, tmp_path)
    assert "expected" in str(err.value)


def test_missing_root_and_unknown_layout(tmp_path):
    with pytest.raises(DatasetLayoutError, match="not a directory"):
        build_catalog("bdd100k", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown dataset layout"):
        build_catalog("imagenet", tmp_path)


class _World:
    def __len__(self):
        return 3

    def __getitem__(self, i):
        raise AssertionError("catalogs must not render videos")


def test_synthetic_catalog_is_lazy():
    catalog = synthetic(_World())
    assert len(catalog) == 3 and [e.index for e in catalog] == [0, 1, 2] and catalog[0].kind == "synth"
    with pytest.raises(DatasetLayoutError):
        synthetic([])
