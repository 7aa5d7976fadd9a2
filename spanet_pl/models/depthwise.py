"""Depthwise convolution whose weight gradient runs as a forward convolution, for large kernels on the CPU.

The gradient of a depthwise kernel is a correlation of each channel's input with its output gradient, summed over
the batch: ``grad_w[c, i, j] = sum_{b, y, x} g[b, c, y, x] * x[b, c, y + i - p, x + j - p]``. PyTorch's CPU kernel
for it (oneDNN's backward-weights pass) reaches a few GMAC/s, 4-7x below the forward pass of the same layer. Read
with the batch folded into the channels, the same sum is a forward depthwise convolution of the input planes
(1, B*C, H, W) with the gradient planes as (B*C, 1, H, W) kernels, padded by p so that the output is the kernel's
(2p+1)^2 window, then a sum over the batch. On the maps of a 224 input that runs 1.5-3x faster for kernels of 5 and
up on maps of 28 px and less (more the smaller the map) and 1.2-1.5x for 7 and up at 56 px, copies included, so
ExSPAM's large heads and the 7x7 conv of MixAttention take it in CPU training.

Row kernels (1 x k, SPANet's horizontal context conv) take another route: oneDNN's backward pass for a 1 x k kernel
on channels-last maps runs 2.4-2.8x slower than for the k x 1 kernel on the same map. The same convolution is a
k x 1 one over the map's rows, each row an image of W x 1 pixels: the (B, H, W, C) memory read as (B*H, C, W, 1)
channels-last, without a copy. The backward pass runs there.

ExSPAM's heads (one kernel size per group of channels) run as one call, ``heads_conv``: the kernels zero-padded to
the largest, the input's gradient in one call too, and each head's kernel gradient at its own size from one
head-major copy of the input and of the output gradient. One conv per head instead needs a copy of every head's
input and output gradient (channel slices of channels-last memory) and a stack of the outputs; in a SPANetV2-S18
CPU train step (batch 8, 224 px) the single call took 2.3% off, A/B in one process.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from timm.layers import to_2tuple

from ..errors import UserInputError
from .eager import EagerConv2d, use_fused

__all__ = ['DepthwiseConv2d', 'cpu_training', 'forward_weight_grad', 'heads_conv', 'padded_heads']


def forward_weight_grad(kernel_size: Tuple[int, int], height: int, width: int) -> bool:
    """Whether a depthwise kernel's gradient on an (height, width) map runs faster as a forward convolution on the
    CPU (measured: from 5x5 up on maps of at most 32x32, from 7x7 up on larger ones; 3x3 never)."""
    area = kernel_size[0] * kernel_size[1]
    return area >= 49 or (area >= 25 and height * width <= 32 * 32)


def cpu_training(x: Tensor, weights) -> bool:
    """Whether this module's CPU training routes may run for input ``x``: eager mode (not compiling, tracing or
    scripting), gradients on, a trainable weight among ``weights``, fp32 / fp64 on the CPU without autocast (their
    gains were measured there; elsewhere PyTorch's kernels run)."""
    # use_fused() first: under FX tracing x is a proxy, whose attributes cannot steer control flow
    return (use_fused() and not torch.compiler.is_compiling() and torch.is_grad_enabled()
            and any(w.requires_grad for w in weights) and x.device.type == 'cpu'
            and x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled('cpu'))


def _weight_grad(x: Tensor, grad: Tensor, padding: Tuple[int, int]) -> Tensor:
    """(C, 1, 2p+1, 2p+1) gradient of a stride-1 depthwise kernel from its input and output gradient (B, C, H, W):
    one depthwise convolution over the batch folded into the channels, then a sum over the batch."""
    b, c, h, w = x.shape
    planes = x.contiguous().view(1, b * c, h, w)
    kernels = grad.contiguous().view(b * c, 1, h, w)
    windows = F.conv2d(planes, kernels, padding=padding, groups=b * c)
    return windows.view(b, c, 1, windows.shape[-2], windows.shape[-1]).sum(0)


class _DepthwiseConvFunction(torch.autograd.Function):
    # forward as F.conv2d; backward: the input's gradient from PyTorch's kernel, the weight's as a forward conv
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], padding: Tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], x.shape[1],
                [True, False, False])[0]
        if need_w:
            grad_w = _weight_grad(x, grad, ctx.padding)
        if need_b:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


def _rows(t: Tensor) -> Tensor:
    """(B, C, H, W) -> the (B*H, C, W, 1) images of its rows (a view of channels-last memory, a copy otherwise)."""
    b, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(b * h, w, 1, c).permute(0, 3, 1, 2)


class _RowConvFunction(torch.autograd.Function):
    # a (1, k) depthwise conv: forward as F.conv2d; backward as the (k, 1) conv over the rows (module docstring)
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, bias, padding=(0, padding), groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        b, c, h, w = x.shape
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            _rows(grad), _rows(x), weight.transpose(2, 3), None, [1, 1], [ctx.padding, 0], [1, 1], False, [0, 0], c,
            [need_x, need_w, False])
        if grad_x is not None:
            grad_x = grad_x.permute(0, 2, 3, 1).reshape(b, h, w, c).permute(0, 3, 1, 2)
        if grad_w is not None:
            grad_w = grad_w.transpose(2, 3)
        return grad_x, grad_w, grad.sum((0, 2, 3)) if need_b else None, None


