"""Unsupervised video segmentation (F / C / D), the DAVIS layout, and Leopart-style unsupervised segmentation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from distributed import run_ranks
from motionrep.data.flowio import write_label_png
from motionrep.data.labeled import Clip, SegSet
from motionrep.eval.paper.streams import ClipItems, SegSetItems, apply_pca, davis_clips, fit_pca, ytvos_clips
from motionrep.eval.paper.unsup_seg import UnsupSegConfig, unsup_seg
from motionrep.eval.paper.video_clustering import VideoClusterConfig, cluster_and_match, video_clustering
from motionrep.models.vit import build_vit


class OneHotColours(nn.Module):
    """A dense 'extractor' whose features are the one-hot class of each pixel (grey level 60c + 20), stride 1."""

    stride, dim = 1, 4

    def forward(self, images):
        cls = ((images[:, 0] * 255 - 20) / 60).round().clamp(0, 3).long()
        return F.one_hot(cls, 4).permute(0, 3, 1, 2).float()


def _clips(n=3, t=3, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    clips = []
    for _ in range(n):
        masks = torch.zeros(t, size, size, dtype=torch.long)
        for f in range(t):
            x = int(torch.randint(2, size - 2, (1,), generator=g))
            masks[f, :, x:] = 1 + int(torch.randint(0, 3, (1,), generator=g))
        frames = (masks * 60 + 20).to(torch.uint8)[:, None].expand(-1, 3, -1, -1).contiguous()
        clips.append(Clip(frames, masks))
    return ClipItems(clips, num_classes=4)


def test_fit_pca_standardises_and_projects():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 2, generator=g) @ torch.randn(2, 5, generator=g) * 4 + 0.3 * torch.randn(500, 5, generator=g)
    x = x.double() * torch.tensor([1.0, 2, 3, 4, 5], dtype=torch.float64) + 3
    z = apply_pca(x, fit_pca(x, 2))
    top = np.sort(np.linalg.eigvalsh(np.corrcoef(x.numpy().T)))[::-1][:2].copy()
    torch.testing.assert_close(z.var(0), torch.from_numpy(top), rtol=1e-6, atol=1e-8)  # variances = eigenvalues
    torch.testing.assert_close(z.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-9, rtol=0)
    assert torch.equal(apply_pca(x, fit_pca(x, None)), (x - x.mean(0)) / x.std(0))


def test_perfect_features_score_100_in_every_protocol():
    cfg = VideoClusterConfig(size=12, res=12, eval_res=12, pca_dim=None, iters=10, restarts=3, workers=0)
    out = video_clustering(OneHotColours(), _clips(), cfg)
    assert out == pytest.approx({"miou_C": 100.0, "miou_D": 100.0, "miou_F": 100.0})


def test_cluster_and_match_uses_the_labels_present():
    labels = torch.tensor([0, 0, 2, 2, 2, 255])
    feats = torch.tensor([[0.0], [0.1], [5.0], [5.1], [4.9], [9.0]])
    cfg = VideoClusterConfig(pca_dim=None, iters=5, restarts=2)
    matched = cluster_and_match(feats, labels, 3, 255, cfg, seed=0)  # K = 2 classes present
    assert matched.shape == (3, 4) and matched.trace() == 5
    over = cluster_and_match(feats, labels, 3, 255, VideoClusterConfig(pca_dim=None, overcluster=2), seed=0)
    assert over.trace() == 5  # many-to-one merges the extra clusters


class RandomProjection(nn.Module):
    stride, dim = 1, 4

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 4, 1).requires_grad_(False)

    def forward(self, images):
        return self.proj(images)


def _d_protocol():
    cfg = VideoClusterConfig(("D",), size=12, eval_res=6, pca_dim=2, iters=5, restarts=1, sample_per_frame=10,
                             workers=0)  # fmt: skip
    torch.manual_seed(0)
    return video_clustering(RandomProjection(), _clips(n=3), cfg)


def test_davis_layout(tmp_path):
    root = tmp_path / "DAVIS"
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("bear\n")
    (root / "JPEGImages" / "480p" / "bear").mkdir(parents=True)
    (root / "Annotations" / "480p" / "bear").mkdir(parents=True)
    for t in range(5):
        Image.fromarray(np.full((8, 10, 3), 40 * t, np.uint8)).save(
            root / "JPEGImages" / "480p" / "bear" / f"{t:05d}.jpg"
        )
        mask = np.zeros((8, 10), np.uint8)
        mask[:, :5] = 2
        mask[0, 0] = 255 if t == 4 else 2
        write_label_png(root / "Annotations" / "480p" / "bear" / f"{t:05d}.png", mask)
    clips = davis_clips(root, "val", max_frames=3)
    frames, masks = clips[0]
    assert len(clips) == 1 and clips.num_classes == 3  # ids 0 and 2; 255 is the ignore label
    assert frames.shape == (3, 3, 8, 10) and masks.shape == (3, 8, 10)
    assert masks[2, 0, 0] == 255 and masks[0, 0, 0] == 2  # frames 0, 2, 4 kept


def test_ytvos_layout_keeps_annotated_frames(tmp_path):
    base = tmp_path / "train"
    for t in range(4):
        Image.fromarray(np.full((6, 8, 3), t, np.uint8)).save(_mkdir(base / "JPEGImages" / "v1") / f"{5 * t:05d}.jpg")
    for t in (0, 2):
        mask = np.full((6, 8), t // 2 + 1, np.uint8)
        write_label_png(_mkdir(base / "Annotations" / "v1") / f"{5 * t:05d}.png", mask)
    clips = ytvos_clips(tmp_path, "train")
    frames, masks = clips[0]
    assert frames.shape == (2, 3, 6, 8) and frames[1, 0, 0, 0] == 2 and clips.num_classes == 3
    assert masks[0, 0, 0] == 1 and masks[1, 0, 0] == 2  # an object first seen later keeps its id


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def _unsup():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (4, 2, 2), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    images = (labels * 60 + 20).to(torch.uint8)[:, None].expand(-1, 3, -1, -1).contiguous()
    data = SegSetItems(SegSet(images, labels, ["bg", "a", "b"]))
    cfg = UnsupSegConfig(size=16, k=6, pca_dim=8, sample_per_image=8, iters=5, restarts=1, workers=0)
    return unsup_seg(build_vit("vit-micro"), data, cfg)


def _both():
    return _d_protocol(), _unsup()


def test_d_protocol_and_unsup_seg_two_ranks_equal_one_rank():
    d_one, unsup_one = _both()
    assert 0 <= unsup_one["miou"] <= 100 and unsup_one["k"] == 6 and unsup_one["fg_clusters"] == 2  # 6 - round(3.9)
    two = run_ranks(_both, 2)
    assert two[0] == two[1]
    assert two[0][0]["miou_D"] == pytest.approx(d_one["miou_D"])
    assert two[0][1]["miou"] == pytest.approx(unsup_one["miou"])
