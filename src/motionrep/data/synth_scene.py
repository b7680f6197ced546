"""The synthetic world's classes, configuration, and one clip's scene: layers with exact per-frame geometry.

A clip is a stack of layers: layer 0 is the background plane (stuff regions, moved by the camera), layers 1..K are
objects in z-order (higher index on top). Each layer maps its canonical coordinates ``c`` to frame pixels by
``x = A_t(warp_t(c))``: an optional mild non-rigid warp (an exactly invertible pair of sinusoidal shears) followed by
an affine map (object pose, then camera). Everything is analytic, so the canonical point under any pixel, its position
at any other frame, and whether a higher layer hides it are exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

# (class name, texture) for background "stuff", then (class name, shape, texture) for objects.
STUFF_CLASSES = (("grass", "grass"), ("gravel", "gravel"), ("wall", "brick"))
OBJECT_CLASSES = (
    ("striped_disc", "disc", "stripes"),
    ("checkered_square", "square", "checker"),
    ("dotted_triangle", "triangle", "dots"),
    ("marbled_star", "star", "marble"),
    ("hatched_ring", "ring", "hatch"),
    ("cratered_cross", "cross", "craters"),
)
CLASS_NAMES: list[str] = [c[0] for c in STUFF_CLASSES] + [c[0] for c in OBJECT_CLASSES]
NUM_STUFF = len(STUFF_CLASSES)
IGNORE_INDEX = 255
# Display colours of the classes (stuff muted, objects saturated), for label PNGs and pictures.
PALETTE = np.array(
    [[96, 140, 60], [150, 140, 125], [150, 80, 60]]
    + [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180]],
    np.uint8,
)
SYNTH_VERSION = 2  # bump whenever the same (config, split, seed, index) would render differently
SPLIT_SEEDS: dict[str, int] = {"train": 0x5EED0, "val": 0x5EED1, "test": 0x5EED2}
MOTIONS = ("free", "horizontal")
STUFF_SITES = 6  # Voronoi sites partitioning the background plane into stuff regions


@dataclass
class SynthConfig:
    """Generator parameters. Speeds and sizes are fractions of the frame's shorter side (per frame for speeds)."""

    size: int | tuple[int, int] = 64  # H = W, or (H, W)
    frames: int = 16
    num_objects: tuple[int, int] = (2, 4)  # inclusive range of K
    object_radius: tuple[float, float] = (0.12, 0.25)
    object_speed: tuple[float, float] = (0.005, 0.04)
    object_spin: float = 4.0  # max |rotation| in degrees per frame
    object_zoom: float = 0.01  # max |log-scale change| per frame
    camera_pan: float = 0.015
    camera_zoom: float = 0.008
    camera_spin: float = 0.5  # degrees per frame
    warp: float = 0.05  # non-rigid warp amplitude in canonical units (object radius = 1); 0 disables
    noise: float = 0.01  # std of additive Gaussian pixel noise in [0, 1] intensity units; 0 disables
    motion: str = "free"  # "horizontal": objects and camera translate along x only (no spin, zoom or warp)
    track_grid: int = 16  # default query grid: track_grid x track_grid points on frame 0
    videos: dict[str, int] = field(default_factory=lambda: {"train": 256, "val": 32, "test": 32})

    def __post_init__(self) -> None:
        self.size = tuple(self.size) if isinstance(self.size, (list, tuple)) else (int(self.size), int(self.size))
        for name in ("num_objects", "object_radius", "object_speed"):
            value = tuple(getattr(self, name))
            if len(value) != 2 or value[0] > value[1] or value[0] < 0:
                raise ValueError(f"SynthConfig.{name} must be a range (low, high) with 0 <= low <= high, got {value}")
            setattr(self, name, value)
        if len(self.size) != 2 or min(self.size) < 16:
            raise ValueError(f"SynthConfig.size must be >= 16 pixels per side, got {self.size}")
        if self.frames < 2:
            raise ValueError(f"SynthConfig.frames must be >= 2, got {self.frames}")
        if self.motion not in MOTIONS:
            raise ValueError(f"SynthConfig.motion must be one of {MOTIONS}, got {self.motion!r}")
        if self.track_grid < 1:
            raise ValueError(f"SynthConfig.track_grid must be >= 1, got {self.track_grid}")

    @property
    def hw(self) -> tuple[int, int]:
        return self.size  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SynthConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SynthConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


