"""Detectors on SPANet-family backbones: a ``features_only`` pyramid with an FPN neck inside torchvision's RetinaNet,
Faster R-CNN, Mask R-CNN, or Cascade Mask R-CNN (``cascade.py``, built from torchvision's R-CNN parts).

As in the papers' mmdetection configs (SPANet: RetinaNet / Mask R-CNN 1x; SPANetV2: Mask R-CNN / Cascade Mask R-CNN
3x): a norm on every backbone output (GroupNorm(1) for SPANet, LayerNorm without bias for SPANetV2, as the official
dense-prediction backbones add; no BatchNorm anywhere, so nothing is frozen), a 256-channel FPN, RetinaNet on strides
8-128 (P6/P7 from the last stage's output, mmdet's ``add_extra_convs='on_input'``) with 3 anchor scales per octave,
the R-CNNs on strides 4-64 (P6 by max-pooling) with one anchor scale per level.

Training images reach the detector already resized (the data module's multi-scale pipeline), so torchvision's
internal resize is skipped in training; in evaluation it resizes to ``min_size`` / ``max_size`` and maps boxes and
masks back to the original image, which is what COCO evaluates.
"""
import inspect
from collections import OrderedDict
from typing import Any, Dict, Literal, Optional, Sequence, Tuple

import torch.nn as nn
from timm.layers import GroupNorm1
from timm.models.metaformer import LayerNorm2dNoBias
from torch import Tensor
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..errors import UserInputError, check_choice
from .cascade import CascadeMaskRCNN
from .spanet import SPANet
from .spanetv2 import SPANetV2

__all__ = ['BackboneFPN', 'build_detector', 'DetectorName', 'DETECTOR_LEVELS', 'anchor_sizes', 'output_norm']

DetectorName = Literal['retinanet', 'faster_rcnn', 'mask_rcnn', 'cascade_mask_rcnn']
# backbone stages each detector reads (strides 4, 8, 16, 32 are stages 0..3)
DETECTOR_LEVELS: Dict[str, Tuple[int, ...]] = {
    'retinanet': (1, 2, 3), 'faster_rcnn': (0, 1, 2, 3), 'mask_rcnn': (0, 1, 2, 3), 'cascade_mask_rcnn': (0, 1, 2, 3),
}
ASPECT_RATIOS = (0.5, 1.0, 2.0)
NUM_FPN_OUTPUTS = 5


def output_norm(network: nn.Module, channels: int) -> nn.Module:
    """The per-output norm of the official dense-prediction backbones: GroupNorm(1) for SPANet, channel LayerNorm
    without bias for SPANetV2."""
    if isinstance(network, SPANet):
        return GroupNorm1(channels)
    if isinstance(network, SPANetV2):
        return LayerNorm2dNoBias(channels, eps=1e-6)
    raise TypeError(f'expected a SPANet or SPANetV2 pyramid, got {type(network).__name__}')


class BackboneFPN(nn.Module):
    """A backbone's ``features_only`` pyramid -> per-level output norm -> torchvision ``FeaturePyramidNetwork``.

    torchvision's ``BackboneWithFPN`` reads torchvision-style children through ``IntermediateLayerGetter``; a timm
    ``features_only`` model already returns the maps, so this is the same composition without the getter.

    Args:
        body: ``create_backbone(name, features_only=True, out_indices=...)``.
        out_channels: FPN channels (the detectors read ``self.out_channels``).
        extra_blocks: torchvision's ``LastLevelMaxPool`` / ``LastLevelP6P7`` or None.
        out_norm: norm every backbone output before the FPN (the official detection backbones do).
    """

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_blocks: Optional[nn.Module] = None,
                 out_norm: bool = True):
        super().__init__()
        channels = list(body.feature_info.channels())
        network = getattr(body, 'model', body)
        self.body = body
        self.norms = nn.ModuleList([output_norm(network, c) if out_norm else nn.Identity() for c in channels])
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels
        self.strides = list(body.feature_info.reduction())

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), norm(f)) for i, (norm, f) in enumerate(zip(self.norms, features))))


def anchor_sizes(detector: DetectorName, base: int = 32) -> Tuple[Tuple[int, ...], ...]:
    """Anchor sizes per FPN output: RetinaNet 3 scales per octave from ``base`` at stride 8 (mmdet's
    ``octave_base_scale=4``), the R-CNNs one scale per level from ``base`` at stride 4 (``scales=[8]``)."""
    if detector == 'retinanet':
        return tuple(tuple(int(round(base * 2 ** i * 2 ** (k / 3))) for k in range(3)) for i in range(NUM_FPN_OUTPUTS))
    return tuple((base * 2 ** i,) for i in range(NUM_FPN_OUTPUTS))


