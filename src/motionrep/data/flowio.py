"""Optical-flow and label files. In memory, flow is (2, H, W) float32 (dx, dy); file layouts are converted here.

- Middlebury ``.flo``: ``b"PIEH"`` (the float 202021.25), int32 width, int32 height, then H*W*2 float32 (u, v)
  interleaved, row-major, little-endian.
- KITTI 16-bit PNG: channels (R, G, B) = (u * 64 + 2**15, v * 64 + 2**15, valid), uint16; 1/64 px resolution.
- ``.npy``: (H, W, 2) float32 (also read: (2, H, W) when unambiguous).
- Label PNGs: uint8 (grey or palette) or uint16 (16-bit grey) class / instance ids; masks as 0/255 grey.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

FLO_MAGIC = b"PIEH"
KITTI_SCALE = 64.0
KITTI_ZERO = 2**15


def _check_flow(flow: np.ndarray) -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"flow must have shape (2, H, W), got {flow.shape}")
    return flow.astype(np.float32, copy=False)


def write_flo(path: str | Path, flow: np.ndarray) -> None:
    """Write (2, H, W) flow as a Middlebury ``.flo`` file."""
    flow = _check_flow(flow)
    _, h, w = flow.shape
    with open(path, "wb") as f:
        f.write(FLO_MAGIC)
        f.write(np.array([w, h], "<i4").tobytes())
        f.write(flow.transpose(1, 2, 0).astype("<f4").tobytes())


def read_flo(path: str | Path) -> np.ndarray:
    """Read a Middlebury ``.flo`` file as (2, H, W) float32."""
    data = Path(path).read_bytes()
    if len(data) < 12 or data[:4] != FLO_MAGIC:
        raise ValueError(f"{path}: not a Middlebury .flo file (expected magic 'PIEH', got {data[:4]!r})")
    w, h = np.frombuffer(data, "<i4", 2, 4)
    if w <= 0 or h <= 0:
        raise ValueError(f"{path}: invalid .flo size {w}x{h}")
    expected = 12 + int(w) * int(h) * 8
    if len(data) != expected:
        raise ValueError(f"{path}: .flo of size {w}x{h} needs {expected} bytes, file has {len(data)}")
    return np.frombuffer(data, "<f4", int(w) * int(h) * 2, 12).reshape(h, w, 2).transpose(2, 0, 1).astype(np.float32)


def write_kitti_flow(path: str | Path, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Write flow (2, H, W) and validity (H, W) as a KITTI 16-bit PNG; |flow| must stay below 512 px."""
    flow = _check_flow(flow)
    valid = np.ones(flow.shape[1:], bool) if valid is None else np.asarray(valid, bool)
    if valid.shape != flow.shape[1:]:
        raise ValueError(f"valid mask shape {valid.shape} does not match flow {flow.shape[1:]}")
    coded = np.rint(flow * KITTI_SCALE + KITTI_ZERO)
    if not np.isfinite(flow[:, valid]).all() or coded[:, valid].min() < 0 or coded[:, valid].max() > 65535:
        raise ValueError("KITTI PNG flow must be finite and within (-512, 512) px on valid pixels")
    coded = np.where(valid, np.clip(np.nan_to_num(coded, nan=KITTI_ZERO), 0, 65535), KITTI_ZERO).astype(np.uint16)
    bgr = np.stack([valid.astype(np.uint16), coded[1], coded[0]], -1)  # OpenCV writes BGR
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"could not write {path}")


def read_kitti_flow(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a KITTI 16-bit flow PNG: flow (2, H, W) float32 (0 where invalid) and valid (H, W) bool."""
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if bgr is None:
        raise ValueError(f"{path}: unreadable or not an image")
    if bgr.dtype != np.uint16 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"{path}: KITTI flow must be a 3-channel 16-bit PNG, got {bgr.dtype} {bgr.shape}")
    valid = bgr[..., 0] > 0
    flow = (np.stack([bgr[..., 2], bgr[..., 1]]).astype(np.float32) - KITTI_ZERO) / KITTI_SCALE
    return np.where(valid, flow, 0.0).astype(np.float32), valid


def write_flow_npy(path: str | Path, flow: np.ndarray) -> None:
    """Write (2, H, W) flow as an (H, W, 2) float32 ``.npy`` file."""
    np.save(path, np.ascontiguousarray(_check_flow(flow).transpose(1, 2, 0)))


def read_flow_npy(path: str | Path) -> np.ndarray:
    """Read an ``.npy`` flow file, (H, W, 2) or unambiguously (2, H, W), as (2, H, W) float32."""
    arr = np.load(path, allow_pickle=False)
    if arr.ndim == 3 and arr.shape[2] == 2:
        return np.ascontiguousarray(arr.transpose(2, 0, 1), np.float32)
    if arr.ndim == 3 and arr.shape[0] == 2:
        return arr.astype(np.float32)
    raise ValueError(f"{path}: flow .npy must have shape (H, W, 2) or (2, H, W), got {arr.shape}")


def read_flow(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read any supported flow file by suffix: (flow (2, H, W), valid (H, W) or None when the format has none)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".flo":
        return read_flo(path), None
    if suffix == ".png":
        return read_kitti_flow(path)
    if suffix == ".npy":
        return read_flow_npy(path), None
    raise ValueError(f"{path}: unknown flow format {suffix!r}; expected .flo, .png (KITTI) or .npy")


def write_flow(path: str | Path, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Write flow by suffix (``.flo``, ``.png`` KITTI, ``.npy``); ``valid`` is only stored by the PNG format."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        write_kitti_flow(path, flow, valid)
    elif valid is not None:
        raise ValueError(f"{path}: {suffix} flow files cannot store a valid mask; use a KITTI .png")
    elif suffix == ".flo":
        write_flo(path, flow)
    elif suffix == ".npy":
        write_flow_npy(path, flow)
    else:
        raise ValueError(f"{path}: unknown flow format {suffix!r}; expected .flo, .png (KITTI) or .npy")


def write_label_png(path: str | Path, labels: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a (H, W) uint8 or uint16 label map; uint8 maps may carry an (n, 3) uint8 colour ``palette``."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"label map must be (H, W) uint8 or uint16, got {labels.dtype} {labels.shape}")
    if labels.dtype == np.uint16 and palette is not None:
        raise ValueError("a palette needs uint8 labels")
    img = Image.fromarray(np.ascontiguousarray(labels))  # uint8 -> "L", uint16 -> "I;16"
    if palette is not None:
        img.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())  # "L" -> "P", indices unchanged
    img.save(path)


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label PNG (grey, palette or 16-bit grey) as (H, W) uint8 or uint16 ids (palette indices, not colours)."""
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable label image ({err})") from err
    if img.mode in ("L", "P"):
        return np.asarray(img, np.uint8).copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"{path}: label values outside the uint16 range")
        return arr.astype(np.uint16)
    raise ValueError(f"{path}: a label PNG must be grey, palette or 16-bit grey, got mode {img.mode!r}")


def write_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """Write a (H, W) bool mask as a 0/255 grey PNG."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {mask.shape}")
    Image.fromarray(mask.astype(bool).astype(np.uint8) * 255).save(path)


def read_mask_png(path: str | Path) -> np.ndarray:
    """Read a mask PNG as (H, W) bool (non-zero = True)."""
    return read_label_png(path) > 0
