"""Forwarded feature perturbation (midway.md §12): where does a change of one source token arrive in the forward
prediction?

With the motion latents fixed, a random tangent ``r`` on the source token ``p`` is pushed through the backward block
and the forward predictor of one level with forward-mode autodiff (``torch.func.jvp``, vectorised over source
tokens and draws with ``torch.func.vmap``); ``score(q) = cos(r, tangent_q)`` averaged over ``k`` draws is the
heatmap of ``p`` over the target token grid. Tracking chains heatmaps over a clip: the heatmap argmax (top-1), or
the paper's top-k candidates re-ranked by same-level encoder feature similarity. Quantitative scores (not in the
paper) compare against ground-truth point positions: :func:`peak_hits` and :func:`tracking_scores`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from motionrep.models.dynamics import MidwayDynamics, cls_and_patches
from motionrep.ops.points import ViewTransform, grid_points, inside, token_rc

SITES = ("encoder", "backward")


@dataclass
class PerturbConfig:
    """``num_samples`` draws per source token; ``level`` an objective level (``None`` = the highest); ``site``
    ``encoder`` perturbs z_t^l (through backward_l and predictor_l) or ``backward`` perturbs v_t^l; ``chunk``
    tangents per vmapped call bounds memory."""

    num_samples: int = 16
    level: int | None = None
    site: str = "encoder"
    top_k: int = 5
    chunk: int = 256

    def validate(self, objective_levels: list[int]) -> int:
        """Check the settings; return the level index into ``objective_levels``."""
        if self.site not in SITES:
            raise ValueError(f"perturb.site={self.site!r}; expected one of {list(SITES)}")
        if self.num_samples < 1 or self.top_k < 1 or self.chunk < 1:
            raise ValueError("perturb.num_samples, top_k and chunk must be >= 1")
        level = objective_levels[-1] if self.level is None else self.level
        if level not in objective_levels:
            raise ValueError(f"perturb.level={level} is not an objective level of this model {objective_levels}")
        return objective_levels.index(level)


def jvp_heatmaps(
    predict: Callable[[torch.Tensor], torch.Tensor],
    source: torch.Tensor,
    positions: torch.Tensor,
    num_samples: int,
    generator: torch.Generator | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """Mean over ``num_samples`` draws ``r ~ N(0, I)`` of ``cos(r, (J_predict(source) t)_q)`` where the tangent
    ``t`` is ``r`` on row ``positions[i]`` and 0 elsewhere.

    ``predict`` maps ``source`` (N, D) to (M, D). Returns (len(positions), M).
    """
    n, d = source.shape
    draws = torch.randn(positions.numel() * num_samples, d, generator=generator).to(source)
    rows = positions.to(source.device).repeat_interleave(num_samples)

    def push(tangent: torch.Tensor) -> torch.Tensor:
        return jvp(predict, (source,), (tangent,))[1]

    scores = []
    # The fused CPU attention kernels have no forward-mode derivative; forward AD runs fine under no_grad.
    # Loading torch's jvp decompositions the first time calls the deprecated torch.jit.script: torch's noise.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
        for start in range(0, len(rows), chunk):
            r, p = draws[start : start + chunk], rows[start : start + chunk]
            tangents = source.new_zeros(len(r), n, d)
            tangents[torch.arange(len(r), device=source.device), p] = r
            scores.append(F.cosine_similarity(vmap(push)(tangents), r[:, None], dim=-1))
    return torch.cat(scores).view(positions.numel(), num_samples, -1).mean(1)


@dataclass
class PairAnalysis:
    """Heatmaps of every source patch token of each frame pair, and the same-level features of both frames."""

    heatmaps: torch.Tensor  # (B, hw, hw): row = perturbed source token, column = target token
    source_features: torch.Tensor  # (B, hw, D) student encoder features of the source frames at the level
    target_features: torch.Tensor  # (B, hw, D) student encoder features of the target frames at the level
    grid: tuple[int, int]


def analyze_pairs(
    encoder: nn.Module,
    teacher: nn.Module,
    dynamics: MidwayDynamics,
    source: torch.Tensor,
    target: torch.Tensor,
    cfg: PerturbConfig,
    generator: torch.Generator | None = None,
) -> PairAnalysis:
    """Run the hierarchy on frame pairs ``source`` -> ``target`` (B, 3, H, W) in [0, 1] (student encodes the
    source, teacher the target, as in training), fix the latents, and perturb every source patch token."""
    dcfg = dynamics.config
    i = cfg.validate(dcfg.objective_levels)
    cls = int(dcfg.use_cls_token)
    grid = encoder.grid_size(tuple(source.shape[-2:]))
    with torch.no_grad():
        zs = [cls_and_patches(z, encoder.num_prefix_tokens) for z in encoder(source, taps=dcfg.levels)]
        zt = [cls_and_patches(z, teacher.num_prefix_tokens) for z in teacher(target, taps=dcfg.levels)]
        states = dynamics(zs, zt, grid_hw=grid).states
        features_t = encoder(target, taps=[dcfg.levels[i]])[0]
    state = next(s for s in states if s.level == dcfg.levels[i])
    hw = grid[0] * grid[1]
    positions = torch.arange(cls, cls + hw)
    heatmaps = []
    for b in range(source.shape[0]):  # frame pairs; tokens and draws are vectorised inside
        motion, context = state.motion[b : b + 1], state.context[b : b + 1]
        if cfg.site == "encoder":
            start = state.source[b]

            def predict(z, motion=motion, context=context):
                return dynamics.predict(i, z[None], context, motion)[0][0]
        else:
            start = dynamics.refine(i, state.source[b : b + 1], context)[0].detach()

            def predict(v, motion=motion):
                return dynamics.forward_predictors[i](dynamics.motion_proj(motion), v[None])[0][0]

        heat = jvp_heatmaps(predict, start.detach(), positions, cfg.num_samples, generator, cfg.chunk)
        heatmaps.append(heat[:, cls:])
    patches_t = features_t[:, encoder.num_prefix_tokens :]
    return PairAnalysis(torch.stack(heatmaps), zs[i][:, 1:], patches_t, grid)


def token_centres(grid: tuple[int, int], patch: int) -> torch.Tensor:
    """Pixel (x, y) centres of the patch tokens of a square ``grid`` (row-major), (h*w, 2)."""
    if grid[0] != grid[1]:
        raise ValueError(f"the perturbation analysis needs a square token grid, got {grid}")
    return grid_points(grid[0], (grid[1] * patch, grid[0] * patch))


def peak_hits(
    heatmaps: torch.Tensor, target_xy: torch.Tensor, valid: torch.Tensor, patch: int, grid: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Per source token: is the heatmap peak within one token (Chebyshev) of the token containing the true target
    position, exactly on it, or on the source token itself, and did the content move to another token at all?
    ``heatmaps`` (..., hw, hw), ``target_xy`` (..., hw, 2), ``valid`` (..., hw). Returns bool tensors (..., hw) and
    the ``valid`` mask."""
    w = grid[1]
    peak = heatmaps.argmax(-1)
    pr, pc = peak // w, peak % w
    tr, tc = token_rc(target_xy, patch, grid)
    dist = torch.maximum((pr - tr).abs(), (pc - tc).abs())
    source = torch.arange(heatmaps.shape[-2], device=heatmaps.device)
    moved = tr * w + tc != source
    return {"within1": dist <= 1, "exact": dist == 0, "identity": peak == source, "moved": moved, "valid": valid}


