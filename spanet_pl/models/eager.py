"""When the eager-mode fast paths (custom autograd functions, oneDNN routes) may run instead of the plain expression."""
import torch
import torch.fx._symbolic_trace as _fx_trace
import torch.nn as nn
from torch import Tensor

__all__ = ['EagerConv2d', 'use_fused']


def use_fused() -> bool:
    """Whether the custom autograd functions may run: not under TorchScript (scripting or tracing) or FX symbolic
    tracing."""
    return not torch.jit.is_scripting() and not torch.jit.is_tracing() and not _fx_trace.is_fx_symbolic_tracing()


class EagerConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose eager forward is the subclass's ``_forward_eager`` (a faster route to the same values);
    TorchScript compiles the plain convolution."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(x, self.weight, self.bias)
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight, self.bias)
