"""Flow and label files: round trips, hand-built byte layouts, and clear errors on malformed files."""

import struct

import cv2
import numpy as np
import pytest
from PIL import Image

from motionrep.data import flowio


def _flow(h: int = 5, w: int = 7) -> np.ndarray:
    return np.random.default_rng(1).uniform(-20, 20, (2, h, w)).astype(np.float32)


def test_flo_matches_hand_built_bytes(tmp_path):
    flow = _flow(2, 3)
    path = tmp_path / "a.flo"
    flowio.write_flo(path, flow)
    values = [float(flow[c, i, j]) for i in range(2) for j in range(3) for c in range(2)]  # row-major, (u, v) pairs
    expected = b"PIEH" + struct.pack("<ii", 3, 2) + struct.pack("<12f", *values)
    assert path.read_bytes() == expected
    assert struct.unpack("<f", b"PIEH")[0] == 202021.25  # the documented magic number
    got = flowio.read_flo(path)
    assert got.shape == (2, 2, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, flow)


def test_flo_errors(tmp_path):
    bad = tmp_path / "bad.flo"
    bad.write_bytes(b"NOPE" + struct.pack("<ii", 1, 1) + b"\0" * 8)
    with pytest.raises(ValueError, match="magic"):
        flowio.read_flo(bad)
    bad.write_bytes(b"PIEH" + struct.pack("<ii", 4, 4) + b"\0" * 8)
    with pytest.raises(ValueError, match="needs 140 bytes"):
        flowio.read_flo(bad)
    bad.write_bytes(b"PIEH" + struct.pack("<ii", -1, 4))
    with pytest.raises(ValueError, match="invalid"):
        flowio.read_flo(bad)
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        flowio.write_flo(tmp_path / "x.flo", np.zeros((4, 4, 2), np.float32))


def test_kitti_png_layout_and_roundtrip(tmp_path):
    flow = np.round(_flow() * 64) / 64  # exactly representable at 1/64 px
    valid = np.random.default_rng(2).random(flow.shape[1:]) > 0.3
    path = tmp_path / "f.png"
    flowio.write_kitti_flow(path, flow, valid)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # BGR order on disk as read by OpenCV
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw[..., 2][valid], (flow[0] * 64 + 32768)[valid])  # R = u
    np.testing.assert_array_equal(raw[..., 1][valid], (flow[1] * 64 + 32768)[valid])  # G = v
    np.testing.assert_array_equal(raw[..., 0], valid.astype(np.uint16))  # B = valid
    got, got_valid = flowio.read_kitti_flow(path)
    np.testing.assert_array_equal(got_valid, valid)
    np.testing.assert_array_equal(got[:, valid], flow[:, valid])
    assert (got[:, ~valid] == 0).all()


def test_kitti_reads_hand_built_png_and_rejects_bad(tmp_path):
    bgr = np.zeros((2, 2, 3), np.uint16)
    bgr[0, 1] = (1, 32768 - 64, 32768 + 96)  # valid, u = +1.5, v = -1
    path = tmp_path / "k.png"
    cv2.imwrite(str(path), bgr)
    flow, valid = flowio.read_kitti_flow(path)
    assert valid.tolist() == [[False, True], [False, False]]
    assert flow[:, 0, 1].tolist() == [1.5, -1.0]
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb8.png")
    with pytest.raises(ValueError, match="16-bit"):
        flowio.read_kitti_flow(tmp_path / "rgb8.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="unreadable"):
        flowio.read_kitti_flow(tmp_path / "junk.png")
    with pytest.raises(ValueError, match="512"):
        flowio.write_kitti_flow(tmp_path / "big.png", np.full((2, 2, 2), 600.0, np.float32))


def test_npy_and_dispatch(tmp_path):
    flow = _flow()
    for suffix in (".flo", ".npy"):
        flowio.write_flow(tmp_path / f"f{suffix}", flow)
        got, valid = flowio.read_flow(tmp_path / f"f{suffix}")
        np.testing.assert_array_equal(got, flow)
        assert valid is None
    assert np.load(tmp_path / "f.npy").shape == (5, 7, 2)  # (H, W, 2) on disk
    np.save(tmp_path / "chw.npy", flow)
    np.testing.assert_array_equal(flowio.read_flow_npy(tmp_path / "chw.npy"), flow)
    np.save(tmp_path / "bad.npy", np.zeros((3, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        flowio.read_flow_npy(tmp_path / "bad.npy")
    with pytest.raises(ValueError, match="unknown flow format"):
        flowio.read_flow(tmp_path / "f.txt")
    with pytest.raises(ValueError, match="valid mask"):
        flowio.write_flow(tmp_path / "g.flo", flow, np.ones((5, 7), bool))


def test_label_pngs(tmp_path):
    rng = np.random.default_rng(3)
    sem = rng.integers(0, 9, (6, 5)).astype(np.uint8)
    palette = rng.integers(0, 256, (9, 3)).astype(np.uint8)
    flowio.write_label_png(tmp_path / "s.png", sem, palette)
    img = Image.open(tmp_path / "s.png")
    assert img.mode == "P" and img.getpalette()[:27] == palette.ravel().tolist()
    np.testing.assert_array_equal(flowio.read_label_png(tmp_path / "s.png"), sem)
    inst = rng.integers(0, 60000, (6, 5)).astype(np.uint16)
    flowio.write_label_png(tmp_path / "i.png", inst)
    got = flowio.read_label_png(tmp_path / "i.png")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, inst)
    mask = rng.random((6, 5)) > 0.5
    flowio.write_mask_png(tmp_path / "m.png", mask)
    assert set(np.unique(np.asarray(Image.open(tmp_path / "m.png"))).tolist()) <= {0, 255}
    np.testing.assert_array_equal(flowio.read_mask_png(tmp_path / "m.png"), mask)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="mode 'RGB'"):
        flowio.read_label_png(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="uint8 or uint16"):
        flowio.write_label_png(tmp_path / "f.png", np.zeros((2, 2), np.float32))
    (tmp_path / "trunc.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="unreadable"):
        flowio.read_label_png(tmp_path / "trunc.png")
