from .checkpoints import LastCheckpoint
from .metrics import MetricsJSON
from .predictions import PredictionWriter
from .segmentation import SegmentationImageLogger

__all__ = ['LastCheckpoint', 'MetricsJSON', 'PredictionWriter', 'SegmentationImageLogger']
