"""TensorBoard and file views of segmentation: a fixed handful of validation images as image | ground truth |
prediction during training, and the per-class IoU / accuracy table (CSV + TensorBoard) with a confusion-matrix image
at the end of ``validate`` / ``test``; one class palette for all of them and for the data modules."""
import csv
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

from ..models.heads import resize_to_original
from ._images import ValidationPictureLogger, tensorboard_writer

__all__ = ['SegmentationImageLogger', 'SegmentationReport', 'default_palette', 'colorize', 'render_sample',
           'per_class_scores', 'confusion_image']


def default_palette(num_classes: int) -> Tensor:
    """(num_classes, 3) uint8: the class colours of every picture and palette PNG in the project — the PASCAL VOC
    colour map (bits of the index spread over R, G, B) without its first colour, black, which stays for ignored
    pixels (``colorize``): class ``i`` gets VOC colour ``i + 1``."""
    palette = torch.zeros(num_classes, 3, dtype=torch.uint8)
    for label in range(num_classes):
        value, r, g, b = label + 1, 0, 0, 0
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


class SegmentationImageLogger(ValidationPictureLogger):
    """Logs the first ``num_images`` validation images of rank 0, each as image | ground truth | prediction, to
    TensorBoard (tags ``val/overlay_{i}``) at the end of every validation (not the sanity check).

    Expects validation batches ``(images, masks)`` or ``(images, masks, {'size', 'input_size'})`` (masks at the original
    size; the image is resized to it for the picture) and ``validation_step`` to return ``{'preds': (B, H, W)}``.
    Colours come from the data module's ``palette`` (num_classes x 3, 0..255), else ``default_palette`` (the data
    modules' own); ignored pixels are black. Images are de-normalised with the data module's (else the model's) mean and std.
    The segmentation task adds it by itself (``num_log_images``); without a TensorBoardLogger it does nothing.
    """

    def __init__(self, num_images: int = 4, tag: str = 'val/overlay'):
        super().__init__(num_images, tag)

    @override
    def keep(self, trainer: Trainer, pl_module: LightningModule, batch: Any, preds: Any) -> None:
        images, masks = batch[0], batch[1]
        sized = batch[2] if len(batch) > 2 and isinstance(batch[2], Mapping) else None
        for i, (image, mask, pred) in enumerate(zip(images, masks, preds)):
            if self.room() <= 0:
                break
            if sized is not None:  # the image was resized for the network, mask and prediction are at the original size
                size = sized['size'][i:i + 1]
                image = resize_to_original(image[None].float(), sized['input_size'][i:i + 1], size)[0]
                (h, w), = size.tolist()
                mask, pred = mask[:h, :w], pred[:h, :w]
            self.samples.append((image.detach().cpu(), mask.detach().cpu(), pred.detach().cpu()))

    @override
    def render(self, trainer: Trainer, pl_module: LightningModule) -> List[Tensor]:
        """The (3, H, 3W + 8) uint8 pictures of the kept samples."""
        palette = getattr(getattr(trainer, 'datamodule', None), 'palette', None)
        if palette is None:
            palette = default_palette(getattr(pl_module, 'num_classes', 255))
        palette = torch.as_tensor(palette, dtype=torch.uint8)
        mean, std = _normalisation(trainer, pl_module)
        return [render_sample(image, mask, pred, palette, mean, std) for image, mask, pred in self.samples]


def per_class_scores(confusion: Tensor) -> Dict[str, Tensor]:
    """Per-class ``IoU``, ``Acc`` (recall) and ground-truth ``pixels`` from a (K, K) confusion matrix (rows: ground
    truth, columns: prediction), float64; NaN where undefined (IoU: the class is in neither; Acc: not in the ground
    truth), so that their nan-means are mmseg's (and torchmetrics') mIoU and mAcc."""
    confusion = confusion.double()
    hits, truth, predicted = confusion.diagonal(), confusion.sum(dim=1), confusion.sum(dim=0)
    return {'IoU': hits / (truth + predicted - hits), 'Acc': hits / truth, 'pixels': truth}


