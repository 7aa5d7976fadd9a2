"""LightningDataModules: ImageNet-style classification, ADE20K segmentation, and their embedded scikit-learn digits
defaults."""
from ._base import ImagePathDataset
from .ade20k import ADE20K_CLASSES, ADE20KDataModule, SegmentationDataset
from .coco import COCODataModule, COCODetectionDataset
from .coco_scenes import DigitScenesCOCODataModule, materialize_digit_scenes_coco
from .embedded import DigitsDataModule, materialize_digits
from .imagenet import ImageNetDataModule, RobustImageFolder
from .scenes import DigitScenesDataModule, materialize_digit_scenes

__all__ = ['ImageNetDataModule', 'DigitsDataModule', 'RobustImageFolder', 'ImagePathDataset', 'materialize_digits',
           'ADE20KDataModule', 'DigitScenesDataModule', 'SegmentationDataset', 'materialize_digit_scenes',
           'ADE20K_CLASSES', 'COCODataModule', 'COCODetectionDataset', 'DigitScenesCOCODataModule',
           'materialize_digit_scenes_coco']
