import torch

from motionrep.models.blocks import Attention, Block, CrossBlock, init_weights


def _reference_attention(attn: Attention, x):
    b, n, c = x.shape
    h = attn.heads
    q, k, v = attn.qkv(x).view(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    w = (q @ k.transpose(-1, -2) / (c // h) ** 0.5).softmax(-1)
    return attn.proj((w @ v).transpose(1, 2).reshape(b, n, c))


def test_attention_matches_explicit_softmax():
    attn = Attention(32, 4)
    x = torch.randn(2, 7, 32)
    assert torch.allclose(attn(x), _reference_attention(attn, x), atol=1e-5)


def test_parameter_formulas():
    d = 48
    plain = Block(d, 4, qkv_bias=False)
    assert sum(p.numel() for p in plain.parameters()) == 12 * d * d + 10 * d
    assert sum(p.numel() for p in Block(d, 4, qkv_bias=True).parameters()) == 12 * d * d + 13 * d
    assert sum(p.numel() for p in CrossBlock(d, 4).parameters()) == 16 * d * d + 15 * d


def test_gate_of_ones_is_plain_block_and_zero_gate_drops_residual():
    blk = Block(16, 2).eval()
    x = torch.randn(2, 5, 16)
    assert torch.allclose(blk(x, gate=torch.ones_like(x)), blk(x))
    h = blk.attn(blk.norm1(x))
    expected = h + blk.mlp(blk.norm2(h))
    assert torch.allclose(blk(x, gate=torch.zeros_like(x)), expected, atol=1e-6)


def test_crossblock_uses_context_and_drop_path_only_in_training():
    blk = CrossBlock(16, 2)
    blk.apply(init_weights)
    x, y1, y2 = torch.randn(1, 4, 16), torch.randn(1, 6, 16), torch.randn(1, 6, 16)
    assert not torch.allclose(blk(x, y1), blk(x, y2))
    dp = Block(16, 2, drop_path=0.5).eval()
    assert torch.equal(dp(x), dp(x))
