"""Feature extraction and the recognition protocols (linear probe, overclustering, in-context retrieval)."""

import numpy as np
import pytest
import torch
from tests.distributed import run_ranks

from motionrep.data.labeled import SegSet
from motionrep.eval import segmentation as S
from motionrep.eval.features import CachedFeatures, PixelFeatures, ViTFeatures, extract, random_init
from motionrep.models.vit import build_vit

COLOURS = torch.tensor([[250, 10, 10], [10, 250, 10], [10, 10, 250], [240, 240, 20]], dtype=torch.uint8)


def colour_coded(n: int, seed: int, size: int = 32, patch: int = 8) -> SegSet:
    """Images whose patch colour encodes a patch-constant class: raw pixels identify the class exactly."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, 4, (n, size // patch, size // patch), generator=g)
    labels = grid.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    images = COLOURS[labels].permute(0, 3, 1, 2).contiguous()
    return SegSet(images, labels, ["a", "b", "c", "d"])


def test_vit_features_strip_prefix_and_reshape():
    vit = build_vit("vit-micro", num_register_tokens=2).eval()
    x = torch.rand(2, 3, 32, 48)
    f = ViTFeatures(vit, tap=3)(x)
    assert f.shape == (2, 64, 4, 6) and ViTFeatures(vit).stride == 8
    tokens = vit(x, taps=[3])[0][:, 3:]  # CLS + 2 registers dropped
    assert torch.allclose(f[:, :, 1, 2], tokens[:, 1 * 6 + 2])


def test_pixel_features_are_patch_means():
    x = torch.rand(1, 3, 16, 16)
    f = PixelFeatures(8)(x)
    assert torch.allclose(f[0, :, 1, 0], x[0, :, 8:16, 0:8].mean((1, 2)))


@pytest.mark.parametrize("preset", ["vit-micro", "vit-s14"])  # vit-s14: LayerScale and mask token (DINOv2)
def test_random_init_keeps_architecture_and_replaces_every_weight(preset):
    vit = build_vit(preset)
    with torch.no_grad():
        for p in vit.parameters():
            p.fill_(0.5)  # "trained" weights no initialisation produces
    fresh = random_init(vit, seed=3)
    assert fresh.state_dict().keys() == vit.state_dict().keys()
    kept = [k for k, p in fresh.named_parameters() if (p == 0.5).any()]
    assert not kept, f"random_init kept trained values in {kept}"
    again = random_init(vit, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), again.parameters(), strict=True))  # seeded


def test_extract_batches_uint8_like_one_batch():
    vit = build_vit("vit-micro").eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    a = extract(ViTFeatures(vit), images, batch_size=2)
    b = ViTFeatures(vit)(images.float() / 255)
    assert torch.allclose(a, b, atol=1e-5)


def _rank_extract(images):
    torch.manual_seed(0)
    vit = build_vit("vit-micro")
    return extract(ViTFeatures(vit), images, batch_size=2).numpy()  # numpy: no shared-memory handles


def test_extract_two_ranks_equal_one():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    single = _rank_extract(images)
    r0, r1 = run_ranks(_rank_extract, 2, images)
    assert np.allclose(r0, single, atol=1e-5) and np.allclose(r1, single, atol=1e-5)


def test_kmeans_recovers_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(3).repeat_interleave(50)
    x = centres[truth] + 0.3 * torch.randn(150, 2, generator=g)
    c, labels, inertia = S.kmeans(x, 3, restarts=2)
    # Each found cluster is exactly one true blob.
    for k in range(3):
        assert len(torch.unique(truth[labels == k])) == 1
    assert inertia == pytest.approx(((x - c[labels]) ** 2).sum().item(), rel=1e-4)


def test_pca_matches_numpy_svd():
    x = torch.randn(200, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64)
    p = S.pca(x, 2)
    xc = x.numpy() - x.numpy().mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    ref = xc @ vt[:2].T
    assert np.allclose(np.abs(p.numpy()), np.abs(ref), atol=1e-8)


def test_patch_label_histograms_against_loop():
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[0, :2, :2] = 255
    labels[1, 4:, 4:] = 255  # a fully ignored patch
    h = S.patch_label_histograms(labels, 3, 4)
    for n in range(2):
        for i in range(2):
            for j in range(2):
                block = labels[n, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
                kept = block[block != 255]
                expected = torch.bincount(kept, minlength=3).float() / max(len(kept), 1)
                assert torch.allclose(h[n, :, i, j], expected)


def test_knn_soft_labels_against_full_sort():
    g = torch.Generator().manual_seed(1)
    q, mem = torch.randn(7, 5, generator=g), torch.nn.functional.normalize(torch.randn(40, 5, generator=g), dim=-1)
    lab = torch.rand(40, 3, generator=g)
    out = S.knn_soft_labels(q, mem, lab, k=4, temperature=0.1)
    blocked = S.knn_soft_labels(q, mem, lab, k=4, temperature=0.1, budget=256 * 6)  # memory blocks of 6 rows
    sims = torch.nn.functional.normalize(q, dim=-1) @ mem.T
    for i in range(7):
        order = torch.argsort(sims[i], descending=True)[:4]
        w = torch.softmax(sims[i, order] / 0.1, 0)
        assert torch.allclose(out[i], (w[:, None] * lab[order]).sum(0), atol=1e-6)
        assert torch.allclose(blocked[i], (w[:, None] * lab[order]).sum(0), atol=1e-6)
    with pytest.raises(ValueError, match="memory is empty"):
        S.knn_soft_labels(q, mem[:0], lab[:0])


def test_memory_sampling_keeps_rare_classes():
    feats = torch.randn(2, 4, 4, 4)
    soft = torch.zeros(2, 2, 4, 4)
    soft[:, 0] = 1.0
    soft[0, :, 2, 3] = torch.tensor([0.0, 1.0])  # the one rare-class patch
    mem, lab = S.build_memory(feats, soft, memory_size=4)
    assert len(mem) == 4 and lab[:, 1].sum() == 1.0
    assert torch.allclose(mem.norm(dim=1), torch.ones(4))


def _bilinear_oracle(val: SegSet) -> dict:
    """Scores of exact patch-level class scores, bilinearly upsampled: the best any patch-level head can do."""
    from motionrep.eval.metrics import confusion_matrix, segmentation_scores

    grid = val.labels[:, ::8, ::8]
    onehot = torch.nn.functional.one_hot(grid, 4).permute(0, 3, 1, 2).float()
    up = torch.nn.functional.interpolate(onehot, size=(32, 32), mode="bilinear", align_corners=False)
    return segmentation_scores(confusion_matrix(val.labels, up.argmax(1), 4))


def test_protocols_on_colour_coded_classes():
    train, val = colour_coded(16, 0), colour_coded(6, 1)
    oracle = _bilinear_oracle(val)
    assert 85 < oracle["miou"] < 100  # corners of patches blur into their neighbours
    pixels = PixelFeatures(8)
    lin = S.seg_linear(pixels, train, val, steps=150, batch_size=8, lr=0.05)
    assert lin.metrics["miou"] > oracle["miou"] - 3 and lin.metrics["acc"] > oracle["acc"] - 2
    assert lin.predictions.shape == (4, 32, 32)
    oc = S.overcluster(pixels, val, ks=(8,), pca_dim=None)  # nearest upsampling: exact
    assert oc.metrics["miou"] == pytest.approx(100.0) and oc.metrics["miou_k8"] == pytest.approx(100.0)
    hb = S.incontext(pixels, train, val, memory_size=10_000, k=5, matching="identity")
    assert hb.metrics["miou"] == pytest.approx(oracle["miou"])


def test_supervised_trainer_updates_the_encoder():
    vit = build_vit("vit-micro")
    before = vit.blocks[0].attn.qkv.weight.clone()
    S.train_supervised(vit, colour_coded(8, 0), steps=3, batch_size=4)
    assert not vit.training and not torch.equal(before, vit.blocks[0].attn.qkv.weight)


def test_cached_features_compute_each_tensor_once():
    calls = []

    class Counting(PixelFeatures):
        def forward(self, images):
            calls.append(len(images))
            return super().forward(images)

    cached = CachedFeatures(Counting(8))
    a, b = torch.rand(3, 3, 16, 16), torch.rand(2, 3, 16, 16)
    fa = extract(cached, a)
    assert extract(cached, a) is fa and calls == [3]
    assert torch.allclose(extract(cached, b), PixelFeatures(8)(b)) and calls == [3, 2]


def test_downsample_labels_takes_the_top_left_pixel():
    labels = torch.arange(16).view(1, 4, 4)
    assert torch.equal(S.downsample_labels(labels, 2), labels[:, ::2, ::2])
    assert S.downsample_labels(labels, 1) is labels


def test_figure_indices_spread_over_the_set():
    from motionrep.eval.features import figure_indices

    assert figure_indices(64).tolist() == [0, 21, 42, 63]
    assert figure_indices(2).tolist() == [0, 1] and figure_indices(0).numel() == 0
