"""Eager-mode fusions: element-wise chains as custom autograd functions with fewer passes over the activations.

In eager mode PyTorch runs every element-wise op of a chain such as StarReLU's ``s * relu(x) ** 2 + b`` as its own
kernel forward and several more backward, each a full pass over the activation (and an OpenMP fork/join). The
functions here compute the same values in fewer passes and save fewer tensors. TorchScript and FX symbolic tracing
get the plain expression (``use_fused`` is False there); torch.compile traces the custom functions like any op.
"""
import torch
import torch.fx._symbolic_trace as _fx_trace
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from timm.layers import Mlp
from timm.models.metaformer import StarReLU as _TimmStarReLU

__all__ = ['use_fused', 'StarReLU', 'StarMlp', 'scale_add']


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


class _StarMlpFunction(torch.autograd.Function):
    """fc2(StarReLU(fc1(x))) without biases. Owning the whole chain lets every element-wise step run in a buffer the
    function made itself: the ReLU in fc1's output, the square / scale / shift in one buffer, and backward the mask
    product and scaling in the gradient fc2 hands back; two fresh activation-sized buffers fewer than module by module.
    Saves what the modules save: x, relu(fc1(x)) and the activation."""

    @staticmethod
    def forward(ctx, x: Tensor, fc1_weight: Tensor, fc2_weight: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
        r = F.linear(x, fc1_weight).relu_()
        act = torch.mul(r, r).mul_(scale).add_(bias)
        ctx.save_for_backward(x, fc1_weight, fc2_weight, scale, r, act)
        return F.linear(act, fc2_weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, fc1_weight, fc2_weight, scale, r, act = ctx.saved_tensors
        need_x, need_w1, need_w2, need_scale, need_bias = ctx.needs_input_grad
        grad = grad.reshape(-1, grad.shape[-1])
        grad_w2 = grad.t().mm(act.reshape(-1, act.shape[-1])) if need_w2 else None
        if not (need_x or need_w1 or need_scale or need_bias):
            return None, None, grad_w2, None, None
        g = grad.mm(fc2_weight)  # d loss / d act, a buffer of our own from here on
        grad_bias = g.sum().view(1) if need_bias else None
        g = g.mul_(r.reshape(g.shape))  # zero where fc1(x) <= 0: the ReLU's mask too
        grad_scale = torch.dot(g.reshape(-1), r.reshape(-1)).view(1) if need_scale else None
        g = g.mul_(2 * scale)  # d loss / d fc1(x)
        grad_w1 = g.t().mm(x.reshape(-1, x.shape[-1])) if need_w1 else None
        grad_x = g.mm(fc1_weight).view(x.shape) if need_x else None
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
        plain = (not use_fused() or torch.compiler.is_compiling() or torch.is_autocast_enabled(x.device.type)
                 or (self.training and (self.drop1.p > 0 or self.drop2.p > 0))
                 or self.act.scale.shape != (1,) or self.act.bias.shape != (1,))
        if plain:
            return super().forward(x)
        return _StarMlpFunction.apply(x, self.fc1.weight, self.fc2.weight, self.act.scale, self.act.bias)


def scale_add(x: Tensor, scale: Tensor, y: Tensor) -> Tensor:
    """``x * scale + y`` in one pass (a res-scaled residual)."""
    return torch.addcmul(y, x, scale)
