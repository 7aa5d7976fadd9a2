"""ADE20K semantic segmentation data (SceneParsing 150 classes) with mmsegmentation's training pipeline.

Layout: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
``ADEChallengeData2016/annotations/{training,validation}/*.png`` (label PNGs, same stem as their image).
Pipeline as in mmseg's ADE20K configs (Zhou et al., "Scene Parsing through ADE20K Dataset", CVPR 2017):
reduce_zero_label, random rescale (ratio 0.5-2.0 of 2048x512, aspect kept), 512x512 random crop with cat_max_ratio,
horizontal flip, photometric distortion; evaluation at short side 512. Image and mask go through the same
torchvision ``transforms.v2`` ops as ``tv_tensors.Image`` / ``tv_tensors.Mask``.
"""
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset, default_collate
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from typing_extensions import override

from spanet_pl.errors import MissingPathError, UserInputError

from ._base import SplitDataModule
from ._files import files_by_stem, first_names, is_image_file, predict_folder, predict_images
from .imagenet import ImagePathDataset, _RobustLoading

__all__ = [
    'ADE20KDataModule', 'SegmentationDataset', 'SegmentationTransform', 'RandomRescale', 'SegRandomCrop',
    'PhotoMetricDistortion', 'ADE20K_CLASSES', 'IGNORE_INDEX', 'find_ade20k_root', 'list_segmentation_pairs',
    'rescale_size', 'make_palette', 'pad_collate',
]

_logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
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
_CAT_MAX_TRIES = 10  # mmseg's RandomCrop


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


