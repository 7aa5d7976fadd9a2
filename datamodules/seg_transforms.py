"""Segmentation transforms and batching for image + mask pairs, as mmsegmentation's ADE20K pipeline.

Random rescale (ratio of a (long, short) edge bound, aspect kept), random crop with ``cat_max_ratio``, photometric
distortion, and the wrapper that sends a PIL image and its label array through torchvision ``transforms.v2`` ops as
``tv_tensors.Image`` / ``tv_tensors.Mask``; ``pad_collate`` batches pairs of different sizes.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from typing_extensions import override

__all__ = ['IGNORE_INDEX', 'rescale_size', 'RandomRescale', 'SegRandomCrop', 'PhotoMetricDistortion',
           'SegmentationTransform', 'pad_collate']

IGNORE_INDEX = 255
_CAT_MAX_TRIES = 10  # mmseg's RandomCrop


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
