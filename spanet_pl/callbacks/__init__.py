from .checkpoints import LastCheckpoint
from .predictions import PredictionWriter
from .segmentation import SegmentationImageLogger

__all__ = ['LastCheckpoint', 'PredictionWriter', 'SegmentationImageLogger']
