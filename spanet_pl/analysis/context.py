"""The modulating context of every SPAM / ExSPAM token mixer: what the mixer multiplies its features with.

* SPANetV2 (ExSPAM): the output of the mixer's projection (``proj``: grouped expansion, norm, activation, 1x1), which
  multiplies the query branch.
* SPANet (SPAM): the aggregated spectral context (the sum of the per-λ projections of the filtered context), which
  multiplies the depthwise context; ``SPAM.modulation`` returns it, so nothing is stored on the module.

Attention mixers have no such context and are skipped. A map per block is mean |context| over channels, (H, W).
"""
from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserInputError
from ..models import SPAM, ExSPAM
from .layers import forward_hooks, spectral_layers

__all__ = ['ContextMap', 'context_maps', 'stage_context', 'upsample_to']


@dataclass
class ContextMap:
    """mean |context| over channels of one block, (N, H, W) for N images."""
    stage: int
    block: int
    maps: Tensor


def context_maps(model: nn.Module, images: Tensor) -> List[ContextMap]:
    """The context map of every modulating block of the backbone in ``model`` for ``images`` (N, 3, H, W)."""
    found: Dict[int, Tensor] = {}
    hooks = []
    blocks = [layer for layer in spectral_layers(model) if layer.kind == 'block']
    for layer in blocks:
        mixer = layer.mixer
        if isinstance(mixer, ExSPAM):
            def record(_, __, output, index=layer.index):  # proj output is NCHW
                found[index] = output.detach().abs().mean(dim=1).float().cpu()
            hooks.append((mixer.proj, record))
        elif isinstance(mixer, SPAM):
            def record(module, args, _, index=layer.index):
                found[index] = module.modulation(args[0])[1].detach().abs().mean(dim=1).float().cpu()
            hooks.append((mixer, record))
    if not hooks:
        raise UserInputError('this backbone has no modulating token mixer (SPAM / ExSPAM) to show a context of')
    with torch.no_grad(), forward_hooks(hooks):
        model(images)
    return [ContextMap(layer.stage, layer.block, found[layer.index]) for layer in blocks if layer.index in found]


def stage_context(maps: List[ContextMap]) -> Dict[int, Tensor]:
    """Per stage, the mean of its blocks' context maps, (N, H, W)."""
    stages: Dict[int, List[Tensor]] = {}
    for item in maps:
        stages.setdefault(item.stage, []).append(item.maps)
    return {stage: torch.stack(items).mean(dim=0) for stage, items in sorted(stages.items())}


def upsample_to(maps: Tensor, size: int) -> Tensor:
    """(N, h, w) maps resized bilinearly to (N, size, size) and scaled to [0, 1] per map (for overlays)."""
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode='bilinear', align_corners=False)[:, 0]
    low = up.amin(dim=(-2, -1), keepdim=True)
    high = up.amax(dim=(-2, -1), keepdim=True)
    return (up - low) / (high - low).clamp(min=1e-12)
