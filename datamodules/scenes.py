"""Embedded segmentation default: scenes of scikit-learn's digits written into the ADE20K layout.

Each scene is a 64x64 RGB canvas with a dark, smooth random background and 3-4 digits, one per quadrant at a random
offset inside it (8x8 scikit-learn digits upscaled bicubically to 25-31 px boxes, random bright colours, bold
strokes). The sizes are chosen for CPU speed: a digit spans one or two stride-16 cells, and the segmentation
quickstart learns the digits' identities in under two minutes on 2 cores (96x96 scenes with 35-48 px digits were
still at background-only mIoU after as many steps). Pixel labels come from thresholding the digit's intensity.
Training and validation scenes use disjoint digits (the stratified split of ``datamodules.embedded``). Annotation
values follow ADE20K: 0 = unlabelled (a thin ring around each digit, ignored after reduce_zero_label),
1 = background, 2..11 = digits 0..9; after the reduction 11 classes: background (about 76 % of the pixels) and the
ten digits (about 2 % each).
"""
import logging
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

from ._base import change_defaults
from ._files import default_data_dir, materialize_atomically
from .ade20k import ADE20K_DIR, SPLITS, ADE20KDataModule
from .embedded import DIGITS_SPLIT_SEED, DIGITS_VAL_FRACTION, digits_split

__all__ = ['DigitScenesDataModule', 'materialize_digit_scenes', 'render_digit_scene', 'DIGIT_SCENE_CLASSES']

_logger = logging.getLogger(__name__)

SCENES_MANIFEST = 'digit_scenes_manifest.json'
SCENES_VERSION = 2
SCENES_SEED = 0
SCENE_SIZE = 64
SCENE_COUNTS = {'train': 600, 'val': 120}
DIGITS_PER_SCENE = (3, 4)
DIGIT_SIZE = (20, 25)  # side of the upscaled 8x8 digit cell, pixels (its box adds a blank tenth on each side)
ALPHA_GAIN = 1.5  # opacity = min(1, gain * intensity): bold strokes
LABEL_THRESHOLD = 0.3  # digit intensity (0..1) above which a pixel is the digit
UNLABELLED_THRESHOLD = 0.1  # between the two: the unlabelled ring
DIGIT_SCENE_CLASSES = ('background',) + tuple(str(d) for d in range(10))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark, smooth random colour field with faint pixel noise, float (size, size, 3) in 0..255."""
    coarse = rng.uniform(25, 105, (4, 4, 3)).astype(np.float32)
    smooth = np.stack([
        np.asarray(Image.fromarray(coarse[..., c], mode='F').resize((size, size), Image.Resampling.BICUBIC))
        for c in range(3)], axis=-1)
    return smooth + rng.normal(0, 4, (size, size, 3)).astype(np.float32)


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A bright random colour: the digit's identity is in its shape, never in its colour."""
    hsv = np.array([[[rng.integers(0, 256), rng.integers(60, 200), rng.integers(215, 256)]]], dtype=np.uint8)
    return np.asarray(Image.fromarray(hsv, mode='HSV').convert('RGB'), dtype=np.float32)[0, 0]


def _cell_size(side: int) -> int:
    """Side of a digit's box: the upscaled 8x8 cell plus one blank source pixel of margin on each side."""
    return round(side * 10 / 8)


def _upscale(digit: np.ndarray, box: int) -> np.ndarray:
    # The blank margin makes strokes touching the 8x8 border fade out instead of being cut.
    big = Image.fromarray(np.pad(digit, 1), mode='F').resize((box, box), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(big), 0, 1)


def render_digit_scene(
        rng: np.random.Generator, digits: np.ndarray, targets: np.ndarray, pool: np.ndarray, size: int = SCENE_SIZE,
) -> Tuple[np.ndarray, np.ndarray]:
    """One scene: ``(uint8 RGB (size, size, 3), uint8 ADE20K-style labels (size, size))``.

    Args:
        rng: the scene's random generator.
        digits: all digit intensities, ``(N, 8, 8)`` in ``[0, 1]``.
        targets: their classes.
        pool: indices into ``digits`` this split may use.
        size: canvas side.
    """
    canvas = _background(rng, size)
    labels = np.ones((size, size), dtype=np.uint8)
    quadrant = size // 2
    count = int(rng.integers(DIGITS_PER_SCENE[0], DIGITS_PER_SCENE[1] + 1))
    for q in rng.permutation(4)[:count]:  # one digit per quadrant, jittered inside it: never overlapping
        box = min(_cell_size(int(rng.integers(DIGIT_SIZE[0], DIGIT_SIZE[1] + 1))), quadrant)
        top, left = (int(v) for v in rng.integers(0, quadrant - box + 1, 2) + quadrant * np.array(divmod(q, 2)))
        index = int(rng.choice(pool))
        intensity = _upscale(digits[index], box)
        alpha = np.minimum(intensity * ALPHA_GAIN, 1)[..., None]
        window = (slice(top, top + box), slice(left, left + box))
        canvas[window] = canvas[window] * (1 - alpha) + _colour(rng) * alpha
        labels[window][intensity > UNLABELLED_THRESHOLD] = 0
        labels[window][intensity > LABEL_THRESHOLD] = 2 + int(targets[index])
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), labels


