"""The spectral filter of ``spectral.py`` as real matrix products (DFT matrices): the CPU's fast path for the small
maps of a backbone, and the ONNX export form.

``irfft2(weight * rfft2(x, norm='ortho'), norm='ortho')`` is linear in ``x`` and needs no complex numbers when the
transforms are written as real matrices. On a channels-last map (B, H, W, C):

1. along W, real to half spectrum: one (2K x W) matrix (rows: the K cosines, then the K negated sines; K = W//2+1)
   applied to every (b, h) row, giving (B, H, 2, K, C);
2. along H, complex: with the (h, re/im) index adjacent in memory, the complex DFT is one real (2H x 2H) rotation
   matrix R, orthogonal because the ortho-normalised DFT is unitary;
3. the real filter, broadcast over re/im;
4. R^T (the inverse along H), then a (W x 2K) matrix back to W (bins 1 .. ceil(W/2)-1 count twice: each stands
   for itself and its mirror; the sines drop the imaginary parts of DC and Nyquist, as irfft does).

On the CPU these GEMMs run 1.4-3x faster than pocketfft's transforms (forward + backward) on the 56 .. 7 maps of a
224 input, where FFT calls are dominated by per-transform overhead and odd radices; onnxruntime runs ONNX ``DFT``
nodes of those lengths slowly too. Values equal the FFT path's to float rounding (about 1e-6).

The filter is self-adjoint (its matrix is W_inv R^T D R W_fwd and W_inv^T = T W_fwd with T the bins' 1/2
weights, which commute with R and D), so the backward runs the same analysis on the output gradient: grad x =
filter(grad), and the weight's gradient is the re/im- and batch-sum of spectrum(x) * T spectrum(grad).
"""
import contextlib
import functools
import math
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .eager import use_fused

__all__ = ['DFT_EVENT', 'DFT_EVENTS', 'matmul_dft', 'matmul_dft_forced', 'dft_filter', 'dft_matrices', 'at_least_fp32',
           'cos_sin']

_FORCED: Optional[bool] = None
DFT_EVENT = 'spanet::dft_filter'  # the profiler scope of the fused forward (DFT_EVENTS adds its backward node)

Matrices = Tuple[Tensor, Tensor, Tensor, Tensor]


@contextlib.contextmanager
def matmul_dft(enabled: bool = True) -> Iterator[None]:
    """Within the block, ``spectral_filter`` runs as DFT-matrix products (``enabled``) or as FFTs (not) on every
    device and map size, as plain ops (set while exporting to ONNX: matrix products or ``DFT`` nodes)."""
    global _FORCED
    previous, _FORCED = _FORCED, enabled
    try:
        yield
    finally:
        _FORCED = previous


def matmul_dft_forced() -> Optional[bool]:
    """True / False inside ``matmul_dft(True / False)``; None (the size and device decide) outside."""
    return _FORCED


