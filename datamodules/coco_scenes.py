"""Embedded detection default: the digit scenes (``scenes.py``) written as a COCO instance-segmentation data set.

The same 600 + 120 scenes of 3-4 scikit-learn digits (64x64, one digit per quadrant, never overlapping, same seeds)
become ``annotations/instances_{train2017,val2017}.json`` + PNG images in ``train2017/`` and ``val2017/``: one
annotation per digit with its category (``'0'``..``'9'``, ids 1..10), its instance mask as compressed RLE (the
digit's labelled pixels), the mask's tight box and area. ``COCODataModule`` reads it like COCO itself.
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ._base import change_defaults
from ._files import default_data_dir, materialize_atomically
from .coco import COCODataModule
from .embedded import digits_split
from .scenes import SCENE_COUNTS, SCENE_SIZE, SCENES_SEED, render_digit_scene

__all__ = ['DigitScenesCOCODataModule', 'materialize_digit_scenes_coco', 'scene_instances', 'DIGIT_CATEGORIES']

COCO_SCENES_MANIFEST = 'digit_scenes_coco_manifest.json'
COCO_SCENES_VERSION = 1
SPLITS = {'train': 'train2017', 'val': 'val2017'}
DIGIT_CATEGORIES = [{'id': d + 1, 'name': str(d), 'supercategory': 'digit'} for d in range(10)]
_FIRST_DIGIT_LABEL = 2  # the scenes' ADE20K-style values: 0 unlabelled, 1 background, 2..11 digits 0..9


def scene_instances(labels: np.ndarray) -> List[Tuple[int, np.ndarray]]:
    """``(digit, uint8 mask)`` per digit of a rendered scene: one digit per quadrant, so each quadrant's digit
    pixels are one instance."""
    size = labels.shape[0]
    half = size // 2
    instances = []
    for top in (0, half):
        for left in (0, half):
            window = labels[top:top + half, left:left + half]
            digit_pixels = window >= _FIRST_DIGIT_LABEL
            if not digit_pixels.any():
                continue
            mask = np.zeros(labels.shape, dtype=np.uint8)
            mask[top:top + half, left:left + half] = digit_pixels
            digit = int(np.bincount(window[digit_pixels]).argmax()) - _FIRST_DIGIT_LABEL
            instances.append((digit, mask))
    return instances


def _write(folder: Path, counts: Optional[Dict[str, int]] = None) -> Dict:
    counts = dict(SCENE_COUNTS, **(counts or {}))
    digits, targets, pools = digits_split()
    digits = (digits / 16.0).astype(np.float32)
    (folder / 'annotations').mkdir(parents=True)
    instances_per_split = {}
    for split_id, (stage, split) in enumerate(SPLITS.items()):
        (folder / split).mkdir()
        images, annotations = [], []
        for i in range(counts[stage]):
            # the segmentation scenes' seeds: scene i of a split is the same picture in both layouts
            rng = np.random.default_rng([SCENES_SEED, split_id, i])
            image, labels = render_digit_scene(rng, digits, targets, pools[stage])
            file_name = f'{i + 1:012d}.png'
            Image.fromarray(image, mode='RGB').save(folder / split / file_name)
            images.append({'id': i + 1, 'file_name': file_name, 'width': SCENE_SIZE, 'height': SCENE_SIZE})
            for digit, mask in scene_instances(labels):
                rle = mask_utils.encode(np.asfortranarray(mask))
                annotations.append({
                    'id': len(annotations) + 1, 'image_id': i + 1, 'category_id': digit + 1, 'iscrowd': 0,
                    'bbox': [float(v) for v in mask_utils.toBbox(rle)], 'area': float(mask_utils.area(rle)),
                    'segmentation': {'size': list(rle['size']), 'counts': rle['counts'].decode('ascii')},
                })
        with open(folder / 'annotations' / f'instances_{split}.json', 'w') as f:
            json.dump({'info': {'description': 'digit scenes (scikit-learn digits), spanet_pl'}, 'images': images,
                       'annotations': annotations, 'categories': DIGIT_CATEGORIES}, f)
        instances_per_split[stage] = len(annotations)
    return {'source': 'sklearn.datasets.load_digits', 'layout': 'COCO instances', 'image_size': SCENE_SIZE,
            'seed': SCENES_SEED, 'counts': counts, 'instances': instances_per_split}


def materialize_digit_scenes_coco(root: Optional[str] = None, counts: Optional[Dict[str, int]] = None) -> Path:
    """Write the digit scenes in the COCO layout once (atomically) and return the folder.

    Args:
        root: target folder; default ``$SPANET_PL_DATA/digit_scenes_coco`` or ``~/.cache/spanet_pl/digit_scenes_coco``.
        counts: scenes per split (``'train'``, ``'val'``), default 600 and 120; scene ``i`` depends only on the seed,
            the split and ``i``, so a smaller count writes a prefix of the full set (tests).
    """
    path = Path(root).expanduser() if root else default_data_dir('digit_scenes_coco')
    materialize_atomically(path, lambda folder: _write(folder, counts), COCO_SCENES_MANIFEST, COCO_SCENES_VERSION,
                           owned_names=('annotations',) + tuple(SPLITS.values()))
    return path


@change_defaults(root=None, batch_size=8, num_workers=2, scales=(SCENE_SIZE,), max_size=4 * SCENE_SIZE, hflip=0.0)
class DigitScenesCOCODataModule(COCODataModule):
    """The digit scenes as a small real COCO data set, served by ``COCODataModule`` unchanged.

    10 categories (``'0'``..``'9'``), 600 training and 120 validation 64x64 scenes with 3-4 digits each. Arguments
    are those of ``COCODataModule`` with defaults for CPU: native size, no flips (digits must not be mirrored).
    ``root`` is the cache folder of the materialised tree, default ``$SPANET_PL_DATA/digit_scenes_coco`` or
    ``~/.cache/spanet_pl/digit_scenes_coco``, written on first use.
    """

    @staticmethod
    def adapt_arguments(arguments: dict) -> dict:
        return dict(arguments, root=str(materialize_digit_scenes_coco(arguments['root'])))
