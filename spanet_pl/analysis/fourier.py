"""Relative log amplitude of feature maps, as the SPANetV2 analysis notebook computes it (after Park & Kim, "How do
vision transformers work?", ICLR 2022).

For one feature map (B, C, H, W): the 2-D FFT of every channel (fp32, or fp64 for fp64 input), log(|F| + 1e-6),
the mean of those logs over batch and channels, fftshift (DC moves to index H // 2), the main diagonal from DC to the
end, minus its DC value. The curve has H - H // 2 entries, from DC towards the highest diagonal frequency; for an
even H the Nyquist bin sits at index 0 after the shift and so is left out. Only square maps have a diagonal that
runs through matching frequencies in both directions, so other maps are refused.

The mean of the log is additive over images, so ``LogAmplitudeMean`` accumulates it batch by batch and gives the
same curve as one call on all images at once.
"""
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import UserInputError
from .layers import Layer, forward_hooks, spectral_layers

__all__ = [
    'EPS', 'to_nchw', 'log_amplitude', 'relative_log_amplitude', 'LogAmplitudeMean', 'diagonal_frequencies',
    'LayerCurve', 'layer_curves', 'stage_high_frequency',
]

EPS = 1e-6


def to_nchw(fmap: Tensor, channels_last: bool = False) -> Tensor:
    """``fmap`` as (B, C, H, W); ``channels_last`` maps (B, H, W, C) are permuted."""
    if fmap.ndim != 4:
        raise UserInputError(f'fourier analysis needs 4-D feature maps, got shape {tuple(fmap.shape)}')
    return fmap.permute(0, 3, 1, 2) if channels_last else fmap


def _check_square(fmap: Tensor) -> None:
    height, width = fmap.shape[-2:]
    if height != width:
        raise UserInputError(
            f'fourier analysis needs square feature maps (the diagonal of a {height}x{width} spectrum mixes '
            f'frequencies of both axes unevenly); feed square images, e.g. --img-size {max(height, width) * 4}')


def log_amplitude(fmap: Tensor) -> Tensor:
    """log(|fft2(fmap)| + 1e-6) per image and channel, same shape as the NCHW ``fmap``, unshifted.

    The transform runs in fp64 for fp64 input and in fp32 otherwise (autocast off).
    """
    dtype = torch.float64 if fmap.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=fmap.device.type, enabled=False):
        return torch.log(torch.fft.fft2(fmap.to(dtype), dim=(-2, -1)).abs() + EPS)


def _diagonal_curve(mean_log: Tensor) -> Tensor:
    size = mean_log.shape[-1]
    diagonal = torch.fft.fftshift(mean_log, dim=(-2, -1)).diagonal()[size // 2:]
    return diagonal - diagonal[0]


def relative_log_amplitude(fmap: Tensor, channels_last: bool = False) -> Tensor:
    """ΔlogAmp along the diagonal of a square feature map, shape (H - H // 2,), DC first (always 0).

    Args:
        fmap: (B, C, H, W), or (B, H, W, C) with ``channels_last``.
        channels_last: the map's channels are its last dimension.
    """
    fmap = to_nchw(fmap, channels_last)
    _check_square(fmap)
    return _diagonal_curve(log_amplitude(fmap).mean(dim=(0, 1)))


class LogAmplitudeMean:
    """Running mean of the log amplitude over images and channels of one layer's maps; ``curve()`` finishes it.

    Feeding the maps in several batches gives the same curve as ``relative_log_amplitude`` on all of them.
    """

    def __init__(self):
        self.total: Optional[Tensor] = None
        self.count = 0

    def update(self, fmap: Tensor, channels_last: bool = False) -> None:
        fmap = to_nchw(fmap.detach(), channels_last)
        _check_square(fmap)
        summed = log_amplitude(fmap).sum(dim=(0, 1)).double().cpu()
        if self.total is not None and self.total.shape != summed.shape:
            raise UserInputError(f'feature maps changed size between batches: {tuple(self.total.shape)} then '
                                 f'{tuple(summed.shape)}; resize every image to one square size')
        self.total = summed if self.total is None else self.total + summed
        self.count += fmap.shape[0] * fmap.shape[1]

    @property
    def size(self) -> int:
        """Side of the square maps seen so far (0 before the first update)."""
        return 0 if self.total is None else self.total.shape[-1]

    def curve(self) -> Tensor:
        """The ΔlogAmp curve (float64) of everything fed so far."""
        if self.total is None:
            raise RuntimeError('LogAmplitudeMean.curve() called before any update()')
        return _diagonal_curve(self.total / self.count)


def diagonal_frequencies(length: int) -> List[float]:
    """The x-axis of a ΔlogAmp curve in units of π: ``length`` points from 0 to 1, as the notebook plots them (for
    an odd map side the last point is really (H - 1) / H π; the notebook's labels are kept so figures compare)."""
    if length == 1:
        return [0.0]
    return [i / (length - 1) for i in range(length)]


@dataclass
class LayerCurve:
    """The ΔlogAmp curve of one layer (see ``spectral_layers``) and its place in the network."""
    layer: Layer
    depth: float  # layer index / number of layers, as the notebook normalises depth
    size: int     # side of the square feature map
    curve: Tensor

    @property
    def high(self) -> float:
        """ΔlogAmp at the highest frequency of the curve."""
        return float(self.curve[-1])


def layer_curves(model: nn.Module, batches: Iterable[Tensor]) -> List[LayerCurve]:
    """ΔlogAmp of the stem, every downsampling layer and every block of the backbone in ``model``, averaged over all
    images of ``batches`` (each (B, 3, S, S) on the model's device; ``model`` runs them in its current mode)."""
    layers = spectral_layers(model)
    means = [LogAmplitudeMean() for _ in layers]

    def hook(layer: Layer, mean: LogAmplitudeMean):
        return lambda _, __, output: mean.update(output, layer.channels_last)

    with torch.no_grad(), forward_hooks([(layer.module, hook(layer, mean)) for layer, mean in zip(layers, means)]):
        for images in batches:
            model(images)
    return [LayerCurve(layer, layer.index / len(layers), mean.size, mean.curve()) for layer, mean in zip(layers, means)]


def stage_high_frequency(curves: Sequence[LayerCurve]) -> Dict[int, float]:
    """ΔlogAmp at the highest frequency of the last block of every stage, keyed by stage index."""
    return {c.layer.stage: c.high for c in curves if c.layer.kind == 'block'}
