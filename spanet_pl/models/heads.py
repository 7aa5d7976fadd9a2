"""Segmentation decoders over a backbone's ``features_only`` pyramid (strides 4, 8, 16, 32).

* ``FCNHead``: conv-norm-act stack on one level or on several levels resized and concatenated (Long et al., FCN,
  CVPR 2015; the ``resize_concat`` input of mmsegmentation's decode heads), dropout, 1x1 classifier.
* ``SemanticFPNHead``: the semantic branch of Panoptic FPN (Kirillov et al., CVPR 2019) on a 256-channel FPN neck,
  as mmsegmentation's ``FPN`` + ``FPNHead`` used for the ADE20K tables of PoolFormer, SPANet and SPANetV2.
* ``UperNetHead``: UPerNet (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018) as
  mmsegmentation's ``UPerHead``: a pyramid pooling module on the last level, FPN fusion of all levels at stride 4,
  used for SPANetV2's 160k-iteration ADE20K table (with an ``FCNHead`` on stage 3 as auxiliary head).

Heads map a list of NCHW maps to logits at the stride of the finest level they use (1/4 for the FPN); the task
upsamples them to the input size, and ``resize_to_original`` takes them from there to each image's original size.
"""
import math
from collections import OrderedDict
from typing import Dict, List, Literal, Sequence, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import FeaturePyramidNetwork

from ..errors import UserInputError, check_choice

__all__ = ['FCNHead', 'SemanticFPNHead', 'UperNetHead', 'HEADS', 'HeadName', 'HeadNorm', 'conv_norm_act', 'resize_to_original']

HeadName = Literal['fcn', 'fpn', 'upernet']
HeadNorm = Literal['bn', 'gn']


