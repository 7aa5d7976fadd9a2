"""TensorBoard view of segmentation: a fixed handful of validation images as image | ground truth | prediction."""
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from typing_extensions import override

from ..models.heads import resize_to_original

__all__ = ['SegmentationImageLogger', 'default_palette', 'colorize', 'render_sample']


def default_palette(num_classes: int) -> Tensor:
    """(num_classes, 3) uint8: the PASCAL VOC colour map (bits of the class index spread over R, G, B)."""
    palette = torch.zeros(num_classes, 3, dtype=torch.uint8)
    for label in range(num_classes):
        value, r, g, b = label, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[label] = torch.tensor([r, g, b], dtype=torch.uint8)
    return palette


def colorize(mask: Tensor, palette: Tensor) -> Tensor:
    """(H, W) class indices -> (3, H, W) uint8 colours; labels outside the palette (255 = ignore) are black."""
    palette = torch.cat([palette.to(torch.uint8).cpu(), torch.zeros(1, 3, dtype=torch.uint8)])
    mask = mask.long().cpu()
    index = torch.where((mask >= 0) & (mask < len(palette) - 1), mask, len(palette) - 1)
    return palette[index].permute(2, 0, 1)


def _to_uint8_image(image: Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> Tensor:
    image = image.detach().float().cpu()
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    image = image[:3]
    if mean is not None and std is not None:
        image = image * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    else:  # unknown normalisation: stretch to the full range
        image = (image - image.min()) / (image.max() - image.min()).clamp(min=1e-6)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def render_sample(image: Tensor, target: Tensor, pred: Tensor, palette: Tensor,
                  mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                  gap: int = 4) -> Tensor:
    """One (3, H, 3W + 2 gap) uint8 picture: de-normalised image | coloured ground truth | coloured prediction."""
    height = image.shape[-2]
    separator = torch.full((3, height, gap), 255, dtype=torch.uint8)
    panels = [_to_uint8_image(image, mean, std), separator, colorize(target, palette), separator,
              colorize(pred, palette)]
    return torch.cat(panels, dim=2)


def _normalisation(trainer: Trainer, pl_module: LightningModule) -> Tuple[Optional[Sequence], Optional[Sequence]]:
    datamodule = getattr(trainer, 'datamodule', None)
    own = {'mean': getattr(datamodule, 'mean', None), 'std': getattr(datamodule, 'std', None)}
    for config in (getattr(datamodule, 'data_config', None), own, getattr(pl_module, 'data_config', None)):
        if isinstance(config, dict) and config.get('mean') is not None and config.get('std') is not None:
            return tuple(config['mean']), tuple(config['std'])
    return None, None


class SegmentationImageLogger(Callback):
    """Logs the first ``num_images`` validation images of rank 0, each as image | ground truth | prediction, to
    TensorBoard (tags ``val/overlay_{i}``) at the end of every validation (not the sanity check).

    Expects validation batches ``(images, masks)`` or ``(images, masks, {'size', 'input_size'})`` (masks at the original
    size; the image is resized to it for the picture) and ``validation_step`` to return ``{'preds': (B, H, W)}``.
    Colours come from the data module's ``palette`` (num_classes x 3, 0..255), else the PASCAL VOC colour map;
    ignored pixels are black. Images are de-normalised with the data module's (else the model's) mean and std.
    The segmentation task adds it by itself (``num_log_images``); without a TensorBoardLogger it does nothing.
    """

    def __init__(self, num_images: int = 4, tag: str = 'val/overlay'):
        super().__init__()
        self.num_images = num_images
        self.tag = tag
        self.samples: List[Tuple[Tensor, Tensor, Tensor]] = []

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.samples = []

    @override
    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if (trainer.sanity_checking or not trainer.is_global_zero or dataloader_idx != 0
                or len(self.samples) >= self.num_images or not isinstance(outputs, dict) or 'preds' not in outputs):
            return
        images, masks = batch[0], batch[1]
        sized = batch[2] if len(batch) > 2 and isinstance(batch[2], Mapping) else None
        for i, (image, mask, pred) in enumerate(zip(images, masks, outputs['preds'])):
            if len(self.samples) >= self.num_images:
                break
            if sized is not None:  # the image was resized for the network, mask and prediction are at the original size
                size = sized['size'][i:i + 1]
                image = resize_to_original(image[None].float(), sized['input_size'][i:i + 1], size)[0]
                (h, w), = size.tolist()
                mask, pred = mask[:h, :w], pred[:h, :w]
            self.samples.append((image.detach().cpu(), mask.detach().cpu(), pred.detach().cpu()))

    def render(self, trainer: Trainer, pl_module: LightningModule) -> List[Tensor]:
        """The (3, H, 3W + 8) uint8 pictures of the kept samples."""
        palette = getattr(getattr(trainer, 'datamodule', None), 'palette', None)
        if palette is None:
            palette = default_palette(getattr(pl_module, 'num_classes', 256))
        palette = torch.as_tensor(palette, dtype=torch.uint8)
        mean, std = _normalisation(trainer, pl_module)
        return [render_sample(image, mask, pred, palette, mean, std) for image, mask, pred in self.samples]

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not self.samples:
            return
        loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not loggers:
            return
        for i, picture in enumerate(self.render(trainer, pl_module)):
            loggers[0].experiment.add_image(f'{self.tag}_{i}', picture, global_step=trainer.global_step,
                                            dataformats='CHW')
        self.samples = []