_SMALL = dict(size=64, frames=16, num_objects=(2, 4), track_grid=16, videos={"train": 256, "val": 32, "test": 32})
PRESETS: dict[str, dict] = {
    "tiny": dict(size=32, frames=8, num_objects=(1, 3), track_grid=8, videos={"train": 16, "val": 4, "test": 4}),
    "small": _SMALL,
    "fast": dict(_SMALL, object_speed=(0.03, 0.1), camera_pan=0.04),
    "standard": dict(
        size=128, frames=24, num_objects=(3, 6), track_grid=32, videos={"train": 2048, "val": 128, "test": 128}
    ),
}


def synth_preset(name: str) -> SynthConfig:
    """The named preset: ``tiny`` (CI-sized, 32x32x8), ``small`` (64x64x16), ``fast`` (``small`` with faster
    objects and camera, 2.6x its mean flow: the demo's world), ``standard`` (128x128x24)."""
    if name not in PRESETS:
        raise ValueError(f"unknown synth preset {name!r}; expected one of {sorted(PRESETS)}")
    return SynthConfig(**PRESETS[name])


def _shape_mask(shape: str, c: np.ndarray) -> np.ndarray:
    """Membership of canonical points (..., 2) in a shape family (all fit in the unit disc)."""
    u, v = c[..., 0], c[..., 1]
    r2 = u * u + v * v
    if shape == "disc":
        return r2 < 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.7
    if shape == "triangle":  # equilateral, inscribed in the unit circle, apex up
        return (v < 0.5) & (0.866 * u - 0.5 * v < 0.5) & (-0.866 * u - 0.5 * v < 0.5)
    if shape == "star":  # r < 0.6 + 0.35 cos(5 theta), cos(5 theta) by its Chebyshev polynomial in cos(theta)
        r = np.sqrt(r2)
        k = u / np.maximum(r, 1e-6)
        k2 = k * k
        return r < 0.6 + 0.35 * k * ((16 * k2 - 20) * k2 + 5)
    if shape == "ring":
        return (r2 < 1.0) & (r2 > 0.25)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au < 0.3) & (av < 0.95)) | ((av < 0.3) & (au < 0.95))
    raise ValueError(f"unknown shape {shape!r}")


