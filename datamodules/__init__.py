"""LightningDataModules: ImageNet-style classification and its embedded scikit-learn digits default."""
from .embedded import DigitsDataModule, materialize_digits
from .imagenet import ImageNetDataModule, ImagePathDataset, RobustImageFolder

__all__ = ['ImageNetDataModule', 'DigitsDataModule', 'RobustImageFolder', 'ImagePathDataset', 'materialize_digits']
