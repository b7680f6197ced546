"""Losses."""

from motionrep.losses.dino import DINOLoss, frame_pair_view_mask, single_image_view_mask

__all__ = ["DINOLoss", "frame_pair_view_mask", "single_image_view_mask"]
