import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from motionrep.models.vit import IMAGENET_MEAN, IMAGENET_STD, VIT_PRESETS, build_vit, resample_pos_embed


def _micro(**kw):
    return build_vit("vit-micro", **kw).eval()


def _manual_embed(model, x, grid):
    """Reference embedding: normalise, conv, add CLS + position rows; registers after CLS without position."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    patches = F.conv2d((x - mean) / std, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=8)
    patches = patches.flatten(2).transpose(1, 2)
    pos = model.pos_embed_for(grid)
    cls = model.cls_token.expand(x.shape[0], -1, -1) + pos[:, :1]
    return cls, patches + pos[:, 1:]


def _run_blocks(model, tokens, taps):
    out = []
    for i, blk in enumerate(model.blocks, start=1):
        tokens = blk(tokens)
        if i in taps:
            out.append(model.norm(tokens))
    return out


def test_taps_are_normed_block_outputs_and_default_is_final():
    model = _micro()
    x = torch.rand(2, 3, 32, 32)
    outs = model(x, taps=[1, 3, 4])
    assert [tuple(o.shape) for o in outs] == [(2, 17, 64)] * 3
    cls, patches = _manual_embed(model, x, (4, 4))
    ref = _run_blocks(model, torch.cat([cls, patches], 1), {1, 3, 4})
    for o, r in zip(outs, ref, strict=True):
        assert torch.allclose(o, r, atol=1e-5)
    assert torch.allclose(model(x), ref[-1], atol=1e-5)
    assert model.patch_tokens(outs[0]).shape == (2, 16, 64)


def test_blocks_after_last_tap_do_not_run_and_bad_taps_fail():
    model = _micro()
    calls = []
    model.blocks[3].register_forward_hook(lambda *a: calls.append(1))
    model(torch.rand(1, 3, 32, 32), taps=[2])
    assert not calls
    for taps in ([], [0], [5]):
        with pytest.raises(ValueError, match="taps"):
            model(torch.rand(1, 3, 32, 32), taps=taps)


def test_register_tokens_follow_cls_without_position_embedding():
    model = _micro(num_register_tokens=2)
    assert model.num_prefix_tokens == 3
    x = torch.rand(2, 3, 32, 32)
    tokens = model.embed(x)
    cls, patches = _manual_embed(model, x, (4, 4))
    assert torch.allclose(tokens[:, :1], cls)
    assert torch.equal(tokens[:, 1:3], model.register_tokens.expand(2, -1, -1))
    assert torch.allclose(tokens[:, 3:], patches, atol=1e-6)
    out = model(x)
    assert out.shape == (2, 19, 64) and model.patch_tokens(out).shape == (2, 16, 64)


def test_position_embedding_is_identity_at_native_grid_and_bicubic_elsewhere():
    model = _micro()
    assert model.pos_embed_for((4, 4)) is model.pos_embed
    pos = model.pos_embed.detach()
    for grid in [(2, 6), (7, 5)]:
        out = model.pos_embed_for(grid).detach()
        assert out.shape == (1, 1 + grid[0] * grid[1], 64)
        assert torch.equal(out[:, 0], pos[:, 0])
        src = pos[0, 1:].reshape(4, 4, 64).numpy()
        ref = cv2.resize(src, (grid[1], grid[0]), interpolation=cv2.INTER_CUBIC)  # independent bicubic (a = -0.75)
        np.testing.assert_allclose(out[0, 1:].reshape(*grid, 64).numpy(), ref, atol=1e-5)
    x = torch.rand(1, 3, 16, 48)
    cls, patches = _manual_embed(model, x, (2, 6))
    assert torch.allclose(model(x, taps=[4])[0], _run_blocks(model, torch.cat([cls, patches], 1), {4})[0], atol=1e-5)


def test_resample_antialias_option_and_row_check():
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0  # highest grid frequency
    pos = torch.cat([torch.full((1, 1, 1), 7.0), checker.reshape(1, 64, 1)], dim=1)
    smooth = resample_pos_embed(pos, (8, 8), (3, 3), antialias=True)
    sharp = resample_pos_embed(pos, (8, 8), (3, 3))
    assert smooth[0, 0, 0] == 7.0 and smooth.shape == sharp.shape == (1, 10, 1)
    assert smooth[0, 1:].abs().max() < 0.5 * sharp[0, 1:].abs().max()  # the filter removes the checkerboard
    with pytest.raises(ValueError, match="rows"):
        resample_pos_embed(torch.zeros(1, 10, 4), (4, 4), (2, 2))


def test_keep_equals_running_on_gathered_tokens():
    model = _micro(num_register_tokens=1)
    x = torch.rand(2, 3, 32, 32)
    keep = torch.stack([torch.randperm(16)[:10] for _ in range(2)])
    out = model(x, taps=[2, 4], keep=keep)
    assert [tuple(o.shape) for o in out] == [(2, 12, 64)] * 2
    cls, patches = _manual_embed(model, x, (4, 4))
    kept = torch.stack([patches[b, keep[b]] for b in range(2)])
    regs = model.register_tokens.expand(2, -1, -1)
    ref = _run_blocks(model, torch.cat([cls, regs, kept], 1), {2, 4})
    for o, r in zip(out, ref, strict=True):
        assert torch.allclose(o, r, atol=1e-5)
    with pytest.raises(ValueError, match="keep"):
        model(x, keep=keep.int())


def test_mask_token_replaces_patch_embeddings():
    model = build_vit("vit-micro", layer_scale=1e-5, mask_token=True).eval()
    x = torch.rand(1, 3, 32, 32)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    assert torch.equal(model.embed(x, mask=mask), model.embed(x))
    mask[0, [3, 7]] = True
    with torch.no_grad():
        model.mask_token.normal_()
    tokens = model.embed(x, mask=mask)
    pos = model.pos_embed[0, 1:]
    assert torch.allclose(tokens[0, 1:][mask[0]], model.mask_token + pos[mask[0]])
    assert torch.allclose(tokens[0, 1:][~mask[0]], model.embed(x)[0, 1:][~mask[0]])
    with pytest.raises(ValueError, match="mask_token"):
        _micro()(x, mask=mask)


def test_parameter_counts():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(build_vit("vit-s16")) == 21_665_664
    assert count(build_vit("vit-synth-tiny")) == 1_223_040  # midway.md §17.1: 1.22 M
    d, n = 384, 1 + 37 * 37
    dinov2_s = 3 * 14 * 14 * d + d + n * d + d + d + 12 * (12 * d * d + 13 * d + 2 * d) + 2 * d
    assert count(build_vit("vit-s14")) == dinov2_s
    assert count(build_vit("vit-s14", num_register_tokens=4)) == dinov2_s + 4 * d


def test_state_dict_keys_follow_dino_and_dinov2():
    block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    expected = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
    }
    expected |= {f"blocks.{i}.{m}.{p}" for i in range(4) for m in block for p in ("weight", "bias")}
    assert set(_micro().state_dict()) == expected
    v2 = build_vit("vit-micro", layer_scale=1e-5, mask_token=True, num_register_tokens=4).state_dict()
    extra = {"register_tokens", "mask_token"} | {f"blocks.{i}.ls{k}.gamma" for i in range(4) for k in (1, 2)}
    assert set(v2) == expected | extra
    assert v2["register_tokens"].shape == (1, 4, 64) and v2["mask_token"].shape == (1, 64)
    assert torch.all(v2["blocks.0.ls1.gamma"] == 1e-5)
    assert VIT_PRESETS["vit-s14"]["img_size"] // VIT_PRESETS["vit-s14"]["patch_size"] == 37


def test_initialisation():
    model = build_vit("vit-synth-tiny")
    assert 0.018 < model.pos_embed.std() < 0.022 and 0.01 < model.cls_token.std() < 0.03  # trunc-normal std 0.02
    qkv = model.blocks[0].attn.qkv
    assert 0.015 < qkv.weight.std() < 0.025 and torch.all(qkv.bias == 0)
    assert torch.all(model.norm.weight == 1) and torch.all(model.norm.bias == 0)


def test_drop_path_linear_over_depth_and_only_in_training():
    model = build_vit("vit-micro", drop_path_rate=0.3)
    assert [b.drop_path.p for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    x = torch.rand(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))
    plain = build_vit("vit-micro").train()
    assert torch.equal(plain(x), plain(x))


def test_uses_scaled_dot_product_attention(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    _micro()(torch.rand(2, 3, 32, 32))
    assert calls == [torch.Size([2, 2, 17, 32])] * 4


def test_normalisation_option_and_buffers():
    model = _micro()
    raw = build_vit("vit-micro", normalize=False).eval()
    raw.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 32, 32)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(raw((x - mean) / std), model(x), atol=1e-6)
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()


def test_user_errors():
    with pytest.raises(ValueError, match="vit-s16"):
        build_vit("vit-huge")
    with pytest.raises(ValueError, match="drop_path_rate"):
        build_vit("vit-micro", droppath=0.1)
    model = _micro()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model(torch.rand(1, 1, 32, 32))
