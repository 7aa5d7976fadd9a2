"""ADE20K semantic segmentation data (SceneParsing 150 classes) with mmsegmentation's training pipeline.

Layout: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
``ADEChallengeData2016/annotations/{training,validation}/*.png`` (label PNGs, same stem as their image).
Pipeline as in mmseg's ADE20K configs (Zhou et al., "Scene Parsing through ADE20K Dataset", CVPR 2017):
reduce_zero_label, random rescale (ratio 0.5-2.0 of 2048x512, aspect kept), 512x512 random crop with cat_max_ratio,
horizontal flip, photometric distortion; evaluation at short side 512. Image and mask go through the same
torchvision ``transforms.v2`` ops (``seg_transforms.py``) as ``tv_tensors.Image`` / ``tv_tensors.Mask``.
"""
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from typing_extensions import override

from spanet_pl.callbacks.segmentation import default_palette
from spanet_pl.errors import MissingPathError, UserInputError

from ._base import ImagePathDataset, RobustLoading, SplitDataModule
from ._files import files_by_stem, first_names, is_image_file
from .seg_transforms import (IGNORE_INDEX, PhotoMetricDistortion, RandomRescale, SegmentationTransform, SegRandomCrop,
                             pad_collate)

__all__ = ['ADE20KDataModule', 'SegmentationDataset', 'SegmentationPredictDataset', 'ADE20K_CLASSES',
           'find_ade20k_root', 'list_segmentation_pairs']

_logger = logging.getLogger(__name__)

ADE20K_DIR = 'ADEChallengeData2016'
SPLITS = {'train': 'training', 'val': 'validation'}
ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path',
    'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase',
    'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
    'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel', 'light',
    'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver', 'airplane',
    'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool',
    'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank',
    'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture',
    'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor',
    'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag',
)
assert len(ADE20K_CLASSES) == 150


def is_annotation_file(name: str) -> bool:
    """Whether ``name`` is a label PNG (the only lossless format ADE20K-style annotations come in)."""
    return name.lower().endswith('.png')


def find_ade20k_root(root: Path) -> Path:
    """The ``ADEChallengeData2016`` folder: ``root`` itself or ``root/ADEChallengeData2016``; all four split folders
    must exist.

    Raises:
        MissingPathError: ``root`` or one of ``{images,annotations}/{training,validation}`` is missing.
    """
    expected = (f'expected <root>/images/{{training,validation}}/*.jpg and <root>/annotations/{{training,validation}}/'
                f'*.png, with <root> = {root} or {root / ADE20K_DIR}')
    if not root.is_dir():
        raise MissingPathError(f'data root {root} does not exist or is not a folder; {expected}')
    base = root / ADE20K_DIR if (root / ADE20K_DIR).is_dir() else root
    for kind in ('images', 'annotations'):
        for split in SPLITS.values():
            if not (base / kind / split).is_dir():
                raise MissingPathError(f'data root {base} has no {kind}/{split}/ folder; {expected}')
    return base


def list_segmentation_pairs(image_dir: Path, annotation_dir: Path) -> List[Tuple[str, str]]:
    """Pair every image in ``image_dir`` with the PNG of the same stem in ``annotation_dir`` (two ``scandir`` calls).

    Returns:
        ``(image path, annotation path)`` pairs sorted by image name.

    Raises:
        UserInputError: no image, two images (or annotations) with the same stem, or images without annotation.
    """
    images, image_dups = files_by_stem(image_dir, is_image_file)
    annotations, annotation_dups = files_by_stem(annotation_dir, is_annotation_file)
    for folder, dups in ((image_dir, image_dups), (annotation_dir, annotation_dups)):
        if dups:
            raise UserInputError(f'{folder} holds several files with the same name stem ({first_names(dups)}); '
                                 f'images and annotations are paired by stem')
    if not images:
        raise UserInputError(f'{image_dir} holds no image file')
    missing = sorted(Path(images[stem]).name for stem in images.keys() - annotations.keys())
    if missing:
        raise UserInputError(
            f'{len(missing)} of {len(images)} images in {image_dir} have no annotation <stem>.png in {annotation_dir}: '
            f'{first_names(missing)}')
    orphans = len(annotations.keys() - images.keys())
    if orphans:
        _logger.warning('%d annotations in %s have no image in %s; ignored', orphans, annotation_dir, image_dir)
    return [(images[stem], annotations[stem]) for stem in sorted(images, key=lambda s: Path(images[s]).name)]