def chain_tracks(
    heatmaps: torch.Tensor,
    source_features: torch.Tensor,
    target_features: torch.Tensor,
    start: torch.Tensor,
    top_k: int,
) -> dict[str, torch.Tensor]:
    """Follow tokens through a clip: ``heatmaps`` (T-1, hw, hw) and features (T-1, hw, D) of the consecutive pairs,
    ``start`` (Q,) token indices on frame 0. Returns token indices (T, Q) per strategy: ``top1`` (heatmap argmax),
    ``topk_sim`` (top-k heatmap positions re-ranked by cosine similarity to the current token, the paper's
    tracking) and ``nn`` (feature nearest neighbour over the whole target frame, the baseline)."""
    cur = {"top1": start, "topk_sim": start, "nn": start}
    out = {name: [start] for name in cur}
    k = min(top_k, heatmaps.shape[-1])
    for t in range(heatmaps.shape[0]):
        src = F.normalize(source_features[t], dim=-1)
        tgt = F.normalize(target_features[t], dim=-1)
        cur["top1"] = heatmaps[t, cur["top1"]].argmax(-1)
        cand = heatmaps[t, cur["topk_sim"]].topk(k, dim=-1).indices  # (Q, k)
        sim = (tgt[cand] * src[cur["topk_sim"]][:, None]).sum(-1)
        cur["topk_sim"] = cand.gather(1, sim.argmax(-1, keepdim=True))[:, 0]
        cur["nn"] = (src[cur["nn"]] @ tgt.T).argmax(-1)
        for name in out:
            out[name].append(cur[name])
    return {name: torch.stack(seq) for name, seq in out.items()}


