"""Eager-mode fusions: element-wise chains as custom autograd functions with fewer passes over the activations.

In eager mode PyTorch runs every element-wise op of a chain such as StarReLU's ``s * relu(x) ** 2 + b`` as its own
kernel forward and several more backward, each a full pass over the activation (and an OpenMP fork/join). The
functions here compute the same values in fewer passes and save fewer tensors. TorchScript and FX symbolic tracing
get the plain expression (``use_fused`` is False there); torch.compile traces the custom functions like any op.
"""
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from timm.layers import Mlp
from timm.models.metaformer import StarReLU as _TimmStarReLU

from .eager import use_fused
from .pointwise import product

__all__ = ['use_fused', 'StarReLU', 'StarMlp', 'scale_add']


def _star_forward(r: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """``scale * r ** 2 + bias`` in one fresh buffer (a fresh buffer costs page faults on CPU; the rest is in place)."""
    return torch.mul(r, r).mul_(scale).add_(bias)


def _star_backward(grad: Tensor, r: Tensor, scale: Tensor, owned: bool, need_x: bool, need_scale: bool,
                   need_bias: bool):
    """Gradients of ``scale * relu(x) ** 2 + bias`` for x, scale and bias, from the output's gradient ``grad`` and
    ``r = relu(x)`` of the same shape. ``owned``: ``grad`` is the caller's own buffer and the mask product and scaling
    run in it; otherwise they run in one fresh buffer."""
    grad_bias = grad.sum().view(1) if need_bias else None
    if not (need_x or need_scale):
        return None, None, grad_bias
    g = grad.mul_(r) if owned else grad * r  # zero where x <= 0, so it is also the ReLU's mask
    grad_scale = torch.dot(g.reshape(-1), r.reshape(-1).to(g.dtype)).view(1) if need_scale else None
    grad_x = g.mul_(2 * scale) if need_x else None
    return grad_x, grad_scale, grad_bias


class _StarReLUFunction(torch.autograd.Function):
    # forward: relu, then square, scale and shift in one buffer; backward: the mask product in one buffer, its
    # scaling in place, two reductions. Saves relu(x) only.
    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
        r = torch.relu(x)
        ctx.save_for_backward(r, scale)
        ctx.x_dtype = x.dtype
        return _star_forward(r, scale, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        r, scale = ctx.saved_tensors
        grad_x, grad_scale, grad_bias = _star_backward(grad, r, scale, False, *ctx.needs_input_grad)
        return (None if grad_x is None else grad_x.to(ctx.x_dtype)), grad_scale, grad_bias


class StarReLU(_TimmStarReLU):
    """timm's StarReLU, ``scale * relu(x) ** 2 + bias`` (same parameters), fused in eager mode."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # timm's expression (TorchScript has no super() and no autograd.Function)
            return self.scale * self.relu(x) ** 2 + self.bias
        return self._forward_eager(x)

    @torch.jit.unused
    def fusable(self) -> bool:
        """Whether the fused functions may compute this activation: eager mode, one scale and one bias."""
        return use_fused() and self.scale.shape == (1,) and self.bias.shape == (1,)

    @torch.jit.unused
    def _forward_eager(self, x: Tensor) -> Tensor:
        if not self.fusable():
            return super().forward(x)
        return _StarReLUFunction.apply(x, self.scale, self.bias)


class _StarMlpFunction(torch.autograd.Function):
    """fc2(StarReLU(fc1(x))) without biases; the products as 1x1 convolutions where ``pointwise`` says so. Owning the
    whole chain lets every element-wise step run in a buffer the function made itself: the ReLU in fc1's output, the
    square / scale / shift in one buffer, and backward the mask product and scaling in the gradient fc2 hands back;
    two fresh activation-sized buffers fewer than module by module. Saves what the modules save: x, relu(fc1(x)) and
    the activation."""

    @staticmethod
    def forward(ctx, x: Tensor, fc1_weight: Tensor, fc2_weight: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
        r = product(x, fc1_weight).relu_()
        act = _star_forward(r, scale, bias)
        ctx.save_for_backward(x, fc1_weight, fc2_weight, scale, r, act)
        return product(act, fc2_weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, fc1_weight, fc2_weight, scale, r, act = ctx.saved_tensors
        need_x, need_w1, need_w2, need_scale, need_bias = ctx.needs_input_grad
        grad = grad.reshape(-1, grad.shape[-1])
        grad_w2 = grad.t().mm(act.reshape(-1, act.shape[-1])) if need_w2 else None
        if not (need_x or need_w1 or need_scale or need_bias):
            return None, None, grad_w2, None, None
        # d loss / d act is a buffer of our own (a fresh product): the activation's backward runs in it
        grad_act = product(grad, fc2_weight.t())
        grad_h, grad_scale, grad_bias = _star_backward(grad_act, r.reshape(-1, r.shape[-1]), scale, True,
                                                       need_x or need_w1, need_scale, need_bias)
        grad_w1 = grad_h.t().mm(x.reshape(-1, x.shape[-1])) if need_w1 else None
        grad_x = product(grad_h, fc1_weight.t()).view(x.shape) if need_x else None
        return grad_x, grad_w1, grad_w2, grad_scale, grad_bias


class StarMlp(Mlp):
    """timm's ``Mlp`` (same parameters and state-dict keys) with our StarReLU and no biases, run as one fused
    function in eager fp32 / bf16 training and inference without dropout; the module-by-module forward otherwise
    (dropout, autocast, torch.compile, TorchScript, FX)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.):
        super().__init__(in_features, hidden_features, act_layer=StarReLU, bias=False, drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: Tensor) -> Tensor:
        plain = (not self.act.fusable() or torch.compiler.is_compiling() or torch.is_autocast_enabled(x.device.type)
                 or (self.training and (self.drop1.p > 0 or self.drop2.p > 0)))
        if plain:
            return super().forward(x)
        return _StarMlpFunction.apply(x, self.fc1.weight, self.fc2.weight, self.act.scale, self.act.bias)


def scale_add(x: Tensor, scale: Tensor, y: Tensor) -> Tensor:
    """``x * scale + y`` in one pass (a res-scaled residual)."""
    return torch.addcmul(y, x, scale)