def _label_table(reduce_zero_label: bool) -> np.ndarray:
    table = np.arange(256, dtype=np.uint8)
    if reduce_zero_label:
        # mmseg: 0 → 255, v → v - 1, and 255 stays ignored (255 → 254 → 255).
        table = (table.astype(np.int64) - 1).clip(0).astype(np.uint8)
        table[0] = table[255] = IGNORE_INDEX
    return table


class SegmentationDataset(RobustLoading, Dataset):
    """``(image, annotation)`` file pairs served as ``(image, mask)`` through a joint transform.

    An undecodable image or annotation is logged and replaced by the next pair (as in ``RobustImageFolder``). A pair
    that decodes but is wrong — sizes that differ, label values outside ``0..num_classes-1`` after the reduction (255
    always means ignore), a colour (RGB) annotation — raises ``UserInputError``: the data must be fixed.

    Args:
        pairs: ``(image path, annotation path)``.
        num_classes: number of classes after the reduction.
        reduce_zero_label: 0 → 255 (ignore) and ``v`` → ``v - 1`` (ADE20K).
        transform: ``SegmentationTransform``-like callable ``(PIL image, uint8 mask) → (image, mask)``.
        max_consecutive_failures: raise once this many pairs in a row are unreadable.
    """

    def __init__(
            self,
            pairs: Sequence[Tuple[str, str]],
            num_classes: int,
            reduce_zero_label: bool = True,
            transform: Optional[Callable] = None,
            max_consecutive_failures: int = 50,
    ):
        self.pairs = [(str(image), str(annotation)) for image, annotation in pairs]
        self._annotation_of = dict(self.pairs)
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.transform = transform
        self.max_consecutive_failures = max_consecutive_failures
        self.bad_files = {}
        self.loader = self._read_pair
        self._table = _label_table(reduce_zero_label)
        raw_max = num_classes if reduce_zero_label else num_classes - 1
        self._raw_valid = np.zeros(256, dtype=bool)
        self._raw_valid[:raw_max + 1] = True
        self._raw_valid[IGNORE_INDEX] = True

    def __len__(self) -> int:
        return len(self.pairs)

    def _path(self, index: int) -> str:
        return self.pairs[index][0]

    def _read_pair(self, image_path: str) -> Tuple[Image.Image, Image.Image]:
        # Decoding only (both files forced): the checks that raise UserInputError run outside the skip guard.
        with open(image_path, 'rb') as f:
            image = Image.open(f).convert('RGB')
        annotation_path = self._annotation_of[image_path]
        try:
            with Image.open(annotation_path) as annotation:
                annotation.load()
        except OSError as e:
            raise OSError(f'annotation {annotation_path}: {e}') from e
        return image, annotation

    def read_mask(self, image_path: str, image_size: Tuple[int, int], annotation: Image.Image) -> np.ndarray:
        """Check a decoded annotation against its image and return the reduced ``(H, W)`` uint8 label array."""
        annotation_path = self._annotation_of[image_path]
        if annotation.mode not in ('L', 'P', 'I', 'I;16', '1'):
            raise UserInputError(
                f'annotation {annotation_path} has image mode {annotation.mode}; expected a single-channel label PNG '
                f'(mode L or P) with one class index per pixel')
        if annotation.size != image_size:
            raise UserInputError(
                f'annotation {annotation_path} is {annotation.size[0]}x{annotation.size[1]} but its image '
                f'{image_path} is {image_size[0]}x{image_size[1]} (width x height); they must be the same size')
        labels = np.asarray(annotation)
        if labels.dtype == np.uint8:
            present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
        else:
            present = np.unique(labels)
        bad = [int(v) for v in present if not (0 <= v < 256 and self._raw_valid[v])]
        if bad:
            if self.reduce_zero_label:
                meaning = f'expected 0 (ignored), 1..{self.num_classes} (classes 0..{self.num_classes - 1}) or 255'
            else:
                meaning = f'expected 0..{self.num_classes - 1} or 255 (ignored)'
            raise UserInputError(
                f'annotation {annotation_path} has label values {first_names([str(v) for v in bad], 10)} outside '
                f'num_classes={self.num_classes} with reduce_zero_label={self.reduce_zero_label}: {meaning}')
        return self._table[labels.astype(np.uint8, copy=False)]

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        index, (image, annotation) = self._load(index)
        mask = self.read_mask(self.pairs[index][0], image.size, annotation)
        if self.transform is None:
            return image, mask
        return self.transform(image, mask)


