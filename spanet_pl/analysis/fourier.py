"""Relative log amplitude of feature maps, as the SPANetV2 analysis notebook computes it (after Park & Kim, "How do
vision transformers work?", ICLR 2022).

For one feature map (B, C, H, W): the 2-D FFT of every channel (fp32, or fp64 for fp64 input), log(|F| + 1e-6),
the mean of those logs over batch and channels, fftshift (DC moves to index H // 2), the main diagonal from DC to the
end, minus its DC value. The curve has H - H // 2 entries, from DC towards the highest diagonal frequency; for an
even H the Nyquist bin sits at index 0 after the shift and so is left out. Only square maps have a diagonal that
runs through matching frequencies in both directions, so other maps are refused. Only the diagonal bins are
computed (``diagonal_log_amplitude``), which equals reading them off the full 2-D FFT.

The mean of the log is additive over images, so ``LogAmplitudeMean`` accumulates it batch by batch and gives the
same curve as one call on all images at once.
"""
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import UserInputError
from .layers import Layer, forward_hooks, spectral_layers

__all__ = [
    'EPS', 'to_nchw', 'diagonal_log_amplitude', 'relative_log_amplitude', 'LogAmplitudeMean', 'diagonal_frequencies',
    'LayerCurve', 'layer_curves', 'stage_high_frequency', 'seed_cell', 'mean_over_seeds',
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


def diagonal_log_amplitude(fmap: Tensor) -> Tensor:
    """log(|F(u, u)| + 1e-6) of every image and channel of a square NCHW map at the diagonal frequencies
    u = 0 .. H - H // 2 - 1, shape (B, C, H - H // 2), where F = fft2(fmap).

    Only the diagonal is needed, and F(u, u) = Σ_s g(s) e^(-2πi u s / H) with g(s) the sum of f(y, x) over
    (y + x) mod H = s: a 1-D FFT of the wrapped anti-diagonal sums, O(H²) instead of a full 2-D FFT. The transform
    runs in fp64 for fp64 input and in fp32 otherwise (autocast off).
    """
    size = fmap.shape[-1]
    dtype = torch.float64 if fmap.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=fmap.device.type, enabled=False):
        rows = torch.arange(size, device=fmap.device)
        index = (rows[None, :] - rows[:, None]) % size  # [y, s] -> x with (y + x) mod H = s
        sums = fmap.to(dtype).gather(-1, index.expand(*fmap.shape[:-2], size, size)).sum(dim=-2)
        return torch.log(torch.fft.fft(sums, dim=-1)[..., :size - size // 2].abs() + EPS)


def relative_log_amplitude(fmap: Tensor, channels_last: bool = False) -> Tensor:
    """ΔlogAmp along the diagonal of a square feature map, shape (H - H // 2,), DC first (always 0).

    Args:
        fmap: (B, C, H, W), or (B, H, W, C) with ``channels_last``.
        channels_last: the map's channels are its last dimension.
    """
    fmap = to_nchw(fmap, channels_last)
    _check_square(fmap)
    curve = diagonal_log_amplitude(fmap).mean(dim=(0, 1))
    return curve - curve[0]


class LogAmplitudeMean:
    """Running mean of the diagonal log amplitude over images and channels of one layer's maps; ``curve()``
    finishes it. Feeding the maps in several batches gives the same curve as ``relative_log_amplitude`` on all.
    """

    def __init__(self):
        self.total: Optional[Tensor] = None
        self.count = 0
        self.size = 0  # side of the square maps seen so far

    def update(self, fmap: Tensor, channels_last: bool = False) -> None:
        fmap = to_nchw(fmap.detach(), channels_last)
        _check_square(fmap)
        if self.size and fmap.shape[-1] != self.size:
            raise UserInputError(f'feature maps changed size between batches: {self.size}x{self.size} then '
                                 f'{fmap.shape[-2]}x{fmap.shape[-1]}; resize every image to one square size')
        summed = diagonal_log_amplitude(fmap).sum(dim=(0, 1)).double().cpu()
        self.total = summed if self.total is None else self.total + summed
        self.count += fmap.shape[0] * fmap.shape[1]
        self.size = fmap.shape[-1]

    def curve(self) -> Tensor:
        """The ΔlogAmp curve (float64) of everything fed so far."""
        if self.total is None:
            raise RuntimeError('LogAmplitudeMean.curve() called before any update()')
        mean = self.total / self.count
        return mean - mean[0]


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


def seed_cell(label: str) -> str:
    """The cell a run belongs to: its label without a trailing ``/seed=N`` (a grid's seeded runs)."""
    return re.sub(r'/seed=\d+$', '', label)


def mean_over_seeds(results: Sequence[Tuple[str, List[LayerCurve]]]
                    ) -> List[Tuple[str, List[LayerCurve], List[float]]]:
    """Runs grouped by ``seed_cell``, in first-seen order: ``(cell, mean curves, std of each block's high-frequency
    ΔlogAmp)``; a cell of one run keeps its label and curves (std 0). Runs of one cell must share their layers."""
    groups: Dict[str, List[List[LayerCurve]]] = {}
    for label, curves in results:
        groups.setdefault(seed_cell(label), []).append(curves)
    out = []
    for cell, runs in groups.items():
        if len(runs) == 1:
            label = next(lbl for lbl, _ in results if seed_cell(lbl) == cell)
            out.append((label, runs[0], [0.0] * len(runs[0])))
            continue
        if len({len(run) for run in runs}) != 1 or len({tuple(c.size for c in run) for run in runs}) != 1:
            raise UserInputError(f'the seeds of {cell} have different layers or map sizes; analyse them separately')
        mean, spread = [], []
        for parts in zip(*runs):
            stacked = torch.stack([c.curve for c in parts])
            mean.append(LayerCurve(parts[0].layer, parts[0].depth, parts[0].size, stacked.mean(dim=0)))
            spread.append(float(stacked[:, -1].std()))
        out.append((f'{cell} (mean of {len(runs)} seeds)', mean, spread))
    return out
