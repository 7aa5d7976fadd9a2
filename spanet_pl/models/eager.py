"""When the eager-mode fast paths (custom autograd functions, oneDNN routes) may run instead of the plain expression."""
import torch
import torch.fx._symbolic_trace as _fx_trace

__all__ = ['use_fused']


def use_fused() -> bool:
    """Whether the custom autograd functions may run: not under TorchScript (scripting or tracing) or FX symbolic
    tracing."""
    return not torch.jit.is_scripting() and not torch.jit.is_tracing() and not _fx_trace.is_fx_symbolic_tracing()