def tracking_scores(
    tokens: torch.Tensor, tracks: torch.Tensor, visible: torch.Tensor, patch: int, grid: tuple[int, int]
) -> dict[str, float]:
    """Accuracy (predicted token contains the true position) and mean token distance (Euclidean, in tokens) over
    visible points of frames 1..T-1. ``tokens`` (T, Q), ``tracks`` (T, Q, 2), ``visible`` (T, Q)."""
    tr, tc = token_rc(tracks[1:], patch, grid)
    pr, pc = tokens[1:] // grid[1], tokens[1:] % grid[1]
    vis = visible[1:]
    if not vis.any():
        raise ValueError("no visible ground-truth track points after the first frame")
    dist = torch.hypot((pr - tr).float(), (pc - tc).float())[vis]
    return {"acc": (dist == 0).float().mean().item(), "token_dist": dist.mean().item()}


def plot_heatmaps(
    source: torch.Tensor,
    target: torch.Tensor,
    heatmaps: torch.Tensor,
    tokens: list[int],
    patch: int,
    grid: tuple[int, int],
    path: Path,
    target_xy: torch.Tensor | None = None,
) -> None:
    """One row per chosen source token: the source frame with the token marked, the target frame with the heatmap
    overlaid (and the true target position when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = token_centres(grid, patch)
    fig, axes = plt.subplots(len(tokens), 2, figsize=(5, 2.5 * len(tokens)), squeeze=False)
    extent = (-0.5, grid[1] * patch - 0.5, grid[0] * patch - 0.5, -0.5)
    for row, tok in zip(axes, tokens, strict=True):
        row[0].imshow(source.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), extent=extent)
        row[0].scatter(*centres[tok].tolist(), c="red", marker="+", s=120)
        row[1].imshow(target.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), extent=extent)
        row[1].imshow(heatmaps[tok].view(grid).cpu().numpy(), extent=extent, cmap="inferno", alpha=0.6)
        if target_xy is not None:
            row[1].scatter(*target_xy[tok].tolist(), c="cyan", marker="x", s=80)
        for ax in row:
            ax.set_axis_off()
    axes[0, 0].set_title("source (token +)")
    axes[0, 1].set_title("heatmap (truth x)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_tracks(
    frames: torch.Tensor,
    tokens: dict[str, torch.Tensor],
    tracks: torch.Tensor,
    patch: int,
    grid: tuple[int, int],
    path: Path,
) -> None:
    """First and last frame with the ground-truth tracks and each strategy's token-centre tracks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = token_centres(grid, patch)
    fig, axes = plt.subplots(1, len(tokens) + 1, figsize=(3 * (len(tokens) + 1), 3))
    for ax, (name, seq) in zip(axes, [("ground truth", None), *tokens.items()], strict=True):
        ax.imshow(frames[-1].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        xy = tracks if seq is None else centres[seq]
        for q in range(xy.shape[1]):
            ax.plot(xy[:, q, 0].cpu(), xy[:, q, 1].cpu(), lw=1)
        ax.set_title(name)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_midway(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The ``midway`` method of a run directory or checkpoint file (:func:`motionrep.train.engine.load_run`), in eval
    mode. ``ValueError`` for a missing path or a run without latent dynamics."""
    from motionrep.train.engine import load_run

    path = Path(path)
    if not (path / "checkpoints" / "last.pt").is_file() and not path.is_file():
        raise ValueError(f"{path}: no such run directory (with checkpoints/last.pt) or checkpoint file")
    try:
        method = load_run(path, device)
    except KeyError as e:
        raise ValueError(f"{path}: not a motionrep training checkpoint (no {e} entry)") from None
    midway = getattr(method.cfg.method, "midway", None)
    if method.cfg.method.name != "midway" or not midway.latent_dynamics:
        raise ValueError(f"{path}: the perturbation analysis needs a Midway run with latent dynamics")
    return method


def _frames(video, size: int, device: torch.device) -> tuple[torch.Tensor, ViewTransform]:
    """Float frames (T, 3, size, size) in [0, 1] and the transform of points from the video to them."""
    from motionrep.data.views import resize

    frames = torch.from_numpy(video.frames).permute(0, 3, 1, 2).float().div_(255.0)
    wh = (frames.shape[-1], frames.shape[-2])
    return resize(frames, (size, size), mode="bilinear").to(device), ViewTransform.resize(wh, (size, size))


def analyze_synthetic(
    method: nn.Module,
    world: Sequence,
    cfg: PerturbConfig,
    out_dir: Path,
    gap: int = 1,
    figures: int = 2,
    seed: int = 0,
) -> dict[str, float | None]:
    """Heatmaps, peak scores and chained tracking on every clip of a synthetic ``world`` (frames ``0, gap, 2 gap``
    ...) at the model's motion-crop size; writes figures for the first ``figures`` clips into ``out_dir`` and
    returns the metrics (fractions in [0, 1], distances in tokens)."""
    from tqdm.auto import tqdm

    device = next(method.parameters()).device
    size, patch = method.cfg.data.motion_size, method.encoder.patch_size
    generator = torch.Generator().manual_seed(seed)
    hits, tokens, tracks, visible = [], [], [], []
    for v in tqdm(range(len(world)), desc="perturbation", unit="clip", disable=not sys.stderr.isatty()):
        video = world[v]
        times = list(range(0, len(video.frames), gap))
        if len(times) < 2:
            raise ValueError(f"clip {video.name} has {len(video.frames)} frames: too few for a gap of {gap}")
        frames, tf = _frames(video, size, device)
        frames = frames[times]
        out = analyze_pairs(
            method.encoder, method.teacher_encoder, method.dynamics, frames[:-1], frames[1:], cfg, generator
        )
        centres = token_centres(out.grid, patch)
        query = tf.inverse().apply(centres).numpy()
        # Per pair: where does the content under each source token centre go?
        pair_xy, pair_ok = [], []
        for t0, t1 in zip(times[:-1], times[1:], strict=True):
            xy, vis = video.track(query, t0=t0)
            target = tf.apply(torch.from_numpy(xy[t1]))
            pair_xy.append(target)
            pair_ok.append(torch.from_numpy(vis[t0] & vis[t1]) & inside(target, (size, size)))
        pair_xy, pair_ok = torch.stack(pair_xy), torch.stack(pair_ok)
        hits.append(peak_hits(out.heatmaps.cpu(), pair_xy, pair_ok, patch, out.grid))
        # Chained tracking of every token centre of the first frame.
        xy, vis = video.track(query, t0=0)
        gt = tf.apply(torch.from_numpy(xy[times]))
        gt_vis = torch.from_numpy(vis[times]) & inside(gt, (size, size))
        start = torch.arange(centres.shape[0])
        chains = chain_tracks(out.heatmaps, out.source_features, out.target_features, start.to(device), cfg.top_k)
        chains = {k: c.cpu() for k, c in chains.items()}
        tokens.append(chains)
        tracks.append(gt)
        visible.append(gt_vis)
        if v < figures:
            moved = (pair_xy[0] - centres).norm(dim=-1).masked_fill(~pair_ok[0], -1.0)
            chosen = moved.topk(min(4, int(pair_ok[0].sum().clamp(min=1)))).indices.tolist()
            plot_heatmaps(frames[0].cpu(), frames[1].cpu(), out.heatmaps[0].cpu(), chosen, patch, out.grid,
                          out_dir / f"heatmaps_{video.name}.png", pair_xy[0])  # fmt: skip
            few = moved.topk(min(8, len(moved))).indices
            plot_tracks(frames.cpu(), {k: c[:, few] for k, c in chains.items()}, gt[:, few], patch, out.grid,
                        out_dir / f"tracks_{video.name}.png")  # fmt: skip
    return _summarise(hits, tokens, tracks, visible, patch, out.grid)


def _summarise(
    hits: list[dict], tokens: list[dict], tracks: list, visible: list, patch: int, grid: tuple[int, int]
) -> dict[str, float | None]:
    valid = torch.cat([h["valid"].flatten() for h in hits])
    if not valid.any():
        raise ValueError("no source token has a visible ground-truth target; use more clips or a smaller gap")
    moved = torch.cat([h["moved"].flatten() for h in hits]) & valid
    metrics = {"pairs": float(sum(h["valid"].shape[0] for h in hits)), "tokens_scored": float(valid.sum())}
    metrics["moved_fraction"] = (moved.sum() / valid.sum()).item()
    for key in ("within1", "exact", "identity"):
        hit = torch.cat([h[key].flatten() for h in hits])
        metrics[f"peak_{key}"] = hit[valid].float().mean().item()
        # Tokens whose content left its token: where an identity predictor is wrong (None when there are none).
        metrics[f"peak_{key}_moved"] = hit[moved].float().mean().item() if moved.any() else None
    gt, vis = torch.cat(tracks, dim=1), torch.cat(visible, dim=1)
    for name in tokens[0]:
        scores = tracking_scores(torch.cat([t[name] for t in tokens], dim=1), gt, vis, patch, grid)
        metrics |= {f"track_{name}_{k}": v for k, v in scores.items()}
    return metrics
