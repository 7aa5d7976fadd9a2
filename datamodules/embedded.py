"""Embedded default data: scikit-learn's bundled handwritten digits written into the ImageFolder layout.

1797 8x8 greyscale digits (10 classes, shipped inside scikit-learn, no download) become PNG files under
``train/<digit>/`` and ``val/<digit>/`` (stratified 80/20 split, fixed seed), so quick starts run the real ImageNet
loader unchanged.
"""
import logging
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

from ._files import default_data_dir, materialize_atomically
from .imagenet import ImageNetDataModule

__all__ = ['DigitsDataModule', 'materialize_digits']

_logger = logging.getLogger(__name__)

DIGITS_MANIFEST = 'digits_manifest.json'
DIGITS_VERSION = 1
DIGITS_IMAGE_SIZE = 32
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2


def _write_digits(folder: Path) -> Dict:
    """Write the digits into ``folder/{train,val}/<digit>/<index>.png`` and return the manifest contents."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target
    indices = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        indices, test_size=DIGITS_VAL_FRACTION, stratify=labels, random_state=DIGITS_SPLIT_SEED)
    counts = {}
    for split, split_idx in (('train', train_idx), ('val', val_idx)):
        for i in sorted(split_idx):
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


class DigitsDataModule(ImageNetDataModule):
    """scikit-learn's digits as a small real ImageFolder data set, served by ``ImageNetDataModule`` unchanged.

    Defaults suit 32x32 digits: no flips (digits must not be mirrored), no RandAugment/erasing/Mixup, mild crops.
    Arguments are those of ``ImageNetDataModule``; only ``root`` differs.

    Args:
        root: cache folder of the materialised tree; default ``$SPANET_PL_DATA/digits`` or
            ``~/.cache/spanet_pl/digits``. Written on first use.
    """

    def __init__(
            self,
            root: Optional[str] = None,
            batch_size: int = 64,
            eval_batch_size: Optional[int] = None,
            num_workers: int = 2,
            pin_memory: bool = True,
            persistent_workers: bool = True,
            img_size: int = 32,
            crop_pct: Optional[float] = 1.0,
            mean: Optional[Tuple[float, float, float]] = (0.5, 0.5, 0.5),
            std: Optional[Tuple[float, float, float]] = (0.5, 0.5, 0.5),
            interpolation: Optional[str] = None,
            auto_augment: Optional[str] = None,
            re_prob: float = 0.0,
            hflip: float = 0.0,
            scale: Tuple[float, float] = (0.7, 1.0),
            color_jitter: float = 0.0,
            mixup_alpha: float = 0.0,
            cutmix_alpha: float = 0.0,
            mixup_prob: float = 1.0,
            mixup_switch_prob: float = 0.5,
            label_smoothing: float = 0.0,
            predict_root: Optional[str] = None,
    ):
        super().__init__(
            root=str(materialize_digits(root)), batch_size=batch_size, eval_batch_size=eval_batch_size,
            num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent_workers, img_size=img_size,
            crop_pct=crop_pct, mean=mean, std=std, interpolation=interpolation, auto_augment=auto_augment,
            re_prob=re_prob, hflip=hflip, scale=scale, color_jitter=color_jitter, mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha, mixup_prob=mixup_prob, mixup_switch_prob=mixup_switch_prob,
            label_smoothing=label_smoothing, predict_root=predict_root,
        )
