from .checkpoints import LastCheckpoint
from .detection import DetectionImageLogger
from .metrics import MetricsJSON
from .predictions import PredictionWriter
from .segmentation import SegmentationImageLogger
from .spectral import FourierSpectrumLogger, SpectralFilterLogger

__all__ = ['LastCheckpoint', 'MetricsJSON', 'PredictionWriter', 'SegmentationImageLogger', 'FourierSpectrumLogger',
           'SpectralFilterLogger', 'DetectionImageLogger']
