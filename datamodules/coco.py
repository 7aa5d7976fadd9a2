"""COCO object detection and instance segmentation data (``instances_*.json``) through pycocotools.

Layout: ``<root>/annotations/instances_{train2017,val2017}.json`` and the images in ``<root>/{train2017,val2017}/``.
Categories (any ids, e.g. COCO's 80 of 1..90) become the contiguous labels 1..K in id order; label 0 is background,
as torchvision's detectors expect. Training drops crowd annotations and the images left without any annotation
(mmdetection's ``filter_empty_gt``, torchvision's reference scripts); evaluation keeps every image and hands crowd
regions and the annotations' ``area`` to the metric, as COCOeval uses them.

Bad input: a missing folder or file, malformed JSON, a record without a required key, an annotation of an unknown
category or of an unknown image each raise one line naming the file, the record and the value before training
starts. A box that lies (partly) outside its image is clipped to it; one left empty is skipped with a warning. An
image that cannot be read, or whose size differs from its record, is logged and replaced by the next one (a long run
never dies on one bad file).
"""
import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F
from typing_extensions import override

from spanet_pl.errors import MissingPathError, UserInputError

from ._base import ImagePathDataset, RobustLoading, SplitDataModule
from ._files import first_names
from .det_transforms import detection_collate, detection_eval_transform, detection_train_transform

__all__ = ['COCODataModule', 'COCODetectionDataset', 'read_coco', 'annotation_path', 'CLIP_TOLERANCE']

_logger = logging.getLogger(__name__)

CLIP_TOLERANCE = 1.0  # pixels a box may stick out of its image before the clipping is reported
_REQUIRED = {'images': ('id', 'file_name', 'width', 'height'), 'annotations': ('id', 'image_id', 'category_id', 'bbox'),
             'categories': ('id', 'name')}


def annotation_path(root: Path, split: str) -> Path:
    """``<root>/annotations/instances_<split>.json``."""
    return root / 'annotations' / f'instances_{split}.json'


def _check_records(data: Any, path: Path) -> None:
    if not isinstance(data, dict):
        raise UserInputError(f'{path}: expected a JSON object with images, annotations and categories, got '
                             f'{type(data).__name__}')
    for key, fields in _REQUIRED.items():
        records = data.get(key)
        if not isinstance(records, list):
            raise UserInputError(f'{path}: the key {key!r} is missing or not a list')
        for i, record in enumerate(records):
            missing = [f for f in fields if not isinstance(record, dict) or f not in record]
            if missing:
                raise UserInputError(f'{path}: {key}[{i}] has no {", ".join(map(repr, missing))}')
    for i, ann in enumerate(data['annotations']):
        box = ann['bbox']
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise UserInputError(f'{path}: annotations[{i}] (id {ann["id"]}) has bbox {box!r}; expected [x, y, w, h]')


def read_coco(path: Path) -> COCO:
    """The pycocotools ``COCO`` index of an ``instances_*.json`` file, with its records checked.

    Raises:
        MissingPathError: no such file.
        UserInputError: malformed JSON, a missing key, or an annotation of an unknown image or category.
    """
    if not path.is_file():
        raise MissingPathError(f'annotation file {path} does not exist')
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise UserInputError(f'{path}: malformed JSON ({error})') from error
    _check_records(data, path)
    images = {image['id'] for image in data['images']}
    categories = {category['id'] for category in data['categories']}
    for i, ann in enumerate(data['annotations']):
        if ann['image_id'] not in images:
            raise UserInputError(f'{path}: annotations[{i}] (id {ann["id"]}) refers to image_id {ann["image_id"]}, '
                                 'which is not in images')
        if ann['category_id'] not in categories:
            raise UserInputError(f'{path}: annotations[{i}] (id {ann["id"]}) has unknown category_id '
                                 f'{ann["category_id"]!r}; categories: {first_names(sorted(map(str, categories)), 10)}')
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


