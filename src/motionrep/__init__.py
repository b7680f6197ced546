"""motionrep: dense visual representations for recognition and motion from unlabeled video."""

__version__ = "0.1.0"