class SegmentationPredictDataset(ImagePathDataset):
    """Images to segment, served as ``(image, {'index', 'size', 'input_size'})``: ``index`` points into ``paths``,
    ``size`` is the file's ``(H, W)`` and ``input_size`` the transformed image's, so that predictions can be cropped
    out of a padded batch and resized back to the original image (as mmseg evaluates)."""

    @override
    def __getitem__(self, index: int) -> Tuple[Any, Dict[str, Any]]:
        index, image = self._load(index)
        size = torch.tensor((image.height, image.width))
        if self.transform is not None:
            image = self.transform(image)
        return image, {'index': index, 'size': size, 'input_size': torch.tensor(tuple(image.shape[-2:]))}



class ADE20KDataModule(SplitDataModule):
    """ADE20K (or any data set in its layout) for semantic segmentation, mmseg's ADE20K recipe.

    The layout and the image/annotation pairing are checked in ``__init__`` (before any logger writes). Sizes and label
    values are checked per sample when read, raising ``UserInputError``; undecodable files are logged and skipped.

    Train batches: ``(float32 (B, 3, crop_h, crop_w), int64 (B, crop_h, crop_w))``, ignored pixels (unlabelled and
    crop padding) ``255``. Val/test batches: images resized with ``rescale_size(., scale)`` (short side 512 for
    ADE20K) and masks at their original size, as mmseg evaluates: ``(images, masks, {'size', 'input_size'})`` whenever
    a resize happened (the task resizes each image's logits back before the metrics), else ``(images, masks)``; with
    ``eval_batch_size > 1`` images and masks of different sizes are padded at the bottom/right (image 0, mask 255).
    Predict batches: ``(images, meta)`` over the validation images (or ``predict_root``'s), ``meta`` holding ``index``
    (into ``predict_paths``), the original ``size`` and the ``input_size`` of every image
    (``SegmentationPredictDataset``), so that predicted masks are written at the original size.

    Args:
        root: ``ADEChallengeData2016`` or its parent.
        batch_size: training batch size per device (mmseg: 16 total, the SPANet papers 32 = e.g. 8 GPUs x 4).
        eval_batch_size: validation/test/predict batch size per device.
        num_workers: DataLoader worker processes per device.
        pin_memory: pin host memory (only when an accelerator is present).
        persistent_workers: keep workers alive between epochs (only when ``num_workers > 0``).
        num_classes: classes after the reduction; label values must be below it (or 255).
        reduce_zero_label: annotation 0 → 255 (ignored), ``v`` → ``v - 1`` (ADE20K's label 0 is "other").
        crop_size: training crop ``(height, width)``.
        scale: ``(long, short)`` edge bounds of the rescale; evaluation uses ratio 1.
        ratio_range: training rescale ratio range.
        cat_max_ratio: training crops are redrawn (up to 10 times) while one class covers this share or more of the
            labelled pixels; ``1.0`` disables.
        hflip: horizontal flip probability.
        photometric_distortion: mmseg's PhotoMetricDistortion on training images.
        mean: normalisation mean (images in ``[0, 1]``).
        std: normalisation standard deviation.
        class_names: one name per class; default ADE20K's names when ``num_classes == 150``, else ``class_<i>``.
        predict_root: folder whose images (recursive) ``predict`` segments; default the validation images.
    """

    collate_fn = staticmethod(pad_collate)  # mixed-size eval batches are padded (mask 255)

    def __init__(
            self,
            root: str,
            batch_size: int = 16,
            eval_batch_size: int = 1,
            num_workers: int = 8,
            pin_memory: bool = True,
            persistent_workers: bool = True,
            num_classes: int = 150,
            reduce_zero_label: bool = True,
            crop_size: Tuple[int, int] = (512, 512),
            scale: Tuple[int, int] = (2048, 512),
            ratio_range: Tuple[float, float] = (0.5, 2.0),
            cat_max_ratio: float = 0.75,
            hflip: float = 0.5,
            photometric_distortion: bool = True,
            mean: Tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
            std: Tuple[float, float, float] = IMAGENET_DEFAULT_STD,
            class_names: Optional[Sequence[str]] = None,
            predict_root: Optional[str] = None,
    ):
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers, predict_root)
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.crop_size = tuple(int(v) for v in crop_size)
        self.scale = tuple(int(v) for v in scale)
        self.ratio_range = tuple(float(v) for v in ratio_range)
        self.cat_max_ratio = float(cat_max_ratio)
        self.hflip = float(hflip)
        self.photometric_distortion = photometric_distortion
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.ignore_index = IGNORE_INDEX
        self._check_arguments()
        if class_names is not None:
            self.classes = [str(name) for name in class_names]
            if len(self.classes) != num_classes:
                raise UserInputError(f'class_names has {len(self.classes)} names but num_classes={num_classes}')
        elif num_classes == len(ADE20K_CLASSES):
            self.classes = list(ADE20K_CLASSES)
        else:
            self.classes = [f'class_{i}' for i in range(num_classes)]
        self.palette = default_palette(num_classes).tolist()  # the overlays' colours; black is for ignored pixels

        self.root = find_ade20k_root(Path(root).expanduser())
        self.pairs = {
            stage: list_segmentation_pairs(self.root / 'images' / split, self.root / 'annotations' / split)
            for stage, split in SPLITS.items()
        }
        self.train_transform, self.eval_transform = self._build_transforms()

    def _check_arguments(self) -> None:
        largest = IGNORE_INDEX - int(self.reduce_zero_label)
        if not 1 <= self.num_classes <= largest:
            raise UserInputError(f'num_classes={self.num_classes} must be in 1..{largest} (255 is the ignore label)')
        for key in ('crop_size', 'scale', 'ratio_range'):
            value = getattr(self, key)
            if len(value) != 2 or min(value) <= 0:
                raise UserInputError(f'{key}={value} must be two positive numbers')
        if self.ratio_range[0] > self.ratio_range[1]:
            raise UserInputError(f'ratio_range={self.ratio_range} must be (min, max) with min <= max')
        if not 0 < self.cat_max_ratio:
            raise UserInputError(f'cat_max_ratio={self.cat_max_ratio} must be > 0 (1.0 disables it)')
        if not 0 <= self.hflip <= 1:
            raise UserInputError(f'hflip={self.hflip} must be a probability in [0, 1]')
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UserInputError(f'mean={self.mean} and std={self.std} must have 3 values, std > 0')

    def _build_transforms(self) -> Tuple[SegmentationTransform, SegmentationTransform]:
        to_float = v2.ToDtype({tv_tensors.Image: torch.float32, 'others': None}, scale=True)
        normalize = v2.Normalize(self.mean, self.std)
        train = [
            RandomRescale(self.scale, self.ratio_range),
            SegRandomCrop(self.crop_size, self.cat_max_ratio, IGNORE_INDEX),
            v2.RandomHorizontalFlip(self.hflip),
            to_float,
        ]
        if self.photometric_distortion:
            train.append(PhotoMetricDistortion())
        train.append(normalize)
        evaluation = [RandomRescale(self.scale), to_float, normalize]
        return (SegmentationTransform(v2.Compose(train)),
                SegmentationTransform(v2.Compose(evaluation), image_only=True))

    def _dataset(self, stage: str, transform: Callable) -> SegmentationDataset:
        return SegmentationDataset(self.pairs[stage], self.num_classes, self.reduce_zero_label, transform=transform)

    @override
    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, 'fit') and self.train_dataset is None:
            self.train_dataset = self._check_train_size(self._dataset('train', self.train_transform),
                                                        self.root / 'images' / SPLITS['train'])
        if stage in (None, 'fit', 'validate', 'test') and self.val_dataset is None:
            self.val_dataset = self._dataset('val', self.eval_transform)
        if stage in (None, 'predict') and self.predict_dataset is None:
            self.predict_paths = self._predict_paths(lambda: [image for image, _ in self.pairs['val']])
            self.predict_dataset = SegmentationPredictDataset(self.predict_paths, transform=self.eval_transform)
