"""Channel-mixing linear layers on channels-last maps, run by oneDNN's 1x1 convolution on the CPU.

A linear layer over the channels of a (B, H, W, C) map is a matrix product of its B*H*W rows with the weight, which
``F.linear`` hands to the BLAS. On the CPU oneDNN's 1x1 convolution computes the same product over the same memory
(an NCHW view of channels-last data is a 1x1 convolution's input as it stands) and, for the many-row, few-channel
products of a backbone's early stages, reaches a higher rate: on the 2-core AMD EPYC (Zen 4) development machine,
fp32, 1.35-1.45x for 25088 x 64 -> 256 (stage 0, batch 8, 224 px), 1.1-1.2x at 6272 x 128 -> 512 and 1.03-1.1x at
1568 x 320 -> 1280, and slower below about a thousand rows (392 x 512 -> 2048: 0.8x). The data gradient is the
same product with the transposed weight (a 1x1 convolution again); the weight gradient stays a matrix product
(oneDNN's backward-weights pass measured 0.7-1.2x of it, by shape). In a SPANetV2-S18 train step (batch 8, 224 px)
the path took 5-6% off the step and 3-4% off inference, A/B in one process.

``linear`` takes the convolution where ``conv_rule`` says so (CPU, fp32, at least ``MIN_ROWS`` rows, eager mode)
and ``F.linear`` everywhere else (GPU, autocast, torch.compile, TorchScript, FX, few rows). The values are the
same product summed in another order: equal to ``F.linear`` within float rounding.

``PointwiseConv2d`` is the converse for 1x1 ``nn.Conv2d`` layers (SPANet's): oneDNN on many pixels, the matrix
product on fewer than ``MIN_ROWS``.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .eager import EagerConv2d, use_fused

__all__ = ['MIN_ROWS', 'PointwiseConv2d', 'PointwiseLinear', 'conv1x1', 'conv_rule', 'linear', 'product']

MIN_ROWS = 1024  # below this oneDNN's per-call set-up outweighs its faster inner loop (measured: 392 rows, 0.8x)

_enabled = True  # benchmarks' A/B switch; see ``enable``


def enable(on: bool = True) -> bool:
    """Switch the 1x1-convolution path on or off for the whole process (for A/B timing); returns the old state."""
    global _enabled
    old, _enabled = _enabled, bool(on)
    return old


def _eager_cpu(x: Tensor) -> bool:
    """Whether this module's routes may run for ``x``: switched on, eager mode, on the CPU."""
    # use_fused() first: under FX tracing x is a proxy, whose attributes cannot steer control flow
    return _enabled and use_fused() and not torch.compiler.is_compiling() and x.device.type == 'cpu'


def conv_rule(x: Tensor, weight: Tensor) -> bool:
    """Whether ``linear(x, weight)`` runs as a oneDNN 1x1 convolution: eager fp32 on the CPU with at least
    ``MIN_ROWS`` rows (the product of x's leading dimensions)."""
    return (_eager_cpu(x) and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.dim() >= 2
            and x.numel() >= MIN_ROWS * x.shape[-1] > 0 and not torch.is_autocast_enabled('cpu')
            and torch.backends.mkldnn.is_available())


def _conv_product(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``x @ weight.T + bias`` over the last dimension of x, as a 1x1 convolution of the rows seen as a
    (1, K, rows, 1) channels-last image; the output is a view of the (1, N, rows, 1) channels-last result."""
    rows = x.reshape(1, -1, 1, x.shape[-1]).permute(0, 3, 1, 2)
    out = F.conv2d(rows, weight[:, :, None, None], bias)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])


class _PointwiseLinearFunction(torch.autograd.Function):
    # forward and data gradient as 1x1 convolutions, weight gradient as one matrix product; saves x and the weight,
    # as F.linear does
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return _conv_product(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad
        grad_rows = grad.reshape(-1, grad.shape[-1])
        grad_x = _conv_product(grad, weight.t()) if need_x else None
        grad_weight = grad_rows.t().mm(x.reshape(-1, x.shape[-1])) if need_weight else None
        grad_bias = grad_rows.sum(0) if need_bias else None
        return grad_x, grad_weight, grad_bias


def product(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``x @ weight.T + bias`` without autograd (inside other autograd functions): a 1x1 convolution where
    ``conv_rule`` says so, ``F.linear`` otherwise."""
    return _conv_product(x, weight, bias) if conv_rule(x, weight) else F.linear(x, weight, bias)


@torch.jit.unused  # TorchScript callers take their F.linear branch
def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.linear(x, weight, bias)``, as a oneDNN 1x1 convolution where ``conv_rule`` says it is faster."""
    if not conv_rule(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _PointwiseLinearFunction.apply(x, weight, bias)
    return _conv_product(x, weight, bias)


class PointwiseLinear(nn.Linear):
    """``nn.Linear`` (same parameters, state-dict keys and hooks) whose product runs through ``linear``."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return F.linear(x, self.weight, self.bias)
        return linear(x, self.weight, self.bias)


@torch.jit.unused  # TorchScript callers take their F.conv2d / F.linear branch
def conv1x1(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """A 1x1 convolution of an NCHW map (``weight`` (N, K, 1, 1) or (N, K)) as ``linear`` over its channels-last
    view: the output is channels-last NCHW (a view), and below ``MIN_ROWS`` pixels the product is a matrix product."""
    return linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)


class PointwiseConv2d(EagerConv2d):
    """A 1x1 ``nn.Conv2d`` (same parameters, state-dict keys and hooks) that runs as a matrix product on maps of
    fewer than ``MIN_ROWS`` pixels (batch included) and as oneDNN's convolution, forward and backward, otherwise.
    oneDNN's backward pass of a 1x1 convolution is as fast as the data-gradient convolution plus weight-gradient
    product of ``linear`` (A/B in a SPANetV2-S18 step: 1.01x), so the module keeps it; on few pixels the matrix
    products win (SPANet-S's stage 3 at 224 px, 392 rows: 4-5% off the train step, 2% off inference)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    @torch.jit.unused
    def _forward_eager(self, x: Tensor) -> Tensor:
        if _eager_cpu(x) and x.numel() < MIN_ROWS * x.shape[1]:
            return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)
        return self._conv_forward(x, self.weight, self.bias)
