"""The spectral filters of both papers, as centred full spectra and radial profiles.

* SPANet (v1): the fixed SPAM masks (SPF), one per λ and stage radius, at the feature-map size of each stage.
* SPANetV2: the learned spectral re-scaling filters (SRF) after their activation, per stage, block and head, at the
  feature-map size of each stage (resized from the stored filter as the forward pass does; the stored one itself
  when the input has the size the model was built for, ``img_size``).

Both live on the rfft2 half spectrum, (H, W // 2 + 1). ``full_spectrum`` mirrors a half spectrum of a real signal
(F[-u, -v] = F[u, v]) into the full (H, W) grid and fftshifts it, so DC sits at (H // 2, W // 2) as in the papers'
pictures; ``radial_profile`` averages such a picture over rings of equal frequency radius.
"""
from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..models.spectral import circular_mask
from .layers import is_modulating, spectral_layers, stage_sizes

__all__ = ['full_spectrum', 'radial_profile', 'Filter', 'spf_masks', 'srf_filters']


def full_spectrum(half: Tensor, width: int) -> Tensor:
    """Mirror an rfft2 half spectrum (..., H, W // 2 + 1) of a real signal to (..., H, width) and fftshift it."""
    height, half_width = half.shape[-2:]
    if half_width != width // 2 + 1:
        raise ValueError(f'a half spectrum of width {half_width} does not belong to width {width}')
    rows = (-torch.arange(height)) % height
    cols = torch.arange(half_width, width)  # the bins rfft2 leaves out: F[u, v] = F[-u, width - v]
    mirrored = half[..., rows, :][..., width - cols]
    return torch.fft.fftshift(torch.cat([half, mirrored], dim=-1), dim=(-2, -1))


def radial_profile(spectrum: Tensor) -> Tuple[List[float], List[float]]:
    """Mean of a centred (H, W) spectrum over rings of radius r = round(distance to DC) in frequency bins.

    Returns:
        ``(frequency, mean)``: the ring radius in units of π (r / (min(H, W) / 2), so the edge of a square map's
        spectrum is 1) and the mean response on it, for r = 0 .. min(H, W) // 2.
    """
    height, width = spectrum.shape[-2:]
    fy = torch.arange(height) - height // 2
    fx = torch.arange(width) - width // 2
    radius = torch.sqrt(fy[:, None].double() ** 2 + fx[None, :].double() ** 2).round().long()
    stop = min(height, width) // 2
    values = spectrum.double()
    means = [float(values[radius == r].mean()) for r in range(stop + 1)]
    return [r / (min(height, width) / 2) for r in range(stop + 1)], means


@dataclass
class Filter:
    """One filter picture: a centred full spectrum and where it comes from.

    Args:
        stage: stage index.
        block: block index in the stage (-1: the same for every block of the stage, v1's fixed masks).
        head: SRF head index (v2) or λ index (v1).
        label: what the column shows ('λ=0.70', 'head 0 (k=3)').
        spectrum: (H, W) centred full spectrum.
        note: what the row shows besides the stage ('r=2': the SPAM radius).
    """
    stage: int
    block: int
    head: int
    label: str
    spectrum: Tensor
    note: str = ''


def spf_masks(model: nn.Module, images: Tensor) -> List[Filter]:
    """SPANet's masks for each stage (its radius) and each λ, at the stage's feature-map size for inputs shaped like
    ``images``; empty when the masks are switched off (``spectral_filter=False``) or the backbone is a SPANetV2."""
    first = {}
    for layer in spectral_layers(model):
        if layer.kind == 'block' and layer.stage not in first and getattr(layer.mixer, 'use_filter', False):
            first[layer.stage] = layer.mixer
    if not first:
        return []
    sizes = stage_sizes(model, images)
    out = []
    for stage, mixer in first.items():
        height, width = sizes[stage]
        for i, lam in enumerate(mixer.lambdas):
            half = circular_mask(height, width, mixer.radius, lam)
            out.append(Filter(stage, -1, i, f'λ={lam:.2f}', full_spectrum(half, width), f'r={mixer.radius:g}'))
    return out


def srf_filters(model: nn.Module, images: Tensor) -> List[Filter]:
    """Every ExSPAM's activated SRF at its stage's feature-map size for inputs shaped like ``images`` (the stored
    filter itself at the size it was stored for, else resized as the forward resizes it), mean over each head's
    channels; empty without SRF (``spectral_filter=False``, attention stages, SPANet)."""
    mixers = [layer for layer in spectral_layers(model) if layer.kind == 'block' and is_modulating(layer.mixer)
              and getattr(layer.mixer, 'filter', None) is not None]
    if not mixers:
        return []
    sizes = stage_sizes(model, images)
    out = []
    with torch.no_grad():
        for layer in mixers:
            mixer = layer.mixer
            height, width = sizes[layer.stage]
            srf = mixer.srf(height, width).float().cpu()  # head-major channels
            for head, chunk in enumerate(srf.chunk(mixer.num_heads, dim=0)):
                out.append(Filter(layer.stage, layer.block, head, f'head {head} (k={mixer.kernel_sizes[head]})',
                                  full_spectrum(chunk.mean(dim=0), width)))
    return out
