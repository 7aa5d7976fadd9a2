"""TensorBoard views of the spectral analysis during ``fit``: the backbone's ΔlogAmp curves and its spectral filters.

Both run every ``every_n_epochs`` validation epochs on global rank 0 (never in the sanity check) and draw with the
analysis package (``spanet_pl.analysis``), so dashboards and the offline CLI show the same numbers. Without a
TensorBoardLogger the figures are skipped; scalars go to every logger.
"""
import logging
import time
from typing import Any, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from ..analysis import find_backbone, layer_curves, spf_masks, srf_filters
from ._images import tensorboard_writer

__all__ = ['FourierSpectrumLogger', 'SpectralFilterLogger']

_logger = logging.getLogger(__name__)


def _square(images: Tensor, size: Optional[int]) -> Tensor:
    """Images resized (bilinear) to ``size`` x ``size``; without ``size``, square images stay as they are and others
    are resized to their short side."""
    height, width = images.shape[-2:]
    side = size or min(height, width)
    if (height, width) == (side, side):
        return images
    return F.interpolate(images.float(), size=(side, side), mode='bilinear', align_corners=False)


class _EveryNEpochs(Callback):
    """Keeps the first validation batch's images (fixed: validation is not shuffled) and decides when to log."""

    def __init__(self, every_n_epochs: int = 1, num_images: int = 16, img_size: Optional[int] = None,
                 tag: str = 'spectral'):
        super().__init__()
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError(f'every_n_epochs and num_images must be >= 1, got {every_n_epochs}, {num_images}')
        self.every_n_epochs, self.num_images, self.img_size, self.tag = every_n_epochs, num_images, img_size, tag
        self.images: Optional[Tensor] = None
        self.seconds: Optional[float] = None  # wall time of the last call (README: cost per call)

    @override
    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if self.images is None and batch_idx == 0 and dataloader_idx == 0 and trainer.is_global_zero:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            self.images = _square(images[:self.num_images].detach(), self.img_size).cpu()

    def _due(self, trainer: Trainer) -> bool:
        return (not trainer.sanity_checking and trainer.is_global_zero and self.images is not None
                and (trainer.current_epoch + 1) % self.every_n_epochs == 0)

    @staticmethod
    def _label(pl_module: LightningModule) -> str:
        return str(getattr(pl_module, 'hparams', {}).get('backbone', type(pl_module).__name__))

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._due(trainer):
            return
        start = time.perf_counter()
        backbone = find_backbone(pl_module)
        dtype = next(backbone.parameters()).dtype  # bf16-true / 16-true runs keep their weights in half precision
        with torch.no_grad():
            self._log(trainer, backbone, self.images.to(pl_module.device, dtype), self._label(pl_module))
        self.seconds = time.perf_counter() - start
        _logger.debug('%s took %.3f s', type(self).__name__, self.seconds)

    def _log(self, trainer: Trainer, backbone: torch.nn.Module, images: Tensor, label: str) -> None:
        raise NotImplementedError


class FourierSpectrumLogger(_EveryNEpochs):
    """The relative log amplitude (ΔlogAmp) of every block's feature maps on a fixed validation batch.

    Logs the figure of ``python -m spanet_pl.analysis fourier`` (tag ``<tag>/fourier``) and, per stage, ΔlogAmp at
    the highest frequency of its last block (``<tag>/dlogamp_hf/stage<i>``, stages whose maps are at least 3x3: a
    smaller map has no frequency but DC).

    Args:
        every_n_epochs: log after every n-th validation epoch.
        num_images: images of the first validation batch to use.
        img_size: resize them to this square size; default: as they come (non-square ones to their short side).
        tag: TensorBoard tag prefix.
    """

    def _log(self, trainer: Trainer, backbone: torch.nn.Module, images: Tensor, label: str) -> None:
        curves = layer_curves(backbone, [images])
        last = {c.layer.stage: c for c in curves if c.layer.kind == 'block'}
        scalars = {f'{self.tag}/dlogamp_hf/stage{stage + 1}': c.high for stage, c in last.items() if c.size >= 3}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
        writer = tensorboard_writer(trainer)
        if writer is not None:
            from ..analysis.plots import fourier_figure  # matplotlib only where a figure is drawn
            writer.add_figure(f'{self.tag}/fourier', fourier_figure([(label, curves)]), trainer.global_step)


class SpectralFilterLogger(_EveryNEpochs):
    """The spectral filters as ``python -m spanet_pl.analysis filters`` draws them (tag ``<tag>/filters``): SPANet's
    fixed masks, SPANetV2's learned SRF after the activation (mean over each stage's blocks, per head), at the stage
    sizes of the validation images; nothing for a backbone without spectral filter.

    Args: as ``FourierSpectrumLogger`` (only the images' size is used).
    """

    def _log(self, trainer: Trainer, backbone: torch.nn.Module, images: Tensor, label: str) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        from ..analysis.plots import filter_figure  # matplotlib only where a figure is drawn
        probe = images[:1]
        filters = spf_masks(backbone, probe) or srf_filters(backbone, probe)
        if filters:
            side = images.shape[-1]
            writer.add_figure(f'{self.tag}/filters', filter_figure(filters, f'{label} @ {side}x{side}'),
                              trainer.global_step)