def _rot(theta: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 2, 2) for angles in radians."""
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


@dataclass(eq=False)
class Scene:
    """All sampled parameters of one clip; every geometric query is exact and vectorised."""

    hw: tuple[int, int]
    linear: np.ndarray  # (L, T, 2, 2) layer -> frame linear part
    offset: np.ndarray  # (L, T, 2) layer -> frame translation
    classes: np.ndarray  # (L,) semantic id of each object layer; -1 for the background
    warp_amp: np.ndarray  # (L, 2) amplitudes of the two shears (0 = rigid)
    warp_freq: np.ndarray  # (L,)
    warp_phase: np.ndarray  # (L, T, 2)
    tex_scale: np.ndarray  # (K,) texels per canonical unit of object layer k + 1
    tex_offset: np.ndarray  # (K, 2)
    colours: np.ndarray  # (K, 2, 3) dark and light colour of object layer k + 1
    stuff_sites: np.ndarray  # (S, 2) Voronoi sites on the background plane
    stuff_site_class: np.ndarray  # (S,) stuff class of each site
    stuff_colours: np.ndarray  # (NUM_STUFF, 2, 3)
    stuff_tex_scale: np.ndarray  # (NUM_STUFF,) texels per background-plane pixel
    stuff_tex_offset: np.ndarray  # (NUM_STUFF, 2)
    noise_seed: int
    noise: float
    _fwd: np.ndarray = field(init=False, repr=False)
    _inv: np.ndarray = field(init=False, repr=False)
    _wobble: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Per-(layer, frame) parameter rows, flattened so that a row is gathered with one np.take per component.
        inv = np.linalg.inv(self.linear.astype(np.float64)).astype(np.float32)

        def flat(a: np.ndarray) -> np.ndarray:
            return a.reshape(self.num_layers * self.frames, -1).T

        self._fwd = np.ascontiguousarray(np.concatenate([flat(self.linear), flat(self.offset)]))
        self._inv = np.ascontiguousarray(np.concatenate([flat(inv), flat(self.offset)]))
        amp = np.broadcast_to(self.warp_amp[:, None], (self.num_layers, self.frames, 2))
        freq = np.broadcast_to(self.warp_freq[:, None, None], (self.num_layers, self.frames, 1))
        self._wobble = np.ascontiguousarray(np.concatenate([flat(amp), flat(freq), flat(self.warp_phase)]))

    @property
    def num_layers(self) -> int:
        return self.linear.shape[0]

    @property
    def frames(self) -> int:
        return self.linear.shape[1]

    def shape_of(self, layer: int) -> str | None:
        return None if layer == 0 else OBJECT_CLASSES[self.classes[layer] - NUM_STUFF][1]

    def _gather(self, table: np.ndarray, layer: np.ndarray | int, t: np.ndarray) -> list[np.ndarray]:
        idx = np.asarray(layer) * self.frames + np.asarray(t)
        return [np.take(row, idx) for row in table]

    def _warp(self, layer: np.ndarray | int, t: np.ndarray, u: np.ndarray, v: np.ndarray, inverse: bool):
        if not (self.warp_amp[layer] if np.ndim(layer) == 0 else self.warp_amp).any():
            return u, v
        a1, a2, w, p1, p2 = self._gather(self._wobble, layer, t)
        if inverse:  # undo the v-shear, then the u-shear
            v = v - a2 * np.sin(w * u + p2)
            return u - a1 * np.sin(w * v + p1), v
        u = u + a1 * np.sin(w * v + p1)
        return u, v + a2 * np.sin(w * u + p2)

    def to_frame(self, layer: np.ndarray | int, t: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Frame position (x, y) at time(s) ``t`` of canonical points ``c`` (..., 2) of layer(s) ``layer``.

        ``layer`` and ``t`` are integers or integer arrays broadcastable to ``c.shape[:-1]``.
        """
        u, v = self._warp(layer, t, c[..., 0], c[..., 1], inverse=False)
        m00, m01, m10, m11, b0, b1 = self._gather(self._fwd, layer, t)
        return np.stack([m00 * u + m01 * v + b0, m10 * u + m11 * v + b1], -1)

    def to_canonical(self, layer: np.ndarray | int, t: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """Canonical coordinates of the surface point of layer(s) ``layer`` under frame position(s) ``xy`` at ``t``."""
        m00, m01, m10, m11, b0, b1 = self._gather(self._inv, layer, t)
        x, y = xy[..., 0] - b0, xy[..., 1] - b1
        u, v = self._warp(layer, t, m00 * x + m01 * y, m10 * x + m11 * y, inverse=True)
        return np.stack([u, v], -1)

    def covers(self, layer: int, c: np.ndarray) -> np.ndarray:
        """Whether canonical points ``c`` lie on ``layer`` (the background covers the whole plane)."""
        shape = self.shape_of(layer)
        return np.ones(c.shape[:-1], bool) if shape is None else _shape_mask(shape, c)

    def owner(self, t: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top layer at frame position(s) ``xy`` and time(s) ``t``, and that layer's canonical coordinates there."""
        c_top = self.to_canonical(0, t, xy)
        top = np.zeros(c_top.shape[:-1], np.int64)
        for layer in range(1, self.num_layers):
            c = self.to_canonical(layer, t, xy)
            hit = self.covers(layer, c)
            top[hit] = layer
            c_top = np.where(hit[..., None], c, c_top)
        return top, c_top

    def hidden(self, layer: np.ndarray | int, t: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """Whether a layer above ``layer`` (per point) covers frame position(s) ``xy`` at time(s) ``t``."""
        out = np.zeros(np.broadcast_shapes(np.shape(layer), xy.shape[:-1]), bool)
        for above in range(1, self.num_layers):
            below = np.asarray(layer) < above
            if below.any():
                out |= below & self.covers(above, self.to_canonical(above, t, xy))
        return out

    def stuff_class(self, world: np.ndarray) -> np.ndarray:
        """Stuff class id of background-plane points (..., 2): nearest Voronoi site of a wiggled position."""
        q = world + 0.04 * min(self.hw) * np.sin(world[..., ::-1] * (6.0 / min(self.hw)))
        # argmin_s |q - s|^2 = argmin_s (|s|^2 - 2 q.s)
        score = (self.stuff_sites**2).sum(-1) - 2.0 * (q @ self.stuff_sites.T)
        return self.stuff_site_class[np.argmin(score, axis=-1)]


def scene_rng(split: str, seed: int, index: int) -> np.random.Generator:
    """The random generator of clip ``index`` of ``split``: independent streams for every (split, seed, index)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    return np.random.default_rng([SPLIT_SEEDS[split], seed, index])


def _colour_pairs(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random (dark, light) RGB pairs, independent of any class, so that colour cannot identify a class."""
    return np.stack([rng.uniform(0.0, 0.55, (n, 3)), rng.uniform(0.45, 1.0, (n, 3))], 1).astype(np.float32)


def sample_scene(config: SynthConfig, rng: np.random.Generator) -> Scene:
    """Draw one clip's scene from ``config`` with ``rng`` (deterministic for a given generator state)."""
    h, w = config.hw
    side, t_count = float(min(h, w)), config.frames
    horizontal = config.motion == "horizontal"
    times = np.arange(t_count, dtype=np.float64)
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])

    # Camera: pan, zoom and spin at constant rates from the identity at frame 0.
    pan = rng.uniform(-1.0, 1.0, 2) * config.camera_pan * side
    zoom = rng.uniform(-1.0, 1.0) * config.camera_zoom
    spin = np.deg2rad(rng.uniform(-1.0, 1.0) * config.camera_spin)
    if horizontal:
        pan[1], zoom, spin = 0.0, 0.0, 0.0
    cam_m = np.exp(zoom * times)[:, None, None] * _rot(spin * times)  # (T, 2, 2)
    cam_b = centre - np.einsum("tij,tj->ti", cam_m, centre + pan * times[:, None])

    # Objects: class, pose trajectory (position at mid-clip, velocity, spin, zoom), warp, texture and colours.
    k = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
    classes = np.concatenate([[-1], NUM_STUFF + rng.integers(0, len(OBJECT_CLASSES), k)])
    radius = rng.uniform(*config.object_radius, k) * side
    aspect = np.exp(rng.uniform(-0.2, 0.2, (k, 2)))
    mid = rng.uniform(-0.1, 1.1, (k, 2)) * np.array([w, h])
    angle = rng.uniform(0, 2 * np.pi, k)
    vel = rng.uniform(*config.object_speed, k)[:, None] * side * np.stack([np.cos(angle), np.sin(angle)], -1)
    theta0 = rng.uniform(0, 2 * np.pi, k)
    obj_spin = np.deg2rad(rng.uniform(-1.0, 1.0, k) * config.object_spin)
    obj_zoom = rng.uniform(-1.0, 1.0, k) * config.object_zoom
    warp_amp = rng.uniform(0.0, 1.0, (k, 2)) * config.warp
    warp_freq = rng.uniform(2.0, 4.0, k)
    warp_phase0, warp_rate = rng.uniform(0, 2 * np.pi, (k, 2)), rng.uniform(0.2, 0.6, (k, 2))
    if horizontal:
        vel[:, 0] = np.linalg.norm(vel, axis=-1) * np.where(vel[:, 0] < 0, -1.0, 1.0)
        vel[:, 1], theta0, obj_spin, obj_zoom, warp_amp = 0.0, np.zeros(k), np.zeros(k), np.zeros(k), 0 * warp_amp
    tc = times - (t_count - 1) / 2.0
    obj_m = (
        np.exp(obj_zoom[:, None] * tc)[..., None, None]
        * _rot(theta0[:, None] + obj_spin[:, None] * tc)
        * (radius[:, None] * aspect)[:, None, None, :]
    )  # (K, T, 2, 2): canonical -> world
    obj_b = mid[:, None] + vel[:, None] * tc[:, None]  # (K, T, 2)

    linear = np.concatenate([cam_m[None], np.einsum("tij,ktjl->ktil", cam_m, obj_m)])
    offset = np.concatenate([cam_b[None], np.einsum("tij,ktj->kti", cam_m, obj_b) + cam_b])
    phase = warp_phase0[:, None] + warp_rate[:, None] * times[None, :, None]

    # Background: Voronoi sites over an area wider than any camera path; the first two lie inside frame 0 and
    # have different classes, so that every clip shows at least two stuff classes.
    sites = rng.uniform(-0.5, 1.5, (STUFF_SITES, 2)) * np.array([w, h])
    sites[:2] = rng.uniform(0.15, 0.85, (2, 2)) * np.array([w, h])
    site_class = rng.integers(0, NUM_STUFF, STUFF_SITES)
    site_class[:2] = rng.choice(NUM_STUFF, 2, replace=False)

    f32 = np.float32
    return Scene(
        hw=(h, w),
        linear=linear.astype(f32),
        offset=offset.astype(f32),
        classes=classes.astype(np.int64),
        warp_amp=np.concatenate([[[0.0, 0.0]], warp_amp]).astype(f32),
        warp_freq=np.concatenate([[0.0], warp_freq]).astype(f32),
        warp_phase=np.concatenate([np.zeros((1, t_count, 2)), phase]).astype(f32),
        tex_scale=(radius * rng.uniform(0.8, 1.25, k)).astype(f32),
        tex_offset=rng.uniform(0, 256, (k, 2)).astype(f32),
        colours=_colour_pairs(rng, k),
        stuff_sites=sites.astype(f32),
        stuff_site_class=site_class.astype(np.int64),
        stuff_colours=_colour_pairs(rng, NUM_STUFF),
        stuff_tex_scale=rng.uniform(0.8, 1.25, NUM_STUFF).astype(f32),
        stuff_tex_offset=rng.uniform(0, 256, (NUM_STUFF, 2)).astype(f32),
        noise_seed=int(rng.integers(0, 2**31)),
        noise=float(config.noise),
    )
