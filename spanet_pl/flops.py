"""FLOPs of one forward pass: ``torch.utils.flop_counter.FlopCounterMode`` plus analytic FFT counts.

FlopCounterMode counts convolutions, matmuls and attention only; FFTs and elementwise ops are not in it. The FFTs of
the spectral filters are counted analytically, per transform the model actually runs: 2.5 N log2(N) FLOPs for a real
2-D (i)rfft of N = H * W points and 5 N log2(N) for a complex one (the usual radix-2 estimate, as FFTW reports it),
times the number of channels transformed.
"""
import math
from typing import Dict

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .models.dft import matmul_dft

__all__ = ['count_flops', 'FFT_OPS']

aten = torch.ops.aten


def _fft_flops(signal_shape, dim, per_point: float) -> int:
    n = math.prod(signal_shape[d] for d in dim)
    if n <= 1:
        return 0
    return round(math.prod(signal_shape) // n * per_point * n * math.log2(n))


# FlopCounterMode formulas (called with shapes); the signal is the real side of a real transform.
def _fft_r2c_flops(x_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return _fft_flops(x_shape, dim, 2.5)


def _fft_c2r_flops(x_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return _fft_flops(out_shape, dim, 2.5)


def _fft_c2c_flops(x_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return _fft_flops(x_shape, dim, 5.0)


FFT_OPS = {aten._fft_r2c: _fft_r2c_flops, aten._fft_c2r: _fft_c2r_flops, aten._fft_c2c: _fft_c2c_flops}


def _sdpa_cpu_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q_shape, k_shape, v_shape)


# PyTorch's CPU attention kernel is missing from FlopCounterMode's registry (the CUDA ones are in it).
EXTRA_OPS = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


def count_flops(model: nn.Module, x: torch.Tensor) -> Dict[str, int]:
    """FLOPs of one eval forward of ``model`` on ``x``: 'dense' (FlopCounterMode's ops) and 'fft' (analytic). The
    spectral filters count as the FFTs they stand for, whichever form runs them (the CPU's DFT-matrix products would
    otherwise count as dense GEMMs)."""
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping={**FFT_OPS, **EXTRA_OPS})
    with torch.no_grad(), matmul_dft(False), counter:
        model(x)
    counts = counter.get_flop_counts()['Global']
    fft = sum(v for op, v in counts.items() if op in FFT_OPS)
    return dict(dense=sum(counts.values()) - fft, fft=fft)