def _clean_boxes(coco: COCO, path: Path) -> Dict[int, List[Tuple[dict, List[float]]]]:
    """Per image id: ``(annotation, [x1, y1, x2, y2] clipped to the image)`` of every annotation whose clipped box
    has an area; the others are logged and skipped."""
    kept: Dict[int, List[Tuple[dict, List[float]]]] = {}
    skipped, clipped = [], []
    for image_id, image in coco.imgs.items():
        width, height = image['width'], image['height']
        kept[image_id] = []
        for ann in coco.imgToAnns.get(image_id, []):
            x, y, w, h = ann['bbox']
            box = [max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)]
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                skipped.append(f'id {ann["id"]} bbox {ann["bbox"]} in image {image_id} ({width}x{height})')
                continue
            if x < -CLIP_TOLERANCE or y < -CLIP_TOLERANCE or x + w > width + CLIP_TOLERANCE \
                    or y + h > height + CLIP_TOLERANCE:
                clipped.append(f'id {ann["id"]}')
            kept[image_id].append((ann, box))
    if skipped:
        _logger.warning('%s: skipped %d annotations whose box is empty or outside its image: %s', path, len(skipped),
                        first_names(skipped, 3))
    if clipped:
        _logger.warning('%s: clipped %d boxes reaching out of their image by more than %g px: %s', path, len(clipped),
                        CLIP_TOLERANCE, first_names(clipped, 5))
    return kept


class COCODetectionDataset(RobustLoading, Dataset):
    """Images of a COCO index served as ``(float image (3, H, W) in [0, 1], target)``.

    The target holds ``boxes`` (float32 (N, 4), XYXY pixels), ``labels`` (int64, 1..K), ``image_id``, and
    ``masks`` (uint8 (N, H, W)) with ``with_masks``; for evaluation also ``iscrowd`` and ``area`` (the annotation's,
    as COCOeval reads it). Image and target go through ``transform`` (torchvision ``v2`` on ``tv_tensors``).

    Args:
        image_dir: folder of the ``file_name`` paths.
        coco: the split's index (``read_coco``).
        label_of: category id -> label.
        train: drop crowd annotations and images without any annotation left; else keep everything.
        transform: ``v2`` transform over ``(tv_tensors.Image, target)``.
        with_masks: decode instance masks.
        max_consecutive_failures: raise once this many images in a row are unreadable.
        source: the annotation file, named in warnings.
    """

    def __init__(self, image_dir: Path, coco: COCO, label_of: Dict[int, int], train: bool,
                 transform: Optional[Callable] = None, with_masks: bool = True, max_consecutive_failures: int = 50,
                 source: Optional[Path] = None):
        source = source or image_dir
        boxes = _clean_boxes(coco, source)
        self.coco, self.label_of, self.train = coco, label_of, train
        self.transform, self.with_masks = transform, with_masks
        self.annotations = {i: [(a, b) for a, b in anns if not (train and a.get('iscrowd', 0))]
                            for i, anns in boxes.items()}
        self.image_ids = sorted(i for i, anns in self.annotations.items() if anns or not train)
        if train and len(self.image_ids) < len(self.annotations):
            _logger.info('%s: %d of %d training images have no annotation and are left out, as COCO training does',
                         source, len(self.annotations) - len(self.image_ids), len(self.annotations))
        self.paths = [str(image_dir / coco.imgs[i]['file_name']) for i in self.image_ids]
        self._size_of = {path: (coco.imgs[i]['width'], coco.imgs[i]['height'])
                         for path, i in zip(self.paths, self.image_ids)}
        self.loader = self._read
        self.max_consecutive_failures = max_consecutive_failures
        self.bad_files = {}

    def __len__(self) -> int:
        return len(self.image_ids)

    def _path(self, index: int) -> str:
        return self.paths[index]

    def _read(self, path: str) -> Image.Image:
        with open(path, 'rb') as f:
            image = Image.open(f).convert('RGB')
        if image.size != self._size_of[path]:  # a ValueError: logged and skipped like an unreadable file
            width, height = self._size_of[path]
            raise ValueError(f'image is {image.width}x{image.height} but its record says {width}x{height}')
        return image

    def target(self, index: int) -> Dict[str, torch.Tensor]:
        """The target of image ``index`` before any transform (plain tensors)."""
        image_id = self.image_ids[index]
        anns = self.annotations[image_id]
        target = {
            'boxes': torch.tensor([box for _, box in anns], dtype=torch.float32).reshape(-1, 4),
            'labels': torch.tensor([self.label_of[a['category_id']] for a, _ in anns], dtype=torch.int64),
            'image_id': torch.tensor(image_id),
        }
        if not self.train:
            target['iscrowd'] = torch.tensor([int(a.get('iscrowd', 0)) for a, _ in anns], dtype=torch.int64)
            target['area'] = torch.tensor([float(a.get('area', (b[2] - b[0]) * (b[3] - b[1]))) for a, b in anns],
                                          dtype=torch.float32)
        if self.with_masks:
            record = self.coco.imgs[image_id]
            masks = [self.coco.annToMask(a) if a.get('segmentation') else _box_mask(b, record) for a, b in anns]
            target['masks'] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(
                (0, record['height'], record['width']), dtype=torch.uint8)
        return target

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        index, image = self._load(index)
        target = self.target(index)
        wrapped = dict(target, boxes=tv_tensors.BoundingBoxes(target['boxes'], format='XYXY',
                                                               canvas_size=(image.height, image.width)))
        if 'masks' in target:
            wrapped['masks'] = tv_tensors.Mask(target['masks'])
        image = tv_tensors.Image(F.pil_to_tensor(image))
        if self.transform is not None:
            image, wrapped = self.transform(image, wrapped)
        return image.as_subclass(torch.Tensor), {k: v.as_subclass(torch.Tensor) for k, v in wrapped.items()}


