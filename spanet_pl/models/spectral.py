"""Spectral math shared by SPANet (ICCV 2023) and SPANetV2 (TPAMI 2026).

Everything here is a pure function of its arguments: masks and filters are derived from the feature-map size
(H, W) on every call and never written back into a module. Both papers filter in the 2-D Fourier domain of a
feature map; we always work on the real-input half spectrum (``rfft2``), shape (H, W // 2 + 1), in fp32.

SPANet's circular mask is real and symmetric under frequency negation, so filtering the half spectrum with
``rfft2``/``irfft2`` gives the same result as the official full-spectrum ``fft2``/``fftshift``/``ifft2(...).real``.
"""
import functools
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserInputError

__all__ = [
    'DEFAULT_LAMBDAS', 'chunk_sizes', 'signed_frequencies', 'circular_mask', 'spam_masks',
    'spectral_filter', 'resize_filter',
]

# The official SPANet builds its λ list with torch.arange(0.7, 0.9, 0.1): three float32 values (0.7, 0.8, ~0.9).
DEFAULT_LAMBDAS: Tuple[float, ...] = tuple(torch.arange(0.7, 0.9, 0.1).tolist())


def chunk_sizes(dim: int, chunks: int) -> Tuple[int, ...]:
    """Channel sizes ``torch.chunk`` gives for ``dim`` channels in ``chunks`` pieces (the official split).

    Raises a ValueError where ``torch.chunk`` would silently return fewer pieces than asked for.
    """
    if chunks < 1:
        raise UserInputError(f'need at least one λ, got {chunks}')
    size = -(-dim // chunks)
    sizes = tuple(min(size, dim - start) for start in range(0, dim, size))
    if len(sizes) != chunks:
        raise UserInputError(
            f'{dim} channels cannot be split into {chunks} λ groups the official way (torch.chunk gives {sizes}); '
            f'use a λ list whose length gives {chunks} non-empty chunks of {dim}')
    return sizes


def signed_frequencies(n: int, device: Optional[torch.device] = None) -> Tensor:
    """Integer frequency of each FFT bin in FFT order: 0, 1, ..., then negatives (the Nyquist bin is -n/2)."""
    k = torch.arange(n, device=device)
    return torch.where(k < n - n // 2, k, k - n)


# The cached masks are shared by every later call, so they are built outside inference mode: a mask first made
# during `Trainer.validate` / `predict` (torch.inference_mode) would otherwise break a later training step.
@functools.lru_cache(maxsize=256)
@torch.inference_mode(False)
def _circular_mask(height: int, width: int, radius: float, lam: float, device: torch.device) -> Tensor:
    fy = signed_frequencies(height, device)[:, None]
    fx = torch.arange(width // 2 + 1, device=device)[None, :]
    # Integer squares then a float32 sqrt, as the official mask is computed, so ring bins compare identically.
    dist = torch.sqrt(fy * fy + fx * fx)
    lam_t = torch.tensor(lam, dtype=torch.float32, device=device)
    mask = torch.where(dist < radius, lam_t, 1 - lam_t)
    return mask.masked_fill(dist == radius, 1 / 3)


def circular_mask(height: int, width: int, radius: float, lam: float, device=None) -> Tensor:
    """SPANet's spectral mask on the rfft2 half spectrum of an (height, width) map, shape (height, width//2+1).

    λ inside the circle of ``radius`` (in frequency bins) around DC, 1 - λ outside it, 1/3 on the circle itself.
    At every size the circle keeps its radius in bins, centred on DC of the actual grid; at the official training
    size this equals the official (fftshift-ed, full-spectrum) mask.
    """
    return _circular_mask(int(height), int(width), float(radius), float(lam), torch.device(device or 'cpu'))


@functools.lru_cache(maxsize=256)
@torch.inference_mode(False)
def _spam_masks(height, width, radius, lambdas, sizes, device) -> Tensor:
    masks = torch.stack([_circular_mask(height, width, radius, lam, device) for lam in lambdas])
    return masks.repeat_interleave(torch.tensor(sizes, device=device), dim=0)


def spam_masks(
        height: int, width: int, radius: float, lambdas: Sequence[float], sizes: Sequence[int], device=None,
) -> Tensor:
    """Per-channel masks, shape (sum(sizes), height, width//2+1): channel group i uses λ_i. Cached, read-only."""
    return _spam_masks(
        int(height), int(width), float(radius), tuple(float(v) for v in lambdas), tuple(int(s) for s in sizes),
        torch.device(device or 'cpu'))


def spectral_filter(x: Tensor, weight: Tensor) -> Tensor:
    """Multiply the (ortho-normalised) rfft2 half spectrum of ``x`` (B, C, H, W) by ``weight`` (C, H, W//2+1).

    The transform runs in fp32 whatever the input dtype (and with autocast off), then casts back.
    """
    height, width = x.shape[-2:]
    with torch.autocast(device_type=x.device.type, enabled=False):
        spec = torch.fft.rfft2(x.float(), dim=(-2, -1), norm='ortho')
        spec = spec * weight.float()
        out = torch.fft.irfft2(spec, s=(height, width), dim=(-2, -1), norm='ortho')
    return out.to(x.dtype)


def resize_filter(weight: Tensor, height: int, width: int) -> Tensor:
    """Resize a learnable (C, h, w) half-spectrum filter to (C, height, width) as SPANetV2 does: bicubic,
    align_corners=True. Returns ``weight`` itself when the size already matches."""
    if tuple(weight.shape[-2:]) == (height, width):
        return weight
    return F.interpolate(weight[None], size=(height, width), mode='bicubic', align_corners=True)[0]