def confusion_image(confusion: Tensor, side: int = 512) -> Tensor:
    """(3, S, S) uint8 picture of the row-normalised confusion matrix (viridis; a class's row sums to 1), each cell
    ``side // K`` pixels (at least 1): a bright diagonal is good, a bright off-diagonal cell a confused pair."""
    from matplotlib import colormaps  # a plotting import only where a picture is made
    confusion = confusion.double()
    rows = confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    cell = max(1, side // confusion.shape[0])
    rows = rows.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    rgb = torch.from_numpy(colormaps['viridis'](rows.numpy(), bytes=True)[..., :3])
    return rgb.permute(2, 0, 1).contiguous()


def _format(value: float) -> str:
    return 'nan' if math.isnan(value) else f'{value:.4f}'


class SegmentationReport(Callback):
    """At the end of ``validate`` / ``test``: per-class IoU and accuracy as ``<log_dir>/<stage>_per_class.csv``
    (index, class, ground-truth pixels, IoU, Acc, the same for the augmented test when configured, and a ``mean``
    row), the same table as TensorBoard text (``<stage>/per_class``) and the confusion matrix as an image
    (``<stage>/confusion_matrix[_ms+flip]``).

    Reads the task's ``confusion_matrices(stage)`` (``SegmentationModule`` fills them in validate/test runs only);
    class names come from the data module's ``classes``, else ``class_<i>``. Writes nothing without a logger (or in a
    ``fast_dev_run``). The segmentation task adds it itself.
    """

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report(trainer, pl_module, 'val')

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report(trainer, pl_module, 'test')

    def _report(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.sanity_checking or trainer.state.fn not in ('validate', 'test'):
            return
        matrices = getattr(pl_module, 'confusion_matrices', lambda _: {})(stage)
        if not matrices:
            return
        computed = {tag: metric.compute().cpu() for tag, metric in matrices.items()}  # every rank: a collective
        for metric in matrices.values():
            metric.reset()
        if not trainer.is_global_zero or trainer.fast_dev_run or not trainer.loggers:  # no run folder to write to
            return
        path = Path(trainer.log_dir) / f'{stage}_per_class.csv'
        header, rows = self.table(computed, getattr(trainer.datamodule, 'classes', None))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, 'w', newline='') as f:
            csv.writer(f).writerows([header] + rows)
        rank_zero_info(f'{stage}: per-class IoU / accuracy in {path}')
        writer, step = tensorboard_writer(trainer), trainer.global_step
        if writer is not None:
            lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
            writer.add_text(f'{stage}/per_class', '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows]), step)
            for tag, confusion in computed.items():
                writer.add_image(f'{stage}/confusion_matrix' + (f'_{tag}' if tag else ''), confusion_image(confusion),
                                 step, dataformats='CHW')

    @staticmethod
    def table(confusions: Dict[str, Tensor], classes: Optional[Sequence[str]] = None
              ) -> Tuple[List[str], List[List[str]]]:
        """Header and rows (strings) of the per-class table; ``confusions`` maps a tag ('' or e.g. 'ms+flip') to
        its (K, K) confusion matrix."""
        scores = {tag: per_class_scores(confusion) for tag, confusion in confusions.items()}
        first = next(iter(scores.values()))
        count = len(first['pixels'])
        names = list(classes) if classes is not None and len(classes) == count else [f'class_{i}' for i in range(count)]
        header = ['index', 'class', 'pixels']
        for tag in scores:
            header += [f'IoU_{tag}' if tag else 'IoU', f'Acc_{tag}' if tag else 'Acc']
        rows = []
        for i in range(count):
            row = [str(i), names[i], str(int(first['pixels'][i]))]
            for values in scores.values():
                row += [_format(values['IoU'][i].item()), _format(values['Acc'][i].item())]
            rows.append(row)
        mean = ['', 'mean', str(int(first['pixels'].sum()))]
        for values in scores.values():
            mean += [_format(values['IoU'].nanmean().item()), _format(values['Acc'].nanmean().item())]
        return header, rows + [mean]
