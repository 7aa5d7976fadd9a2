"""Segmentation inference as mmsegmentation evaluates: whole image or sliding windows, and the multi-scale + flip
test-time augmentation behind the papers' ``ms+flip`` mIoU.

Plain functions over a ``model(images) -> logits at the input size`` callable, so they serve the LightningModule, the
benchmark and tests alike.
"""
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..errors import UserInputError

__all__ = ['slide_inference', 'aug_inference', 'aug_tag', 'check_scales']

Logits = Callable[[torch.Tensor], torch.Tensor]


def slide_inference(model: Logits, images: torch.Tensor, num_classes: int, crop_size: Tuple[int, int],
                    stride: Tuple[int, int]) -> torch.Tensor:
    """Logits of overlapping ``crop_size`` windows placed every ``stride`` pixels, averaged where they overlap.

    As mmsegmentation's ``slide_inference``: the last window of a row/column is shifted back to end at the border,
    and a side shorter than the crop is taken whole (no padding), so an image that fits in one window gives exactly
    the whole-image logits.
    """
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    batch, _, height, width = images.shape
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    logits = images.new_zeros((batch, num_classes, height, width), dtype=torch.float32)
    count = images.new_zeros((1, 1, height, width), dtype=torch.float32)
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            logits[:, :, y1:y2, x1:x2] += model(images[:, :, y1:y2, x1:x2]).float()
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count


def check_scales(scales: Optional[Sequence[float]]) -> Optional[Tuple[float, ...]]:
    """``scales`` as a tuple of positive floats (None stays None), else a ``UserInputError`` naming them."""
    if scales is None:
        return None
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        values = ()
    if not values or min(values) <= 0:
        raise UserInputError(f'test_scales must be a non-empty list of positive resize ratios, got {scales}')
    return values


def aug_tag(scales: Sequence[float], flip: bool) -> str:
    """The name the augmented metrics carry: ``ms+flip``, ``ms``, ``flip``, or ``ss`` (one pass at scale 1.0)."""
    parts = (['ms'] if tuple(scales) != (1.0,) else []) + (['flip'] if flip else [])
    return '+'.join(parts) or 'ss'


def _rescaled(size: Tuple[int, int], ratio: float) -> Tuple[int, int]:
    # mmcv's keep-ratio rounding (int(x * ratio + 0.5)), as ``datamodules.seg_transforms.rescale_size``
    return max(1, int(size[0] * ratio + 0.5)), max(1, int(size[1] * ratio + 0.5))


def aug_inference(model: Logits, images: torch.Tensor, scales: Sequence[float] = (1.0,),
                  flip: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Multi-scale (+ flip) test-time augmentation: the softmax averaged over every pass, as mmsegmentation's
    ``SegTTAModel`` (and its 0.x ``aug_test``) merges them.

    Each pass resizes the images by a ratio (aspect kept, bilinear), runs ``model`` (whole or sliding window: any
    callable returning logits at its input's size), flips the logits of a flipped pass back, resizes them to the
    input size and takes the softmax over classes. The evaluation resize has already brought an ADE20K image to its
    short side 512, so ratio ``r`` gives short side ``512 r``: mmseg 0.x's ``MultiScaleFlipAug`` on ``(2048, 512)``
    up to rounding.

    Args:
        model: images (B, C, h, w) -> logits (B, K, h, w).
        images: (B, C, H, W) network inputs.
        scales: resize ratios, e.g. ``(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)``.
        flip: also run every scale mirrored left-right.
    Returns:
        ``(probabilities (B, K, H, W) float32, logits of the unflipped pass at scale 1.0 or None)``: the second is
        the single-scale result, free when 1.0 is among the scales.
    """
    size = tuple(images.shape[-2:])
    total, plain, passes = None, None, 0
    for ratio in scales:
        new_size = _rescaled(size, ratio)
        x = images if new_size == size else F.interpolate(images, size=new_size, mode='bilinear', align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            logits = model(x.flip(-1)).flip(-1) if flipped else model(x)
            if ratio == 1.0 and not flipped:
                plain = logits
            logits = logits if logits.shape[-2:] == size else F.interpolate(
                logits.float(), size=size, mode='bilinear', align_corners=False)
            probs = logits.float().softmax(dim=1)
            total = probs if total is None else total + probs
            passes += 1
    return total / passes, plain
