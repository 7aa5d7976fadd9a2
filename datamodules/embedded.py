"""Embedded default data: scikit-learn's bundled handwritten digits written into the ImageFolder layout.

1797 8x8 greyscale digits (10 classes, shipped inside scikit-learn, no download) become PNG files under
``train/<digit>/`` and ``val/<digit>/`` (stratified 80/20 split, fixed seed), so quick starts run the real ImageNet
loader unchanged. The same split keeps the digit scenes' training and validation digits apart (``scenes.py``).
"""
import logging
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

from ._base import change_defaults
from ._files import default_data_dir, materialize_atomically
from .imagenet import ImageNetDataModule

__all__ = ['DigitsDataModule', 'materialize_digits', 'digits_split']

_logger = logging.getLogger(__name__)

DIGITS_MANIFEST = 'digits_manifest.json'
DIGITS_VERSION = 1
DIGITS_IMAGE_SIZE = 32
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2


def digits_split() -> Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]:
    """scikit-learn's digits and their stratified train/val split (fixed seed), the one split every embedded data set
    uses.

    Returns:
        ``(images (N, 8, 8) float in 0..16, labels (N,), {'train': sorted indices, 'val': sorted indices})``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train_idx, val_idx = train_test_split(
        np.arange(len(digits.target)), test_size=DIGITS_VAL_FRACTION, stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED)
    return digits.images, digits.target, {'train': np.sort(train_idx), 'val': np.sort(val_idx)}


def _write_digits(folder: Path) -> Dict:
    """Write the digits into ``folder/{train,val}/<digit>/<index>.png`` and return the manifest contents."""
    images, labels, splits = digits_split()
    images = np.clip(np.rint(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    counts = {}
    for split, split_idx in splits.items():
        for i in split_idx:
            class_dir = folder / split / str(labels[i])
            class_dir.mkdir(parents=True, exist_ok=True)
            # Stored upscaled: RandomResizedCrop picks whole-pixel boxes, which at 8x8 allows only a few crop scales.
            image = Image.fromarray(images[i], mode='L').resize(
                (DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE), Image.Resampling.BILINEAR)
            image.save(class_dir / f'{i:04d}.png')
        counts[split] = len(split_idx)
    return {
        'source': 'sklearn.datasets.load_digits', 'image_size': DIGITS_IMAGE_SIZE, 'seed': DIGITS_SPLIT_SEED,
        'val_fraction': DIGITS_VAL_FRACTION, 'num_classes': int(labels.max()) + 1, 'counts': counts,
    }


def materialize_digits(root: Optional[str] = None) -> Path:
    """Write the digits ImageFolder tree once (atomically) and return its root.

    Args:
        root: target folder; default ``$SPANET_PL_DATA/digits`` or ``~/.cache/spanet_pl/digits``.
    """
    path = Path(root).expanduser() if root else default_data_dir('digits')
    materialize_atomically(path, _write_digits, DIGITS_MANIFEST, DIGITS_VERSION, owned_names=('train', 'val'))
    return path


@change_defaults(
    root=None, batch_size=64, num_workers=2, img_size=32, crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    auto_augment=None, re_prob=0.0, hflip=0.0, scale=(0.7, 1.0), color_jitter=0.0, mixup_alpha=0.0, cutmix_alpha=0.0,
    label_smoothing=0.0)
class DigitsDataModule(ImageNetDataModule):
    """scikit-learn's digits as a small real ImageFolder data set, served by ``ImageNetDataModule`` unchanged.

    Arguments are those of ``ImageNetDataModule`` with defaults for 32x32 digits (the decorator above): no flips
    (digits must not be mirrored), no RandAugment/erasing/Mixup, mild crops. ``root`` is the cache folder of the
    materialised tree, default ``$SPANET_PL_DATA/digits`` or ``~/.cache/spanet_pl/digits``, written on first use.
    """

    @staticmethod
    def adapt_arguments(arguments: dict) -> dict:
        return dict(arguments, root=str(materialize_digits(arguments['root'])))