def _check_levels(body: nn.Module, detector: str) -> None:
    strides = list(body.feature_info.reduction())
    expected = [4 * 2 ** i for i in DETECTOR_LEVELS[detector]]
    if strides != expected:
        raise UserInputError(f'{detector} reads backbone strides {expected}, the pyramid gives {strides} '
                             f'(out_indices {DETECTOR_LEVELS[detector]})')


def build_detector(
        detector: DetectorName,
        body: nn.Module,
        num_classes: int,
        fpn_channels: int = 256,
        out_norm: bool = True,
        anchor_size: int = 32,
        mask_head_channels: int = 256,
        min_size: int = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        detector_kwargs: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """A torchvision detector around ``body``.

    Args:
        detector: 'retinanet', 'faster_rcnn', 'mask_rcnn' or 'cascade_mask_rcnn'.
        body: the backbone's ``features_only`` pyramid at the strides ``DETECTOR_LEVELS[detector]`` names.
        num_classes: object categories; the detector gets ``num_classes + 1`` outputs, label 0 being background (the
            data's labels are 1..num_classes; RetinaNet never predicts 0, as torchvision's COCO RetinaNet).
        fpn_channels: FPN (and head) channels.
        out_norm: norm every backbone output before the FPN.
        anchor_size: anchor size at the finest level (RetinaNet: stride 8, R-CNNs: stride 4).
        mask_head_channels: width of the mask head's four convs and its deconv (torchvision / the papers: 256).
        min_size: evaluation short side (torchvision resizes inside the detector and maps results back).
        max_size: evaluation long-side cap.
        image_mean: normalisation of the [0, 1] input images (the backbone's).
        image_std: normalisation standard deviation.
        detector_kwargs: torchvision's keyword arguments of that detector (``score_thresh``, ``box_detections_per_img``,
            ``rpn_batch_size_per_image``, ...).
    """
    check_choice(detector, DetectorName, 'detector')
    kwargs = dict(detector_kwargs or {})
    if num_classes < 1:
        raise UserInputError(f'num_classes must be >= 1, got {num_classes}')
    _check_levels(body, detector)
    channels = body.feature_info.channels()
    if detector == 'retinanet':
        # P6 from the last stage's output (C5) unless it already has the FPN width, as torchvision's LastLevelP6P7
        extra: nn.Module = LastLevelP6P7(channels[-1], fpn_channels)
    else:
        extra = LastLevelMaxPool()
    backbone = BackboneFPN(body, fpn_channels, extra, out_norm)
    sizes = anchor_sizes(detector, anchor_size)
    anchors = AnchorGenerator(sizes, (ASPECT_RATIOS,) * len(sizes))
    common = dict(min_size=min_size, max_size=max_size, image_mean=list(image_mean), image_std=list(image_std))
    cls = _DETECTORS[detector]
    # torchvision hands unknown keywords to its transform, which ignores them: reject them here instead
    accepted = set()
    for base in (cls, MaskRCNN) if cls is CascadeMaskRCNN else (cls,):
        accepted |= set(inspect.signature(base.__init__).parameters) - {'self', 'backbone', 'num_classes', 'kwargs'}
    unknown = sorted(set(kwargs) - accepted)
    clash = sorted(set(kwargs) & (set(common) | {'anchor_generator', 'rpn_anchor_generator', 'mask_head',
                                                 'mask_predictor', 'mask_head_channels'}))
    if unknown or clash:
        raise UserInputError(f'detector_kwargs for {detector!r}: ' + (
            f'unknown {", ".join(unknown)} (valid: {", ".join(sorted(accepted - set(common)))})' if unknown
            else f'{", ".join(clash)} are set by the task\'s own arguments'))
    if detector == 'retinanet':
        common['anchor_generator'] = anchors
    else:
        common['rpn_anchor_generator'] = anchors
    if detector == 'cascade_mask_rcnn':
        common['mask_head_channels'] = mask_head_channels
    model = cls(backbone, num_classes + 1, **common, **kwargs, _skip_resize=True)
    if detector == 'mask_rcnn' and mask_head_channels != 256:  # torchvision takes no width, only whole heads
        model.roi_heads.mask_head = MaskRCNNHeads(fpn_channels, [mask_head_channels] * 4, 1)
        model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes + 1)
    return model



_DETECTORS = {'retinanet': RetinaNet, 'faster_rcnn': FasterRCNN, 'mask_rcnn': MaskRCNN,
              'cascade_mask_rcnn': CascadeMaskRCNN}