def _box_mask(box: Sequence[float], record: dict) -> np.ndarray:
    # an annotation without a segmentation (detection-only data) gets its box as mask
    mask = np.zeros((record['height'], record['width']), dtype=np.uint8)
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    mask[y1:y2, x1:x2] = 1
    return mask


class COCODataModule(SplitDataModule):
    """COCO (or any data set in its layout) for object detection and instance segmentation.

    ``num_classes`` and ``classes`` come from the validation file's categories (read in ``__init__``, so that the
    CLI can link them to the model); the training file must have the same categories.
    Batches: ``([float images (3, H_i, W_i) in [0, 1]], [targets])`` (see ``COCODetectionDataset``).
    Predict batches: ``(images, indices)`` over the validation images (or ``predict_root``'s).

    Args:
        root: folder holding ``annotations/`` and the split folders.
        batch_size: training images per device (the papers: 16 in total, e.g. 8 GPUs x 2).
        eval_batch_size: validation/test/predict images per device; default ``batch_size``.
        num_workers: DataLoader worker processes per device.
        pin_memory: pin host memory (only when an accelerator is present).
        persistent_workers: keep workers alive between epochs (only when ``num_workers > 0``).
        train_split: training split name (``annotations/instances_<name>.json``, images in ``<name>/``).
        val_split: validation split name.
        with_masks: decode instance masks (Mask R-CNN, and mask AP); False for box-only detectors.
        scales: training short sides, one drawn per image (1x: ``[800]``; 3x: 480, 512, ..., 800).
        max_size: long-side cap of the training resizes.
        hflip: horizontal flip probability.
        crop_scales: the 3x recipe's crop branch (``[400, 500, 600]``), None for none.
        crop_size: ``(low, high)`` side range of the crop branch.
        predict_root: folder whose images (recursive) ``predict`` serves; default the validation images.
    """

    collate_fn = staticmethod(detection_collate)

    def __init__(
            self,
            root: str,
            batch_size: int = 2,
            eval_batch_size: Optional[int] = None,
            num_workers: int = 4,
            pin_memory: bool = True,
            persistent_workers: bool = True,
            train_split: str = 'train2017',
            val_split: str = 'val2017',
            with_masks: bool = True,
            scales: Sequence[int] = (800,),
            max_size: int = 1333,
            hflip: float = 0.5,
            crop_scales: Optional[Sequence[int]] = None,
            crop_size: Tuple[int, int] = (384, 600),
            predict_root: Optional[str] = None,
    ):
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers, predict_root)
        self.save_hyperparameters()
        if not 0 <= hflip <= 1:
            raise UserInputError(f'hflip={hflip} must be a probability in [0, 1]')
        if any(int(s) < 1 for s in list(scales) + list(crop_scales or [])) or max_size < 1:
            raise UserInputError(f'scales={list(scales)}, crop_scales={crop_scales} and max_size={max_size} must be '
                                 'positive')
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise MissingPathError(f'data root {self.root} does not exist or is not a folder; expected '
                                   f'<root>/annotations/instances_{{{train_split},{val_split}}}.json and '
                                   f'<root>/{{{train_split},{val_split}}}/')
        self.splits = {'train': train_split, 'val': val_split}
        for split in self.splits.values():
            if not (self.root / split).is_dir():
                raise MissingPathError(f'data root {self.root} has no image folder {split}/')
        self.cocos: Dict[str, COCO] = {'val': self._read('val')}
        categories = sorted(self.cocos['val'].cats.values(), key=lambda c: c['id'])
        self.label_of = {c['id']: i + 1 for i, c in enumerate(categories)}
        self.classes = [str(c['name']) for c in categories]
        self.num_classes = len(self.classes)
        if self.num_classes < 1:
            raise UserInputError(f'{annotation_path(self.root, val_split)} has no categories')
        self.with_masks = with_masks
        self.train_transform = detection_train_transform(scales, max_size, hflip, crop_scales, crop_size)
        self.eval_transform = detection_eval_transform()

    def _read(self, stage: str) -> COCO:
        return read_coco(annotation_path(self.root, self.splits[stage]))

    def _dataset(self, stage: str) -> COCODetectionDataset:
        if stage not in self.cocos:
            self.cocos[stage] = self._read(stage)
            ours = {c['id']: c['name'] for c in self.cocos['val'].cats.values()}
            theirs = {c['id']: c['name'] for c in self.cocos[stage].cats.values()}
            if ours != theirs:
                raise UserInputError(f'{annotation_path(self.root, self.splits[stage])} and '
                                     f'{annotation_path(self.root, self.splits["val"])} have different categories')
        train = stage == 'train'
        return COCODetectionDataset(self.root / self.splits[stage], self.cocos[stage], self.label_of, train,
                                    self.train_transform if train else self.eval_transform, self.with_masks,
                                    source=annotation_path(self.root, self.splits[stage]))

    @override
    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, 'fit') and self.train_dataset is None:
            dataset = self._dataset('train')
            if len(dataset) < self.batch_size:
                raise UserInputError(f'{self.root / self.splits["train"]} has {len(dataset)} annotated images, '
                                     f'fewer than batch_size={self.batch_size}')
            self.train_dataset = dataset
        if stage in (None, 'fit', 'validate', 'test') and self.val_dataset is None:
            self.val_dataset = self._dataset('val')
        if stage in (None, 'predict') and self.predict_dataset is None:
            self.predict_paths = self._predict_paths(lambda: self._dataset('val').paths)
            self.predict_dataset = ImagePathDataset(self.predict_paths, transform=_to_float)


def _to_float(image: Image.Image) -> torch.Tensor:
    return F.to_dtype(F.pil_to_tensor(image.convert('RGB')), torch.float32, scale=True)