def at_least_fp32(t: Tensor) -> Tensor:
    """fp16 / bf16 up to fp32; fp32 and fp64 (gradcheck) unchanged."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def cos_sin(rows: int, cols: int, n: int, device=None, first_row: int = 0) -> Tuple[Tensor, Tensor]:
    """cos and sin of 2 pi r c / n for first_row <= r < first_row + rows, 0 <= c < cols, in float64 (angles reduced
    mod n first)."""
    r = torch.arange(first_row, first_row + rows, device=device, dtype=torch.float64)[:, None]
    c = torch.arange(cols, device=device, dtype=torch.float64)[None, :]
    angle = (2 * math.pi / n) * torch.remainder(r * c, n)
    return torch.cos(angle), torch.sin(angle)


def dft_matrices_uncached(height: int, width: int, dtype: torch.dtype, device=None) -> Matrices:
    """(forward along W (2K, W), rotation along H (2H, 2H), inverse along W (W, 2K), bin weights (K,)), ortho."""
    half = width // 2 + 1
    cos_w, sin_w = cos_sin(half, width, width, device)
    twice = torch.full((half,), 2.0, dtype=torch.float64, device=device)
    twice[0] = 1
    if width % 2 == 0:
        twice[-1] = 1  # Nyquist
    forward_w = torch.cat([cos_w, -sin_w]) / math.sqrt(width)
    inverse_w = (forward_w * twice.repeat(2)[:, None]).t().contiguous()
    cos_h, sin_h = cos_sin(height, height, height, device)
    # rows (u, re/im out), cols (h, re/im in): re' = cos re + sin im, im' = cos im - sin re (e^{-i theta})
    rotation = torch.stack([torch.stack([cos_h, sin_h], -1), torch.stack([-sin_h, cos_h], -1)], 1)
    rotation = rotation.reshape(2 * height, 2 * height) / math.sqrt(height)
    return tuple(m.to(dtype) for m in (forward_w, rotation, inverse_w, twice))


# Shared by every later call, so built outside inference mode (as the masks in spectral.py).
@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)
def _dft_matrices(height: int, width: int, dtype: torch.dtype, device: torch.device) -> Matrices:
    return dft_matrices_uncached(height, width, dtype, device)


def dft_matrices(height: int, width: int, dtype: torch.dtype, device) -> Matrices:
    """``dft_matrices_uncached``, cached (built afresh while torch.compile / torch.export trace)."""
    if torch.compiler.is_compiling():
        return dft_matrices_uncached(height, width, dtype, device)
    return _dft_matrices(height, width, dtype, torch.device(device))


def _spectrum(x: Tensor, forward_w: Tensor, rotation: Tensor) -> Tensor:
    """rfft2 of channels-last ``x`` (B, H, W, C) as (B, H, 2, K, C): real and imaginary parts of each bin."""
    b, h, w, c = x.shape
    along_w = torch.matmul(forward_w, x.reshape(b * h, w, c))  # (B*H, 2K, C)
    return torch.matmul(rotation, along_w.view(b, 2 * h, -1)).view(b, h, 2, -1, c)


def _synthesis(spec: Tensor, rotation: Tensor, inverse_w: Tensor, width: int) -> Tensor:
    """irfft2 of a (B, H, 2, K, C) half spectrum, channels-last (B, H, W, C)."""
    b, h, _, k, c = spec.shape
    along_h = torch.matmul(rotation.t(), spec.reshape(b, 2 * h, k * c))
    return torch.matmul(inverse_w, along_h.view(b * h, 2 * k, c)).view(b, h, width, c)


class _DftFilterFunction(torch.autograd.Function):
    # saves the spectrum of x (for the weight's gradient) instead of autograd's chain of intermediates
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        height, width = x.shape[1], x.shape[2]
        forward_w, rotation, inverse_w, twice = dft_matrices(height, width, x.dtype, x.device)
        spec = _spectrum(x, forward_w, rotation)
        w = weight.unsqueeze(1)  # (H, 1, K, C): the same factor for re and im
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(weight, spec)
            filtered = spec * w
        else:
            ctx.save_for_backward(weight)
            filtered = spec.mul_(w)
        return _synthesis(filtered, rotation, inverse_w, width)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        saved = ctx.saved_tensors  # read once (activation checkpointing unpacks each saved tensor once)
        weight = saved[0]
        height, width = grad.shape[1], grad.shape[2]
        forward_w, rotation, inverse_w, twice = dft_matrices(height, width, grad.dtype, grad.device)
        spec_g = _spectrum(grad.contiguous(), forward_w, rotation)
        grad_w = None
        if ctx.needs_input_grad[1]:
            spec = saved[1]
            grad_w = (spec * spec_g).sum(0).sum(1).mul_(twice[:, None]).to(weight.dtype)
        grad_x = _synthesis(spec_g.mul_(weight.unsqueeze(1)), rotation, inverse_w, width) if ctx.needs_input_grad[0] \
            else None
        return grad_x, grad_w


# the profiler events of the fused form: its forward scope and its backward node (each timed with its children)
DFT_EVENTS = (DFT_EVENT, _DftFilterFunction.__name__ + 'Backward')


def dft_filter(x: Tensor, weight: Tensor) -> Tensor:
    """``irfft2(weight * rfft2(x))`` (ortho norm) over dims (1, 2) of channels-last ``x`` (B, H, W, C), real
    ``weight`` (H, W//2+1, C), in at least fp32 with autocast off; same contract as ``spectral.spectral_filter(...,
    channels_last=True)``. Returns contiguous channels-last memory in ``x``'s dtype."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = at_least_fp32(x).contiguous()
        wf = weight.to(xf.dtype)
        if use_fused() and not torch.compiler.is_compiling() and _FORCED is None:
            with torch.profiler.record_function(DFT_EVENT):
                return _DftFilterFunction.apply(xf, wf).to(x.dtype)
        # traced (torch.compile, torch.export, ONNX, TorchScript tracing, FX): the same products as plain ops
        forward_w, rotation, inverse_w, _ = dft_matrices(xf.shape[1], xf.shape[2], xf.dtype, xf.device)
        spec = _spectrum(xf, forward_w, rotation) * wf.unsqueeze(1)
        return _synthesis(spec, rotation, inverse_w, xf.shape[2]).to(x.dtype)
