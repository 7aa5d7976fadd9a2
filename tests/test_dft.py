"""The spectral filter's DFT-matrix form (models/dft.py): the CPU's path for small maps and the ONNX export form.
Known answers (identity, an ideal low-pass on cosines), equality with the FFT form in values and gradients, and the
rule that picks the form."""
import contextlib
import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from spanet_pl.models.dft import DFT_EVENT, dft_filter, matmul_dft, matmul_dft_forced
from spanet_pl.models.spectral import DFT_MAX_SIDE, spectral_filter

SIZES = [(14, 14), (7, 7), (9, 10), (5, 4), (1, 1)]  # odd and even widths (Nyquist bin or none), non-square


def _fft_filter(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The textbook expression over dims (1, 2) of channels-last x."""
    spec = torch.fft.rfft2(x, dim=(1, 2), norm='ortho') * weight
    return torch.fft.irfft2(spec, s=x.shape[1:3], dim=(1, 2), norm='ortho')


@pytest.mark.parametrize('size', SIZES)
def test_identity_weight_returns_the_input(size):
    x = torch.randn(2, *size, 3)
    torch.testing.assert_close(dft_filter(x, torch.ones(size[0], size[1] // 2 + 1, 3)), x, atol=2e-6, rtol=0)


def test_ideal_low_pass_keeps_the_low_cosine_and_removes_the_high_one():
    height, width = 8, 12
    col = torch.arange(width, dtype=torch.float32)
    low, high = torch.cos(2 * math.pi * 1 * col / width), torch.cos(2 * math.pi * 4 * col / width)
    x = (low + high).expand(height, width)[None, :, :, None]  # constant along H: only bins (0, 1) and (0, 4)
    weight = torch.zeros(height, width // 2 + 1, 1)
    weight[:, :3] = 1  # keep |k| <= 2
    out = dft_filter(x, weight)
    torch.testing.assert_close(out[0, :, :, 0], low.expand(height, width), atol=2e-6, rtol=0)


@pytest.mark.parametrize('frozen', [False, True])
@pytest.mark.parametrize('size', SIZES)
def test_values_and_gradients_equal_the_fft(size, frozen):
    """Frozen: a weight without gradient (SPANet's masks) takes the in-place branch and saves no spectrum."""
    x = torch.randn(3, *size, 5)
    w = torch.rand(size[0], size[1] // 2 + 1, 5)
    results = []
    for form in (dft_filter, _fft_filter):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_(not frozen)
        out = form(xr, wr)
        out.backward(torch.sin(out))
        results.append((out, xr.grad) + (() if frozen else (wr.grad,)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=3e-6, rtol=1e-5)


@pytest.mark.parametrize('size', [(6, 6), (5, 7), (4, 5)])
def test_gradcheck_float64(size):
    x = torch.randn(2, *size, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(size[0], size[1] // 2 + 1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dft_filter, (x, w))


def test_under_activation_checkpointing():
    x = torch.randn(2, 6, 6, 4, requires_grad=True)
    w = torch.rand(6, 4, 4, requires_grad=True)
    checkpoint(dft_filter, x, w, use_reentrant=False).sum().backward()
    grads = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    dft_filter(x, w).sum().backward()
    torch.testing.assert_close((x.grad, w.grad), grads)


def test_autocast_bf16_keeps_dtype_and_computes_in_fp32():
    x, w = torch.randn(2, 7, 7, 4), torch.rand(7, 4, 4)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = dft_filter(x.bfloat16(), w)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), _fft_filter(x.bfloat16().float(), w), atol=2e-2, rtol=0)


def test_form_rule_cpu_small_maps_use_dft_matrices_larger_ones_and_forced_ffts_do_not():
    def dft_calls(x: torch.Tensor, forced=None) -> int:
        w = torch.rand(x.shape[1], x.shape[2] // 2 + 1, x.shape[3])
        with torch.profiler.profile() as prof, matmul_dft(forced) if forced is not None else contextlib.nullcontext():
            spectral_filter(x, w, channels_last=True)
        return sum(e.key == DFT_EVENT for e in prof.events())

    assert dft_calls(torch.randn(1, DFT_MAX_SIDE, 8, 2)) == 1
    assert dft_calls(torch.randn(1, DFT_MAX_SIDE + 1, 8, 2)) == 0  # FFT
    assert dft_calls(torch.randn(1, 8, 8, 2), forced=False) == 0  # ONNX export with DFT nodes
    assert matmul_dft_forced() is None


def test_nchw_input_gives_the_fft_form_result_in_its_own_memory_order():
    x = torch.randn(2, 4, 9, 10)
    w = torch.rand(4, 9, 6)
    ours = spectral_filter(x, w)
    with matmul_dft(False):
        fft = spectral_filter(x, w)
    torch.testing.assert_close(ours, fft, atol=3e-6, rtol=0)
    assert ours.is_contiguous()
    cl = spectral_filter(x.contiguous(memory_format=torch.channels_last), w)
    assert cl.is_contiguous(memory_format=torch.channels_last)

