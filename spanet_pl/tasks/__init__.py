from .classification import ClassificationModule
from .segmentation import SegmentationModule

__all__ = ['ClassificationModule', 'SegmentationModule']
