"""The spectral filter of ``spectral.py`` as real matrix products (DFT matrices), for ONNX export.

``irfft2(weight * rfft2(x, norm='ortho'), norm='ortho')`` is linear in ``x``; written with the cosine and sine
matrices of the transform it needs no complex numbers and no FFT. onnxruntime runs ONNX ``DFT`` nodes of
non-power-of-two lengths (the 56/28/14/7 maps of a 224 input) slowly; as matrix products the same filter runs at
the speed of the model's convolutions. The values equal the FFT path's to float rounding (about 1e-6).

``matmul_dft()`` switches ``spectral.spectral_filter`` to this form while a model is exported; nothing else reads it.
"""
import contextlib
import math
from typing import Iterator, Tuple

import torch
from torch import Tensor

__all__ = ['matmul_dft', 'matmul_dft_enabled', 'dft_filter']

_ENABLED = False


@contextlib.contextmanager
def matmul_dft(enabled: bool = True) -> Iterator[None]:
    """Within the block, ``spectral_filter`` runs as DFT-matrix products (set while exporting to ONNX)."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, enabled
    try:
        yield
    finally:
        _ENABLED = previous


def matmul_dft_enabled() -> bool:
    return _ENABLED


def _cos_sin(rows: int, cols: int, n: int, device) -> Tuple[Tensor, Tensor]:
    """cos and sin of 2 pi r c / n for r < rows, c < cols (float64 angles, reduced mod n, then float32)."""
    r = torch.arange(rows, device=device, dtype=torch.float64)[:, None]
    c = torch.arange(cols, device=device, dtype=torch.float64)[None, :]
    angle = (2 * math.pi / n) * torch.remainder(r * c, n)
    return torch.cos(angle).float(), torch.sin(angle).float()


def dft_filter(x: Tensor, weight: Tensor) -> Tensor:
    """``irfft2(weight * rfft2(x))`` (ortho norm) over dims (1, 2) of channels-last ``x`` (B, H, W, C), real
    ``weight`` (H, W//2+1, C), in fp32; same contract as ``spectral.spectral_filter(..., channels_last=True)``."""
    height, width = x.shape[1], x.shape[2]
    half = width // 2 + 1
    xf = x.float()
    cos_w, sin_w = _cos_sin(half, width, width, x.device)        # (K, W): rfft along W
    cos_h, sin_h = _cos_sin(height, height, height, x.device)    # (H, H), symmetric: fft and ifft along H
    # rfft along W: A = sum_w x e^{-i theta}
    a_re = torch.einsum('kw,bhwc->bhkc', cos_w, xf)
    a_im = -torch.einsum('kw,bhwc->bhkc', sin_w, xf)
    # fft along H, then the real weight
    z_re = torch.einsum('uh,bhkc->bukc', cos_h, a_re) + torch.einsum('uh,bhkc->bukc', sin_h, a_im)
    z_im = torch.einsum('uh,bhkc->bukc', cos_h, a_im) - torch.einsum('uh,bhkc->bukc', sin_h, a_re)
    w = weight.float()
    z_re, z_im = z_re * w, z_im * w
    # inverse fft along H
    b_re = torch.einsum('hu,bukc->bhkc', cos_h, z_re) - torch.einsum('hu,bukc->bhkc', sin_h, z_im)
    b_im = torch.einsum('hu,bukc->bhkc', cos_h, z_im) + torch.einsum('hu,bukc->bhkc', sin_h, z_re)
    # irfft along W: bins 1 .. ceil(W/2)-1 stand for two bins of the full spectrum (DC and Nyquist for one); the
    # imaginary parts of DC and Nyquist drop out because their sines are zero, as irfft ignores them
    twice = torch.ones(half, 1, device=x.device)
    twice[1:(width + 1) // 2] = 2
    out = (torch.einsum('kw,bhkc->bhwc', cos_w * twice, b_re) - torch.einsum('kw,bhkc->bhwc', sin_w * twice, b_im))
    return (out / (height * width)).to(x.dtype)
