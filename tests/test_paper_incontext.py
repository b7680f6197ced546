"""Streamed in-context retrieval (paper protocol): equal to the in-memory suite protocol, per-image memory budget,
2 gloo ranks = 1 rank."""

import torch
import torch.nn.functional as F

from distributed import run_ranks
from motionrep.data.labeled import SegSet
from motionrep.eval import segmentation as S
from motionrep.eval.features import ViTFeatures
from motionrep.eval.paper.incontext_fractions import (
    FractionConfig,
    incontext_run,
    stream_memory,
)
from motionrep.eval.paper.streams import SegSetItems, resize_pair
from motionrep.models.vit import build_vit

NAMES = ["a", "b", "c"]


def _data(n: int, seed: int, side: int = 24) -> SegSetItems:
    """Noisy images of blocky 3-class label maps at ``side``² (resized to 32² by the protocol), some pixels and
    the top-left block of image 0 ignored."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 3, (n, 3, 3), generator=g)
    labels = blocks.repeat_interleave(side // 3, 1).repeat_interleave(side // 3, 2)
    images = (labels[:, None] * 80 + torch.randint(0, 40, (n, 3, side, side), generator=g)).to(torch.uint8)
    labels[:, 0, :] = 255
    labels[0, : side // 2, : side // 2] = 255
    return SegSetItems(SegSet(images, labels, NAMES))


def _extractor() -> ViTFeatures:
    torch.manual_seed(0)
    return ViTFeatures(build_vit("vit-micro")).eval()


def _resized(items: SegSetItems, size: int = 32) -> SegSet:
    pairs = [resize_pair(*items[i], (size, size)) for i in range(len(items))]
    return SegSet(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), NAMES)


def test_streaming_equals_in_memory_when_every_row_fits():
    train, val = _data(6, 0), _data(4, 1)
    extractor = _extractor()
    for matching in ("identity", "hungarian"):
        cfg = FractionConfig((1,), (0,), size=32, memory_size=6 * 16, k=5, matching=matching, batch_size=8)
        streamed = incontext_run(extractor, train, val, range(6), cfg, seed=0)
        memory = S.incontext(extractor, _resized(train), _resized(val), 6 * 16, k=5, matching=matching)
        assert streamed["miou"] == memory.metrics["miou"]
        assert streamed["memory_rows"] == memory.metrics["memory"] < 6 * 16  # ignored patches dropped
        assert streamed["confusion"].sum() == (_resized(val).labels != 255).sum()


def test_memory_keeps_the_per_image_budget_of_rare_class_patches():
    train, extractor = _data(5, 2), _extractor()
    cfg = FractionConfig((1,), (0,), size=32, memory_size=5 * 7 + 3, k=5, batch_size=2)
    indices = [0, 2, 3, 4]  # a subset: the budget is memory_size // 4 = 9 rows per image
    memory, soft = stream_memory(extractor, train, indices, cfg, seed=7)
    resized = _resized(train)
    expected_f, expected_soft, counts = [], [], []
    for i in indices:  # independent per-image selection: lowest class-frequency score x U(0, 1) by seed and index
        with torch.no_grad():
            f = F.normalize(extractor(resized.images[i : i + 1].float() / 255).flatten(2)[0].T, dim=-1)
        hist = S.patch_label_histograms(resized.labels[i : i + 1], 3, 8).flatten(2)[0].T  # (16 patches, 3)
        freq = hist.sum(0) / hist.sum()
        noise = torch.rand(16, generator=torch.Generator().manual_seed(7 * 1_000_003 + i))
        score = ((hist > 0).float() * freq).sum(1) * noise
        score[hist.sum(1) == 0] = float("inf")
        keep = [j for j in score.argsort()[:9].tolist() if hist[j].sum() > 0]
        expected_f.append(f[keep])
        expected_soft.append(hist[keep])
        counts.append(len(keep))
    assert counts == [min(9, int((h.sum(1) > 0).sum())) for h in expected_soft] and sum(counts) == len(memory)
    assert torch.allclose(memory, torch.cat(expected_f), atol=1e-5)
    assert torch.allclose(soft, torch.cat(expected_soft))


def _two_rank_run() -> dict:
    cfg = FractionConfig((1,), (0,), size=32, memory_size=4 * 10, k=5, batch_size=2)
    train, val = _data(4, 3), _data(4, 4)
    memory, soft = stream_memory(_extractor(), train, range(4), cfg, seed=5)
    return {**incontext_run(_extractor(), train, val, range(4), cfg, seed=5), "memory": memory, "soft": soft}


def test_two_ranks_equal_one_rank():
    one = _two_rank_run()
    two = run_ranks(_two_rank_run, 2)
    for result in two:
        assert torch.equal(result["memory"], one["memory"]) and torch.equal(result["soft"], one["soft"])
        assert torch.equal(result["confusion"], one["confusion"]) and result["miou"] == one["miou"]
    assert one["memory_rows"] == len(one["memory"]) <= 40
