"""MGNet Explorer library: the Multi-Glimpse Network, its checkpoints, attacks, corruptions and explanations."""

__version__ = "0.1.0"

from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .data import load_image
from .model import MGNet, MGNetOutput, build_model

__all__ = [
    "__version__",
    "MGNet",
    "MGNetOutput",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
    "CheckpointError",
    "load_image",
]
