"""Eager-mode fusions: element-wise chains as custom autograd functions with fewer passes over the activations.

In eager mode PyTorch runs every element-wise op of a chain such as StarReLU's ``s * relu(x) ** 2 + b`` as its own
kernel forward and several more backward, each a full pass over the activation (and an OpenMP fork/join). The
functions here compute the same values in fewer passes and save fewer tensors. TorchScript and FX symbolic tracing
get the plain expression (``use_fused`` is False there); torch.compile traces the custom functions like any op.
"""
import torch
import torch.fx._symbolic_trace as _fx_trace
from torch import Tensor
from torch.autograd.function import once_differentiable
from timm.models.metaformer import StarReLU as _TimmStarReLU

__all__ = ['use_fused', 'StarReLU', 'scale_add']


def use_fused() -> bool:
    """Whether the custom autograd functions may run: not under TorchScript (scripting or tracing) or FX symbolic
    tracing."""
    return not torch.jit.is_scripting() and not torch.jit.is_tracing() and not _fx_trace.is_fx_symbolic_tracing()


class _StarReLUFunction(torch.autograd.Function):
    # Two fresh buffers each way (a fresh buffer costs page faults on CPU, so the rest runs in place). Forward:
    # relu, then square, scale and shift in one buffer; backward: the mask product, its scaling in place, and two
    # reductions. Saves relu(x) only.
    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
        r = torch.relu(x)
        ctx.save_for_backward(r, scale)
        ctx.x_dtype = x.dtype
        return torch.mul(r, r).mul_(scale).add_(bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        r, scale = ctx.saved_tensors
        g_r = grad * r  # zero where x <= 0, so it is also the ReLU's mask
        grad_scale = torch.dot(g_r.reshape(-1), r.reshape(-1).to(g_r.dtype)).view(1) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum().view(1) if ctx.needs_input_grad[2] else None
        grad_x = g_r.mul_(2 * scale).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        return grad_x, grad_scale, grad_bias


class StarReLU(_TimmStarReLU):
    """timm's StarReLU, ``scale * relu(x) ** 2 + bias`` (same parameters), fused in eager mode."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # timm's expression (TorchScript has no super() and no autograd.Function)
            return self.scale * self.relu(x) ** 2 + self.bias
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: Tensor) -> Tensor:
        if not use_fused() or self.scale.shape != (1,) or self.bias.shape != (1,):
            return super().forward(x)
        return _StarReLUFunction.apply(x, self.scale, self.bias)


def scale_add(x: Tensor, scale: Tensor, y: Tensor) -> Tensor:
    """``x * scale + y`` in one pass (a res-scaled residual)."""
    return torch.addcmul(y, x, scale)