def rescale_size(size: Tuple[int, int], scale: Tuple[int, int], ratio: float = 1.0) -> Tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest ``(h, w)`` fitting ``ratio * scale`` read as (long edge, short edge).

    Args:
        size: input ``(height, width)``.
        scale: ``(long, short)`` edge bounds, e.g. ``(2048, 512)`` (any order: the larger value bounds the long edge).
        ratio: multiplier of ``scale``.
    """
    h, w = size
    factor = min(max(scale) * ratio / max(h, w), min(scale) * ratio / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def make_palette(num_classes: int) -> List[List[int]]:
    """A deterministic colour per class (PASCAL VOC's bit-interleaved colour map, shifted by one so that no class is
    black: black is left for ignored pixels)."""
    palette = []
    for index in range(1, num_classes + 1):
        rgb, c = [0, 0, 0], index
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << bit
            c >>= 3
        palette.append(rgb)
    return palette


class RandomRescale(v2.Transform):
    """Resize keeping the aspect ratio to fit ``ratio * scale`` (mmseg's ``Resize(ratio_range=...)``), ratio drawn
    uniformly from ``ratio_range``. Images use bilinear interpolation, masks nearest (torchvision's mask kernel).

    Args:
        scale: ``(long, short)`` edge bounds.
        ratio_range: ``(min, max)`` multiplier; ``(1, 1)`` for the deterministic evaluation resize.
    """

    def __init__(self, scale: Tuple[int, int], ratio_range: Tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)

    @override
    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        low, high = self.ratio_range
        ratio = low + float(torch.rand(())) * (high - low) if high > low else low
        sized = [x for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask))]
        if not sized:
            raise TypeError('RandomRescale needs a tv_tensors.Image or tv_tensors.Mask among its inputs')
        size = tuple(F.get_size(sized[0]))
        new_size = rescale_size(size, self.scale, ratio)
        return {'size': list(new_size), 'unchanged': new_size == size}

    @override
    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        if params['unchanged']:
            return inpt
        return self._call_kernel(F.resize, inpt, params['size'], interpolation=v2.InterpolationMode.BILINEAR,
                                 antialias=True)


class SegRandomCrop(v2.RandomCrop):
    """``v2.RandomCrop`` (pad with image 0 / mask ``ignore_index`` where the input is smaller) that, like mmseg's
    ``RandomCrop(cat_max_ratio=...)``, redraws the window up to 10 times until no single class covers
    ``cat_max_ratio`` or more of its labelled pixels (the last draw is kept otherwise).

    Args:
        size: ``(height, width)`` of the crop.
        cat_max_ratio: largest share of one class in a crop; ``>= 1`` disables the check.
        ignore_index: mask value of ignored (and padded) pixels, not counted.
    """

    def __init__(self, size: Tuple[int, int], cat_max_ratio: float = 1.0, ignore_index: int = IGNORE_INDEX):
        super().__init__(tuple(size), pad_if_needed=True,
                         fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index, 'others': 0})
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    @override
    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        params = super().make_params(flat_inputs)
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        if self.cat_max_ratio >= 1 or mask is None:
            return params
        for _ in range(_CAT_MAX_TRIES - 1):
            if self._balanced(mask, params):
                break
            params = super().make_params(flat_inputs)
        return params

    def _balanced(self, mask: torch.Tensor, params: Dict[str, Any]) -> bool:
        # Window in unpadded coordinates; padding is ignore, so only the overlap with the mask counts.
        pad_left, pad_top = params['padding'][:2]
        top, left = params['top'] - pad_top, params['left'] - pad_left
        window = mask[..., max(top, 0):max(top + params['height'], 0), max(left, 0):max(left + params['width'], 0)]
        counts = torch.bincount(window.reshape(-1).long(), minlength=self.ignore_index + 1)
        counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio


def _rotate_hue(image: torch.Tensor, turns: float) -> torch.Tensor:
    """Rotate the colours of a float ``(3, H, W)`` image in ``[0, 1]`` by ``turns`` of a full circle about the grey
    axis (Rodrigues' formula), clamped back to ``[0, 1]``."""
    angle = 2 * np.pi * turns
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    third, root = (1 - cos) / 3, sin / np.sqrt(3)
    rotation = torch.tensor([
        [cos + third, third - root, third + root],
        [third + root, cos + third, third - root],
        [third - root, third + root, cos + third],
    ], dtype=image.dtype)
    return torch.einsum('ij,j...->i...', rotation, image).clamp_(0, 1)


class PhotoMetricDistortion(v2.Transform):
    """mmseg's ``PhotoMetricDistortion`` on float images in ``[0, 1]``; masks pass through.

    Each step with probability 0.5: brightness ``+U(-32, 32)/255``, contrast ``x U(0.5, 1.5)`` (a plain multiply, as
    in mmseg; before or after the colour steps, at random), saturation ``x U(0.5, 1.5)``, hue shift ``U(-18, 18)``
    OpenCV units (of 180). The hue shift is a rotation of the RGB cube about its grey axis (one 3x3 matrix, ~50x
    cheaper on CPU than a round trip through HSV, and the same angle on the colour wheel).
    """

    def __init__(self, brightness_delta: int = 32, contrast_range: Tuple[float, float] = (0.5, 1.5),
                 saturation_range: Tuple[float, float] = (0.5, 1.5), hue_delta: int = 18):
        super().__init__()
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    @override
    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        def maybe(low: float, high: float) -> Optional[float]:
            return low + float(torch.rand(())) * (high - low) if torch.rand(()) < 0.5 else None

        return {
            'brightness': maybe(-self.brightness_delta / 255, self.brightness_delta / 255),
            'contrast_first': bool(torch.rand(()) < 0.5),
            'contrast': maybe(*self.contrast_range),
            'saturation': maybe(*self.saturation_range),
            'hue': maybe(-self.hue_delta / 180, self.hue_delta / 180),
        }

    @override
    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        if not inpt.is_floating_point():
            raise TypeError('PhotoMetricDistortion expects a float image in [0, 1] (put it after ToDtype)')
        image = inpt.as_subclass(torch.Tensor)
        if params['brightness'] is not None:
            image = (image + params['brightness']).clamp_(0, 1)
        if params['contrast_first'] and params['contrast'] is not None:
            image = (image * params['contrast']).clamp_(0, 1)
        if params['saturation'] is not None:
            image = F.adjust_saturation(image, params['saturation'])
        if params['hue'] is not None:
            image = _rotate_hue(image, params['hue'])
        if not params['contrast_first'] and params['contrast'] is not None:
            image = (image * params['contrast']).clamp_(0, 1)
        return tv_tensors.wrap(image, like=inpt)


class SegmentationTransform:
    """PIL image (and optional ``(H, W)`` uint8 label array) → ``(float image (3, H', W'), int64 mask)``.

    Args:
        ops: a ``v2`` pipeline over ``(tv_tensors.Image uint8, tv_tensors.Mask uint8)``.
        image_only: apply ``ops`` to the image only and return the mask as it was read (evaluation: metrics are
            computed at the annotation's original size, as mmseg does).
    """

    def __init__(self, ops: Callable, image_only: bool = False):
        self.ops = ops
        self.image_only = image_only

    def __call__(self, image: Image.Image, mask: Optional[np.ndarray] = None):
        image = tv_tensors.Image(F.pil_to_tensor(image))
        if mask is None or self.image_only:
            image = self.ops(image).as_subclass(torch.Tensor)
            return image if mask is None else (image, torch.from_numpy(mask).long())
        image, mask = self.ops(image, tv_tensors.Mask(torch.from_numpy(mask)))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.ops}, image_only={self.image_only})'


def _label_table(reduce_zero_label: bool) -> np.ndarray:
    table = np.arange(256, dtype=np.uint8)
    if reduce_zero_label:
        # mmseg: 0 → 255, v → v - 1, and 255 stays ignored (255 → 254 → 255).
        table = (table.astype(np.int64) - 1).clip(0).astype(np.uint8)
        table[0] = table[255] = IGNORE_INDEX
    return table


class SegmentationDataset(_RobustLoading, Dataset):
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


def pad_collate(batch: Sequence[Tuple[torch.Tensor, Any]], ignore_index: int = IGNORE_INDEX):
    """``default_collate``, padding tensors of different sizes at the bottom/right to the largest: images with 0,
    int64 masks with ``ignore_index`` (a non-tensor second element, e.g. predict metadata, is collated as is).

    Pairs whose image was resized but not its mask (evaluation at the original size) are collated as
    ``(images, masks, {'size': (B, 2) mask sizes, 'input_size': (B, 2) image sizes})``, every other batch of pairs as
    ``(images, masks)``.
    """
    seconds = [second for _, second in batch]
    images = _pad_stack([image for image, _ in batch], 0)
    if not (isinstance(seconds[0], torch.Tensor) and seconds[0].dim() == 2):
        return images, default_collate(seconds)
    masks = _pad_stack(seconds, ignore_index)
    input_sizes = [tuple(image.shape[-2:]) for image, _ in batch]
    sizes = [tuple(mask.shape[-2:]) for mask in seconds]
    if input_sizes == sizes:
        return images, masks
    return images, masks, {'size': torch.tensor(sizes), 'input_size': torch.tensor(input_sizes)}


def _pad_stack(tensors: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    height, width = (max(t.shape[-2] for t in tensors), max(t.shape[-1] for t in tensors))
    if all(t.shape[-2:] == (height, width) for t in tensors):
        return default_collate(list(tensors))
    return torch.stack([torch.nn.functional.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value)
                        for t in tensors])


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
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
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
        self.predict_root = predict_folder(predict_root)
        self._check_arguments()
        if class_names is not None:
            self.classes = [str(name) for name in class_names]
            if len(self.classes) != num_classes:
                raise UserInputError(f'class_names has {len(self.classes)} names but num_classes={num_classes}')
        elif num_classes == len(ADE20K_CLASSES):
            self.classes = list(ADE20K_CLASSES)
        else:
            self.classes = [f'class_{i}' for i in range(num_classes)]
        self.palette = make_palette(num_classes)

        self.root = find_ade20k_root(Path(root).expanduser())
        self.pairs = {
            stage: list_segmentation_pairs(self.root / 'images' / split, self.root / 'annotations' / split)
            for stage, split in SPLITS.items()
        }
        self.train_transform, self.eval_transform = self._build_transforms()
        self.train_dataset: Optional[SegmentationDataset] = None
        self.val_dataset: Optional[SegmentationDataset] = None
        self.predict_dataset: Optional[SegmentationPredictDataset] = None
        self.predict_paths: Optional[List[str]] = None

    def _check_arguments(self) -> None:
        for key in ('batch_size', 'eval_batch_size'):
            if getattr(self, key) < 1:
                raise UserInputError(f'{key}={getattr(self, key)} must be >= 1')
        if self.num_workers < 0:
            raise UserInputError(f'num_workers={self.num_workers} must be >= 0')
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
            self.train_dataset = self._dataset('train', self.train_transform)
            if len(self.train_dataset) < self.batch_size:
                raise UserInputError(
                    f'{self.root / "images" / SPLITS["train"]} has {len(self.train_dataset)} images, fewer than '
                    f'batch_size={self.batch_size}; with drop_last no training batch would remain')
        if stage in (None, 'fit', 'validate', 'test') and self.val_dataset is None:
            self.val_dataset = self._dataset('val', self.eval_transform)
        if stage in (None, 'predict') and self.predict_dataset is None:
            if self.predict_root is None:
                self.predict_paths = [image for image, _ in self.pairs['val']]
            else:
                self.predict_paths = predict_images(self.predict_root)
            self.predict_dataset = SegmentationPredictDataset(self.predict_paths, transform=self.eval_transform)

