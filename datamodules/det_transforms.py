"""Detection transforms and batching: mmdetection's COCO training pipelines in torchvision ``transforms.v2``.

Image, boxes (``tv_tensors.BoundingBoxes``) and instance masks (``tv_tensors.Mask``) go through the same ops; boxes
that lose their area in a crop are removed with their labels and masks (``SanitizeBoundingBoxes``).

* 1x (SPANet's RetinaNet / Mask R-CNN): flip, resize to short side 800 (long side at most 1333).
* 3x (SPANetV2's Mask R-CNN / Cascade, from DETR): flip, then with probability 1/2 a resize to short side 400/500/600
  and a random crop of 384-600 px per side, then a resize to a short side drawn from 480, 512, ..., 800.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from typing_extensions import override

__all__ = ['RandomSizeCrop', 'detection_train_transform', 'detection_eval_transform', 'detection_collate',
           'MULTI_SCALES']

MULTI_SCALES = tuple(range(480, 801, 32))  # the 3x recipe's short sides


class RandomSizeCrop(v2.Transform):
    """Crop a random ``h x w`` window, each side drawn uniformly from ``[low, min(high, side)]`` (mmdet's
    ``RandomCrop(crop_type='absolute_range')``); a side shorter than ``low`` is kept whole. Boxes are clipped to the
    window (remove the empty ones with ``SanitizeBoundingBoxes``); a window without any box is allowed, as mmdet's
    ``allow_negative_crop=True``.

    Args:
        size_range: ``(low, high)`` side lengths in pixels.
    """

    def __init__(self, size_range: Tuple[int, int] = (384, 600)):
        super().__init__()
        low, high = (int(v) for v in size_range)
        if not 0 < low <= high:
            raise ValueError(f'size_range must be (low, high) with 0 < low <= high, got {size_range}')
        self.size_range = (low, high)

    @override
    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        low, high = self.size_range

        def draw(side: int) -> int:
            if side <= low:
                return side
            return int(torch.randint(low, min(high, side) + 1, ()))

        crop_h, crop_w = draw(height), draw(width)
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        return {'top': top, 'left': left, 'height': crop_h, 'width': crop_w}

    @override
    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def detection_train_transform(scales: Sequence[int] = (800,), max_size: int = 1333, hflip: float = 0.5,
                              crop_scales: Optional[Sequence[int]] = None,
                              crop_size: Tuple[int, int] = (384, 600)) -> v2.Compose:
    """The training pipeline over ``(tv_tensors.Image uint8, target dict)``; returns a float image in ``[0, 1]``.

    Args:
        scales: short sides to resize to, one drawn per image (mmdet's ``RandomChoiceResize``), the long side capped
            at ``max_size``; an empty list keeps the size.
        max_size: long-side cap.
        hflip: horizontal flip probability.
        crop_scales: the 3x recipe's crop branch, taken with probability 1/2: resize to one of these short sides,
            crop ``crop_size``, then the common resize. None: no crop branch.
        crop_size: ``(low, high)`` crop side range of the crop branch.
    """
    ops: List[Any] = [v2.RandomHorizontalFlip(hflip)]
    if crop_scales:
        ops.append(v2.RandomChoice([
            v2.Identity(),
            v2.Compose([v2.RandomShortestSize(list(crop_scales), max_size), RandomSizeCrop(crop_size)]),
        ]))
    if scales:
        ops.append(v2.RandomShortestSize(list(scales), max_size))
    ops += [v2.SanitizeBoundingBoxes(min_size=1.0), v2.ToDtype({tv_tensors.Image: torch.float32, 'others': None},
                                                              scale=True)]
    return v2.Compose(ops)


def detection_eval_transform() -> v2.Compose:
    """Evaluation: the image as float in ``[0, 1]``, boxes and masks untouched (the detector resizes internally and
    maps its results back to the original image, which COCO evaluates)."""
    return v2.Compose([v2.ToDtype({tv_tensors.Image: torch.float32, 'others': None}, scale=True)])


def detection_collate(batch: Sequence[Tuple[torch.Tensor, Any]]) -> Tuple[List[torch.Tensor], List[Any]]:
    """``[(image, target), ...]`` -> ``([images], [targets])``: torchvision's detectors take lists of any sizes."""
    images, targets = zip(*batch)
    return list(images), list(targets)
