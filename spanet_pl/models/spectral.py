"""Spectral math shared by SPANet (ICCV 2023) and SPANetV2 (TPAMI 2026).

Everything here is a pure function of its arguments: masks and filters are derived from the feature-map size
(H, W) on every call and never written back into a module. Both papers filter in the 2-D Fourier domain of a
feature map; we always work on the real-input half spectrum (``rfft2``), shape (H, W // 2 + 1), in fp32.

SPANet's circular mask is real and symmetric under frequency negation, so filtering the half spectrum with
``rfft2``/``irfft2`` gives the same result as the official full-spectrum ``fft2``/``fftshift``/``ifft2(...).real``.
"""
import functools
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserInputError
from .dft import at_least_fp32, dft_filter, matmul_dft_forced

__all__ = [
    'DEFAULT_LAMBDAS', 'chunk_sizes', 'signed_frequencies', 'circular_mask', 'spam_masks',
    'spectral_filter', 'resize_filter', 'DFT_MAX_SIDE',
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
    return circular_mask_uncached(height, width, radius, lam, device)


def circular_mask_uncached(height: int, width: int, radius: float, lam: float,
                           device: Optional[torch.device] = None) -> Tensor:
    """``circular_mask`` built afresh from tensor ops (TorchScript; torch.export, where a cached tensor would be fake)."""
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
    return spam_masks_uncached(height, width, radius, list(lambdas), list(sizes), device)


def spam_masks_uncached(height: int, width: int, radius: float, lambdas: List[float], sizes: List[int],
                        device: Optional[torch.device] = None) -> Tensor:
    """``spam_masks`` built afresh from tensor ops (TorchScript, torch.export)."""
    # one expanded mask per group: repeat_interleave with a tensor of sizes has a data-dependent shape (a graph
    # break under torch.compile)
    groups: List[Tensor] = []
    for lam, size in zip(lambdas, sizes):
        groups.append(circular_mask_uncached(height, width, radius, lam, device).expand(size, -1, -1))
    return torch.cat(groups)


def spam_masks(
        height: int, width: int, radius: float, lambdas: Sequence[float], sizes: Sequence[int], device=None,
) -> Tensor:
    """Per-channel masks, shape (sum(sizes), height, width//2+1): channel group i uses λ_i. Cached, read-only
    (built afresh while torch.export / torch.compile trace: their tensors must not enter the cache)."""
    if torch.compiler.is_compiling():
        return spam_masks_uncached(int(height), int(width), float(radius), [float(v) for v in lambdas],
                                   [int(s) for s in sizes], device)
    return _spam_masks(
        int(height), int(width), float(radius), tuple(float(v) for v in lambdas), tuple(int(s) for s in sizes),
        torch.device(device or 'cpu'))


# The DFT-matrix filter (dft.py) on maps up to this side: faster than pocketfft there on the CPU (1.4x at 56, 3x at
# 7, forward + backward); FFTs beyond, and on other devices (not measured there).
DFT_MAX_SIDE = 64


def _filter(x: Tensor, weight: Tensor) -> Tensor:
    """irfft2(weight * rfft2(x)) over the last two dims (ortho norm); ``x`` (B, C, H, W), real ``weight``
    (C, H, W//2+1) of the same dtype."""
    spec = torch.fft.rfft2(x, norm='ortho')
    return torch.fft.irfft2(spec * weight, s=[x.shape[-2], x.shape[-1]], norm='ortho')


@torch.jit.unused  # eager, FX and torch.export only; TorchScript takes the fp32 expression below
def _filter_fft(x: Tensor, weight: Tensor) -> Tensor:
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = at_least_fp32(x)
        return _filter(xf, weight.to(xf.dtype)).to(x.dtype)


@torch.jit.unused
def _use_dft(x: Tensor, height: int, width: int) -> bool:
    forced = matmul_dft_forced()
    if forced is not None:  # exporting to ONNX: the form asked for
        return forced
    return x.device.type == 'cpu' and max(height, width) <= DFT_MAX_SIDE


def spectral_filter(x: Tensor, weight: Tensor, channels_last: bool = False) -> Tensor:
    """Multiply the (ortho-normalised) rfft2 half spectrum of ``x`` by the real ``weight``, per channel.

    Args:
        x: (B, C, H, W), or with ``channels_last`` (B, H, W, C).
        weight: (C, H, W//2+1), or with ``channels_last`` (H, W//2+1, C).
        channels_last: the layout of both; the output has the layout of ``x`` and, but for NCHW maps in
            channels-last memory (SPANet's), contiguous memory in that layout.

    The transforms run in at least fp32 whatever the input dtype (and with autocast off), then cast back. On the
    CPU, maps up to ``DFT_MAX_SIDE`` run as DFT-matrix products over channels-last memory (dft.py); larger maps and
    other devices run rfft2 / irfft2 over contiguous NCHW memory with autograd's backward.
    """
    height, width = (x.shape[1], x.shape[2]) if channels_last else (x.shape[-2], x.shape[-1])
    if not torch.jit.is_scripting() and _use_dft(x, height, width):
        out = dft_filter(x if channels_last else x.permute(0, 2, 3, 1),
                         weight if channels_last else weight.permute(1, 2, 0))
        if channels_last:
            return out
        out = out.permute(0, 3, 1, 2)  # NCHW view of channels-last memory
        return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()
    x_n = x.permute(0, 3, 1, 2) if channels_last else x
    w_n = weight.permute(2, 0, 1) if channels_last else weight
    if torch.jit.is_scripting():
        out = _filter(x_n.contiguous().float(), w_n.float()).to(x.dtype)
    else:
        out = _filter_fft(x_n.contiguous(), w_n)
    if channels_last:
        return out.permute(0, 2, 3, 1).contiguous()
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)  # NCHW in channels-last memory (SPANet's maps)
    return out


def resize_filter(weight: Tensor, height: int, width: int) -> Tensor:
    """Resize a learnable (C, h, w) half-spectrum filter to (C, height, width) as SPANetV2 does: bicubic,
    align_corners=True. Returns ``weight`` itself when the size already matches."""
    if weight.shape[-2] == height and weight.shape[-1] == width:
        return weight
    return F.interpolate(weight[None], size=[height, width], mode='bicubic', align_corners=True)[0]

