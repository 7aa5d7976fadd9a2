"""A layer of ours against the PyTorch layer it replaces: the same input and output gradient through both, for the
depthwise and pointwise tests."""
from typing import List, Tuple

import torch
import torch.nn as nn


def forward_backward(ours: nn.Module, ref: nn.Module, base: torch.Tensor, grad: torch.Tensor) -> List[Tuple]:
    """``ref`` gets ``ours``'s weights; then for each: (output, input gradient, weight gradient, bias gradient) of one
    forward of a fresh leaf copy of ``base`` (its memory layout kept) and a backward of ``grad``."""
    ref.load_state_dict(ours.state_dict())
    results = []
    for layer in (ours, ref):
        x = base.detach().clone().requires_grad_()
        out = layer(x)
        out.backward(grad)
        results.append((out, x.grad, layer.weight.grad, layer.bias.grad))
    return results
