from .classification import ClassificationModule
from .detection import DetectionModule
from .segmentation import SegmentationModule

__all__ = ['ClassificationModule', 'SegmentationModule', 'DetectionModule']