def _norm(norm: HeadNorm, channels: int) -> nn.Module:
    if check_choice(norm, HeadNorm, 'norm') == 'bn':
        # a plain BatchNorm2d, so that the Trainer's sync_batchnorm switch converts it (timm's BatchNormAct2d would
        # lose its activation in torch.nn.SyncBatchNorm.convert_sync_batchnorm)
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(math.gcd(32, channels), channels)


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int = 3, norm: HeadNorm = 'bn') -> nn.Sequential:
    """Conv (no bias) -> BatchNorm2d / GroupNorm(32) -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        _norm(norm, out_channels),
        nn.ReLU(inplace=True),
    )


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode='bilinear', align_corners=False)


def _classifier(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    classifier = nn.Conv2d(channels, num_classes, 1)
    nn.init.normal_(classifier.weight, std=0.01)
    nn.init.zeros_(classifier.bias)
    return nn.Sequential(nn.Dropout2d(dropout), classifier)


def _check_channels(in_channels: Sequence[int], num_classes: int) -> List[int]:
    in_channels = [int(c) for c in in_channels]
    if not in_channels or any(c <= 0 for c in in_channels):
        raise UserInputError(f'a segmentation head needs positive per-level channels, got {in_channels}')
    if num_classes < 1:
        raise UserInputError(f'num_classes must be >= 1, got {num_classes}')
    return in_channels


class FCNHead(nn.Module):
    """FCN-style head: ``num_convs`` x (3x3 conv-norm-ReLU) -> dropout -> 1x1 classifier.

    Args:
        in_channels: channels of every pyramid level (``backbone.feature_info.channels()``).
        num_classes: classifier outputs.
        channels: width of the conv stack.
        in_index: the level to decode (-1: the last stage, as torchvision's FCN), or several levels, which are
            resized bilinearly to the finest of them and concatenated.
        num_convs: 3x3 conv-norm-ReLU layers before the classifier (0: classifier on the input directly).
        concat_input: concatenate the input with the stack's output and fuse them with one more conv (mmseg's
            ``concat_input``).
        dropout: Dropout2d before the classifier.
        norm: 'bn' (BatchNorm2d; SyncBatchNorm under DDP via the Trainer's ``sync_batchnorm``) or 'gn' (GroupNorm 32).
    """

    def __init__(
            self,
            in_channels: Sequence[int],
            num_classes: int,
            channels: int = 256,
            in_index: Union[int, Sequence[int]] = -1,
            num_convs: int = 2,
            concat_input: bool = False,
            dropout: float = 0.1,
            norm: HeadNorm = 'bn',
    ):
        super().__init__()
        in_channels = _check_channels(in_channels, num_classes)
        indices = [in_index] if isinstance(in_index, int) else list(in_index)
        if not indices or any(not -len(in_channels) <= i < len(in_channels) for i in indices):
            raise UserInputError(f'in_index {in_index} out of range for {len(in_channels)} pyramid levels')
        if num_convs < 0 or (concat_input and num_convs == 0):
            raise UserInputError(f'num_convs must be >= 0 (>= 1 with concat_input), got {num_convs}')
        self.in_index = [i % len(in_channels) for i in indices]
        fused = sum(in_channels[i] for i in self.in_index)
        convs = [conv_norm_act(fused if i == 0 else channels, channels, norm=norm) for i in range(num_convs)]
        self.convs = nn.Sequential(*convs)
        self.fuse = conv_norm_act(fused + channels, channels, norm=norm) if concat_input else None
        self.classifier = _classifier(channels if num_convs else fused, num_classes, dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        selected = [features[i] for i in self.in_index]
        size = max((f.shape[-2:] for f in selected), key=lambda s: s[0] * s[1])
        x = torch.cat([_resize(f, size) for f in selected], dim=1)
        out = self.convs(x)
        if self.fuse is not None:
            out = self.fuse(torch.cat([x, out], dim=1))
        return self.classifier(out)


class SemanticFPNHead(nn.Module):
    """Semantic FPN: FPN neck (lateral 1x1, top-down nearest upsampling + add, 3x3 output convs) -> per level,
    (3x3 conv-norm-ReLU + 2x bilinear upsampling) until stride 4 -> sum -> dropout -> 1x1 classifier.

    Args:
        in_channels: channels of every pyramid level (``backbone.feature_info.channels()``), finest first; each level
            must halve the resolution of the previous one.
        num_classes: classifier outputs.
        fpn_channels: width of the FPN neck (256 in the papers).
        head_channels: width of the per-level upsampling branches (128 in the papers).
        dropout: Dropout2d before the classifier.
        norm: 'bn' (BatchNorm2d, mmseg's SyncBN under DDP) or 'gn' (GroupNorm 32, as Panoptic FPN).
    """

    def __init__(
            self,
            in_channels: Sequence[int],
            num_classes: int,
            fpn_channels: int = 256,
            head_channels: int = 128,
            dropout: float = 0.1,
            norm: HeadNorm = 'bn',
    ):
        super().__init__()
        in_channels = _check_channels(in_channels, num_classes)
        self.fpn = FeaturePyramidNetwork(in_channels, fpn_channels)
        branches = []
        for level in range(len(in_channels)):
            layers = []
            for k in range(max(level, 1)):  # level 0 (stride 4) still gets one conv
                layers.append(conv_norm_act(fpn_channels if k == 0 else head_channels, head_channels, norm=norm))
                if level > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False))
            branches.append(nn.Sequential(*layers))
        self.branches = nn.ModuleList(branches)
        self.classifier = _classifier(head_channels, num_classes, dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        pyramid = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
        out = None
        for branch, level in zip(self.branches, pyramid.values()):
            y = branch(level)
            if out is None:
                out = y
            else:  # odd sizes: 2x upsampling of a rounded-up level overshoots by a pixel or two
                out = out + _resize(y, out.shape[-2:])
        return self.classifier(out)


class UperNetHead(nn.Module):
    """UPerNet: pyramid pooling on the last level (average pooling to ``pool_scales`` x ``pool_scales``, 1x1
    conv-norm-ReLU, bilinear upsampling, concatenated with the level, 3x3 bottleneck), 1x1 laterals on the other
    levels, top-down bilinear upsampling + add, 3x3 convs, every level resized to the finest and concatenated, 3x3
    fusion conv, dropout, 1x1 classifier. Logits at the finest level's stride.

    Args:
        in_channels: channels of every pyramid level (``backbone.feature_info.channels()``), finest first.
        num_classes: classifier outputs.
        channels: width of every conv (mmseg's default 512; SPANetV2-official uses 320 for all its variants).
        pool_scales: output sizes of the pyramid pooling.
        dropout: Dropout2d before the classifier.
        norm: 'bn' (BatchNorm2d, SyncBatchNorm under DDP on GPUs) or 'gn' (GroupNorm 32). With 'bn' a training batch
            needs more than one image per device (the 1x1 pooled map has one value per channel and image).
    """

    def __init__(
            self,
            in_channels: Sequence[int],
            num_classes: int,
            channels: int = 512,
            pool_scales: Sequence[int] = (1, 2, 3, 6),
            dropout: float = 0.1,
            norm: HeadNorm = 'bn',
    ):
        super().__init__()
        in_channels = _check_channels(in_channels, num_classes)
        pool_scales = [int(s) for s in pool_scales]
        if not pool_scales or min(pool_scales) < 1:
            raise UserInputError(f'pool_scales must be positive output sizes, got {pool_scales}')
        self.pool = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_norm_act(in_channels[-1], channels, 1, norm=norm))
            for s in pool_scales)
        self.bottleneck = conv_norm_act(in_channels[-1] + len(pool_scales) * channels, channels, norm=norm)
        self.laterals = nn.ModuleList(conv_norm_act(c, channels, 1, norm=norm) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(conv_norm_act(channels, channels, norm=norm) for _ in in_channels[:-1])
        self.fuse = conv_norm_act(len(in_channels) * channels, channels, norm=norm)
        self.classifier = _classifier(channels, num_classes, dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        top = features[-1]
        pooled = [_resize(branch(top), top.shape[-2:]) for branch in self.pool]
        levels = [lateral(f) for lateral, f in zip(self.laterals, features)]
        levels.append(self.bottleneck(torch.cat([top] + pooled, dim=1)))
        for i in range(len(levels) - 1, 0, -1):
            levels[i - 1] = levels[i - 1] + _resize(levels[i], levels[i - 1].shape[-2:])
        outs = [conv(level) for conv, level in zip(self.fpn_convs, levels)] + [levels[-1]]
        size = outs[0].shape[-2:]
        return self.classifier(self.fuse(torch.cat([_resize(out, size) for out in outs], dim=1)))


HEADS: Dict[HeadName, Type[nn.Module]] = {'fcn': FCNHead, 'fpn': SemanticFPNHead, 'upernet': UperNetHead}


def resize_to_original(logits: torch.Tensor, input_sizes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Each image's logits cropped to its ``input_size`` (out of a padded batch) and resized bilinearly to its
    original ``size``, as mmseg does before its metrics; returned padded at the bottom/right to the largest size.

    Args:
        logits: (B, C, H', W') at the network's input resolution.
        input_sizes: (B, 2) size of every image before the batch was padded.
        sizes: (B, 2) original size of every image (its annotation's size).
    """
    sizes_list, input_list = sizes.tolist(), input_sizes.tolist()
    height, width = max(h for h, _ in sizes_list), max(w for _, w in sizes_list)
    out = logits.new_zeros((logits.shape[0], logits.shape[1], height, width))
    for i, ((h, w), (in_h, in_w)) in enumerate(zip(sizes_list, input_list)):
        row = logits[i:i + 1, :, :in_h, :in_w]
        if (h, w) != (in_h, in_w):
            row = F.interpolate(row, size=(h, w), mode='bilinear', align_corners=False)
        out[i, :, :h, :w] = row[0]
    return out
