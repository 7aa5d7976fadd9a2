"""Where the analyses look inside a backbone: its stem, downsampling layers, blocks and token mixers, in order.

Works on a SPANet or SPANetV2 itself or on anything holding one (a ``features_only`` wrapper, a LightningModule).
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, List, Tuple

import torch.nn as nn
from torch import Tensor

from ..errors import UserInputError
from ..models import SPAM, ExSPAM, SPANet, SPANetV2

__all__ = ['Layer', 'find_backbone', 'spectral_layers', 'is_modulating', 'forward_hooks', 'stage_sizes']


@dataclass
class Layer:
    """One layer whose output the analyses read.

    Args:
        index: position in forward order, stem = 0 (the notebook's depth counts every layer).
        name: module path inside the backbone.
        kind: 'stem', 'downsample' or 'block'.
        stage: stage index (the stem belongs to stage 0).
        block: block index in its stage (-1 for stem and downsampling).
        module: the module itself.
        channels_last: its output is (B, H, W, C) (SPANetV2) instead of NCHW (SPANet).
    """
    index: int
    name: str
    kind: str
    stage: int
    block: int
    module: nn.Module
    channels_last: bool

    @property
    def mixer(self) -> nn.Module:
        """The block's token mixer."""
        return self.module.token_mixer


def find_backbone(module: nn.Module) -> nn.Module:
    """The SPANet / SPANetV2 inside ``module`` (``module`` itself if it is one)."""
    for child in module.modules():
        if isinstance(child, (SPANet, SPANetV2)):
            return child
    raise UserInputError(f'{type(module).__name__} holds no SPANet or SPANetV2 backbone to analyse')


def spectral_layers(module: nn.Module) -> List[Layer]:
    """Stem, every downsampling layer and every block of the backbone in ``module``, in forward order."""
    backbone = find_backbone(module)
    channels_last = isinstance(backbone, SPANetV2)
    prefix = next(name for name, child in module.named_modules() if child is backbone)
    prefix = f'{prefix}.' if prefix else ''
    layers = [Layer(0, f'{prefix}stem', 'stem', 0, -1, backbone.stem, channels_last)]
    for s, stage in enumerate(backbone.stages):
        if not isinstance(stage.downsample, nn.Identity):
            layers.append(Layer(len(layers), f'{prefix}stages.{s}.downsample', 'downsample', s, -1,
                                stage.downsample, channels_last))
        for b, block in enumerate(stage.blocks):
            layers.append(Layer(len(layers), f'{prefix}stages.{s}.blocks.{b}', 'block', s, b, block, channels_last))
    return layers


def is_modulating(mixer: nn.Module) -> bool:
    """Whether a token mixer modulates its features with a context (SPAM, ExSPAM), unlike attention."""
    return isinstance(mixer, (SPAM, ExSPAM))


@contextmanager
def forward_hooks(hooks: List[Tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Register ``(module, hook)`` forward hooks for the duration of the block; always removed afterwards."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _conv_out(size: Tuple[int, int], conv: nn.Conv2d) -> Tuple[int, int]:
    return tuple((n + 2 * p - d * (k - 1) - 1) // st + 1
                 for n, k, st, p, d in zip(size, conv.kernel_size, conv.stride, conv.padding, conv.dilation))


def stage_sizes(module: nn.Module, images: Tensor) -> List[Tuple[int, int]]:
    """(H, W) of every stage's feature maps for inputs shaped like ``images``, by conv arithmetic over the stem and
    the downsampling convs (both families resample only there), without running the network."""
    backbone = find_backbone(module)
    size = _conv_out(tuple(images.shape[-2:]), backbone.stem.conv)
    sizes = []
    for stage in backbone.stages:
        conv = getattr(stage.downsample, 'conv', None)
        if conv is not None:
            size = _conv_out(size, conv)
        sizes.append(size)
    return sizes
