"""Rendering a :class:`~motionrep.data.synth_scene.Scene` by inverse mapping, and its exact ground truth.

Every pixel centre of every frame is mapped back into every layer; z-order picks the owner, whose canonical point
gives the colour (texture lookup), the labels, the flow (the same point's position in the neighbouring frame minus its
position now) and the validity (that position is inside the frame and no higher layer covers it there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from motionrep.data import textures
from motionrep.data.synth_scene import NUM_STUFF, OBJECT_CLASSES, STUFF_CLASSES, Scene
from motionrep.ops.points import grid_points, inside


@dataclass(eq=False)
class SynthVideo:
    """One clip with exact ground truth. Flow is (dx, dy) in pixels; points are (x, y), pixel centres at integers."""

    name: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    semantic: np.ndarray  # (T, H, W) uint8 class ids (CLASS_NAMES)
    instance: np.ndarray  # (T, H, W) uint8 or uint16; 0 = background stuff, k = k-th object in z-order
    flow: np.ndarray  # (T-1, 2, H, W) float32, frame t -> t+1
    flow_bwd: np.ndarray  # (T-1, 2, H, W) float32, frame t+1 -> t
    valid: np.ndarray  # (T-1, H, W) bool: the surface point under the pixel is visible in frames t and t+1
    tracks: np.ndarray  # (T, N, 2) float32 tracks of the default query grid on frame 0
    visible: np.ndarray  # (T, N) bool
    scene: Scene | None = field(default=None, repr=False, compare=False)

    def track(self, xy0: np.ndarray, t0: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Exact tracks (T, N, 2) float32 and visibility (T, N) bool of query points ``xy0`` (N, 2) on frame ``t0``."""
        if self.scene is None:
            raise RuntimeError(f"video {self.name!r} has no scene (loaded from files of another generator version)")
        return track_points(self.scene, xy0, t0)


def _inside(xy: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return inside(xy, (hw[1], hw[0]))


def track_points(scene: Scene, xy0: np.ndarray, t0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Follow the surface point under each query (x, y) on frame ``t0`` through the clip: positions and visibility.

    A point is visible at frame t when it lies inside the frame and no higher layer covers it.
    """
    t_count = scene.frames
    if not -t_count <= t0 < t_count:
        raise ValueError(f"query frame t0={t0} out of range for a clip of {t_count} frames")
    t0 %= t_count
    xy0 = np.asarray(xy0, np.float32)
    if xy0.ndim != 2 or xy0.shape[1] != 2:
        raise ValueError(f"query points must have shape (N, 2) in (x, y) order, got {xy0.shape}")
    top, c = scene.owner(np.full(len(xy0), t0), xy0)
    times = np.arange(t_count)[:, None]
    tracks = scene.to_frame(top[None], times, c[None]).astype(np.float32)
    tracks[t0] = xy0  # exact by construction; avoids the round-off of the round trip
    visible = _inside(tracks, scene.hw) & ~scene.hidden(top[None], times, tracks)
    return tracks, visible


def _materials(scene: Scene) -> dict[str, np.ndarray]:
    """Appearance tables: rows 0..NUM_STUFF-1 are the stuff classes, row NUM_STUFF + k - 1 is object layer k."""
    obj = scene.classes[1:]
    tiles = [textures.texture_id(t) for _, t in STUFF_CLASSES]
    tiles += [textures.texture_id(OBJECT_CLASSES[c - NUM_STUFF][2]) for c in obj]
    return {
        "tile": np.array(tiles, np.int64),
        "scale": np.concatenate([scene.stuff_tex_scale, scene.tex_scale]),
        "offset": np.concatenate([scene.stuff_tex_offset, scene.tex_offset]),
        "colours": np.concatenate([scene.stuff_colours, scene.colours]),
        "label": np.concatenate([np.arange(NUM_STUFF), obj]).astype(np.uint8),
    }


def render(scene: Scene, name: str, track_grid: int) -> SynthVideo:
    """Render every frame, label map, flow and mask of ``scene``, and the tracks of a ``track_grid``² query grid."""
    h, w = scene.hw
    t_count = scene.frames
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    pix = np.stack([xs, ys], -1)
    times = np.arange(t_count)[:, None, None]
    top, c = scene.owner(times, pix[None])  # (T, H, W), (T, H, W, 2)

    mat = _materials(scene)
    material = np.where(top == 0, scene.stuff_class(c), NUM_STUFF - 1 + top)
    grey = textures.sample(mat["tile"][material], c * mat["scale"][material][..., None] + mat["offset"][material])
    dark = mat["colours"][:, 0]
    rgb = dark[material] + grey[..., None] * (mat["colours"][:, 1] - dark)[material]
    if scene.noise > 0:
        rgb += np.random.default_rng(scene.noise_seed).standard_normal(rgb.shape, np.float32) * scene.noise

    x_next = scene.to_frame(top[:-1], times[1:], c[:-1])
    x_prev = scene.to_frame(top[1:], times[:-1], c[1:])
    valid = _inside(x_next, scene.hw) & ~scene.hidden(top[:-1], times[1:], x_next)
    tracks, visible = track_points(scene, grid_points(track_grid, (w, h)).numpy(), 0)
    return SynthVideo(
        name=name,
        frames=np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8),
        semantic=mat["label"][material],
        instance=top.astype(np.uint8 if scene.num_layers <= 256 else np.uint16),
        flow=np.ascontiguousarray((x_next - pix).transpose(0, 3, 1, 2), np.float32),
        flow_bwd=np.ascontiguousarray((x_prev - pix).transpose(0, 3, 1, 2), np.float32),
        valid=valid,
        tracks=tracks,
        visible=visible,
        scene=scene,
    )