class DepthwiseConv2d(EagerConv2d):
    """A stride-1, 'same'-padded depthwise ``nn.Conv2d`` (same parameters and state-dict keys) whose weight gradient
    runs as a forward convolution where that is faster (eager fp32 / fp64 training on the CPU with kernels that
    ``forward_weight_grad`` picks), and whose backward pass for a 1 x k kernel runs over the map's rows in that
    training. Everywhere else (GPU, autocast, torch.compile, TorchScript, FX) it is ``nn.Conv2d``."""

    def __init__(self, channels: int, kernel_size, bias: bool = True):
        kernel_size = to_2tuple(kernel_size)
        if any(k % 2 == 0 for k in kernel_size):
            raise UserInputError(f'depthwise kernel_size must be odd (same padding), got {list(kernel_size)}')
        super().__init__(channels, channels, kernel_size, padding=(kernel_size[0] // 2, kernel_size[1] // 2),
                         groups=channels, bias=bias)

    @torch.jit.unused
    def _forward_eager(self, x: Tensor) -> Tensor:
        route = self._backward_route(x)
        if route == 'window':
            return _DepthwiseConvFunction.apply(x, self.weight, self.bias, self.padding)
        if route == 'rows':
            return _RowConvFunction.apply(x, self.weight, self.bias, self.padding[1])
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _backward_route(self, x: Tensor) -> Optional[str]:
        """'window' (the weight gradient as a forward conv), 'rows' (a 1 x k kernel's backward over the rows) or
        None (PyTorch's kernels)."""
        if not (cpu_training(x, [self.weight]) and x.dim() == 4):
            return None
        if forward_weight_grad(self.kernel_size, x.shape[-2], x.shape[-1]):
            return 'window'
        return 'rows' if self.kernel_size[0] == 1 < self.kernel_size[1] else None


def _head_major(t: Tensor, heads: int, interleave: bool) -> Tensor:
    """A channels-last (B, C, H, W) map whose channels hold ``heads`` heads (interleaved: channel g * heads + i is
    channel g of head i; else side by side) as contiguous NCHW planes, head by head: (heads, B, C // heads, H, W)."""
    b, c, h, w = t.shape
    split = [c // heads, heads] if interleave else [heads, c // heads]
    planes = t.permute(0, 2, 3, 1).reshape(b, h, w, *split).permute(0, 3, 4, 1, 2)  # (B, G, heads, H, W) or swapped
    return (planes.permute(2, 0, 1, 3, 4) if interleave else planes.permute(1, 0, 2, 3, 4)).contiguous()


def _channels(per_head: Tensor, interleave: bool) -> Tensor:
    """(heads, G, ...) per-head values in the channel order of the map: (heads * G, ...)."""
    return (per_head.transpose(0, 1) if interleave else per_head).flatten(0, 1)


def padded_heads(weights, biases, interleave: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """The per-head depthwise kernels (G, 1, k_i, k_i) zero-padded to the largest and their biases (G,) (or None),
    in the channel order of the map (``_channels``): the weight and bias of one depthwise conv over all heads."""
    k_max = max(w.shape[-1] for w in weights)
    padded = _channels(torch.stack([F.pad(w, [(k_max - w.shape[-1]) // 2] * 4) for w in weights]), interleave)
    return padded, None if biases[0] is None else _channels(torch.stack(list(biases)), interleave)


class _HeadsConvFunction(torch.autograd.Function):
    # forward: one depthwise conv over all heads (kernels zero-padded to the largest); backward: the input's
    # gradient likewise in one call, each head's kernel gradient at its own size from head-major copies
    @staticmethod
    def forward(ctx, x: Tensor, interleave: bool, *params: Optional[Tensor]) -> Tensor:
        heads = len(params) // 2
        weights = params[:heads]
        padded, bias = padded_heads(weights, params[heads:], interleave)
        ctx.save_for_backward(x, padded, *weights)
        ctx.interleave, ctx.with_bias = interleave, bias is not None
        return F.conv2d(x, padded, bias, padding=padded.shape[-1] // 2, groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, padded, *weights = ctx.saved_tensors
        heads, interleave = len(weights), ctx.interleave
        b, c, h, w = x.shape
        k_max = padded.shape[-1]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, padded, None, [1, 1], [k_max // 2] * 2, [1, 1], False, [0, 0], c, [True, False, False])[0]
        grad_ws = [None] * heads
        if any(ctx.needs_input_grad[2:2 + heads]):
            xs, gs = _head_major(x, heads, interleave), _head_major(grad, heads, interleave)
            for i, weight in enumerate(weights):
                k = weight.shape[-1]
                if forward_weight_grad((k, k), h, w):
                    grad_ws[i] = _weight_grad(xs[i], gs[i], (k // 2, k // 2))
                else:
                    grad_ws[i] = torch.ops.aten.convolution_backward(
                        gs[i], xs[i], weight, None, [1, 1], [k // 2] * 2, [1, 1], False, [0, 0], c // heads,
                        [False, True, False])[1]
        grad_bs = [None] * heads
        if ctx.with_bias:
            per_channel = grad.sum((0, 2, 3))
            grad_bs = list((per_channel.view(-1, heads).t() if interleave else per_channel.view(heads, -1)).unbind(0))
        return (grad_x, None, *grad_ws, *grad_bs)




def heads_conv(x: Tensor, convs, interleave: bool) -> Tensor:
    """Per-head 'same' depthwise convolutions of a channels-last (B, C, H, W) map whose channels hold one head per
    conv of ``convs`` (odd square kernels of any sizes), interleaved (channel g * heads + i is channel g of head i)
    or side by side, in one call: the kernels zero-padded to the largest. The output keeps the channel order. In
    training the kernel gradients are computed head by head at their own sizes (``_HeadsConvFunction``)."""
    weights = [conv.weight for conv in convs]
    biases = [conv.bias for conv in convs]
    return _HeadsConvFunction.apply(x, interleave, *weights, *biases)