def _write_scenes(folder: Path, counts: Optional[Dict[str, int]] = None) -> Dict:
    """Write the scenes into ``folder/ADEChallengeData2016`` and return the manifest contents.

    Args:
        folder: target folder.
        counts: scenes per split (``'train'``, ``'val'``); default ``SCENE_COUNTS``. Scene ``i`` of a split depends
            only on the seed, the split and ``i``, so a smaller count writes a prefix of the full set.
    """
    counts = dict(SCENE_COUNTS, **(counts or {}))
    digits, targets, pools = digits_split()
    digits = (digits / 16.0).astype(np.float32)  # intensities in 0..1
    base = folder / ADE20K_DIR
    pixels = {}
    for split_id, (stage, split) in enumerate(SPLITS.items()):
        image_dir, annotation_dir = base / 'images' / split, base / 'annotations' / split
        image_dir.mkdir(parents=True)
        annotation_dir.mkdir(parents=True)
        histogram = np.zeros(256, dtype=np.int64)
        prefix = 'ADE_train' if stage == 'train' else 'ADE_val'
        for i in range(counts[stage]):
            rng = np.random.default_rng([SCENES_SEED, split_id, i])
            image, labels = render_digit_scene(rng, digits, targets, pools[stage])
            name = f'{prefix}_{i + 1:08d}'
            Image.fromarray(image, mode='RGB').save(image_dir / f'{name}.jpg', quality=95)
            Image.fromarray(labels, mode='L').save(annotation_dir / f'{name}.png')
            histogram += np.bincount(labels.ravel(), minlength=256)
        pixels[stage] = {str(v): int(histogram[v]) for v in np.flatnonzero(histogram)}
    return {
        'source': 'sklearn.datasets.load_digits', 'layout': 'ADE20K', 'image_size': SCENE_SIZE, 'seed': SCENES_SEED,
        'digits_split_seed': DIGITS_SPLIT_SEED, 'digits_val_fraction': DIGITS_VAL_FRACTION, 'counts': counts,
        'annotation_values': {'0': 'unlabelled', '1': 'background', '2..11': 'digits 0..9'},
        'classes': list(DIGIT_SCENE_CLASSES), 'annotation_pixels': pixels,
    }


def materialize_digit_scenes(root: Optional[str] = None) -> Path:
    """Write the digit scenes in the ADE20K layout once (atomically) and return the folder holding
    ``ADEChallengeData2016``.

    Args:
        root: target folder; default ``$SPANET_PL_DATA/digit_scenes`` or ``~/.cache/spanet_pl/digit_scenes``.
    """
    path = Path(root).expanduser() if root else default_data_dir('digit_scenes')
    materialize_atomically(path, _write_scenes, SCENES_MANIFEST, SCENES_VERSION, owned_names=(ADE20K_DIR,))
    return path


@change_defaults(
    root=None, batch_size=16, eval_batch_size=16, num_workers=2, num_classes=len(DIGIT_SCENE_CLASSES),
    crop_size=(SCENE_SIZE, SCENE_SIZE), scale=(SCENE_SIZE, SCENE_SIZE), ratio_range=(0.75, 1.5), cat_max_ratio=1.0,
    hflip=0.0, class_names=DIGIT_SCENE_CLASSES)
class DigitScenesDataModule(ADE20KDataModule):
    """Digit scenes as a small real ADE20K-layout data set, served by ``ADE20KDataModule`` unchanged.

    11 classes after reduce_zero_label (``background``, ``0``..``9``), 600 training and 120 validation 64x64 scenes.
    Arguments are those of ``ADE20KDataModule`` with defaults for CPU (the decorator above): 64x64 crops of scenes
    rescaled by 0.75-1.5, no flips (digits must not be mirrored), no cat_max_ratio (the background covers about
    80 % of every scene, so the check would always fail), validation at the native size in batches of 16 (all
    scenes are 64x64, so nothing is padded). ``root`` is the cache folder of the materialised tree, default
    ``$SPANET_PL_DATA/digit_scenes`` or ``~/.cache/spanet_pl/digit_scenes``, written on first use.
    """

    @staticmethod
    def adapt_arguments(arguments: dict) -> dict:
        return dict(arguments, root=str(materialize_digit_scenes(arguments['root'])))
