"""Semantic segmentation with any registered SPANet-family backbone's ``features_only`` pyramid and a decoder head.

Recipes follow the papers' ADE20K tables (mmsegmentation): Semantic FPN or an FCN-style head, cross-entropy with
``ignore_index=255``, AdamW with a poly schedule per iteration, mIoU / pixel accuracy over the whole validation set,
whole-image or sliding-window inference.
"""
import logging
import math
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from timm.layers import to_2tuple
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from typing_extensions import override

from ..callbacks.segmentation import SegmentationImageLogger
from ..errors import UserInputError, check_choice
from ..models.heads import HEADS, HeadName, resize_to_original
from ._common import BackboneTask, weight_decay_groups

__all__ = ['SegmentationModule', 'slide_inference', 'Inference']

Inference = Literal['whole', 'slide']

_logger = logging.getLogger(__name__)

def slide_inference(model: nn.Module, images: torch.Tensor, num_classes: int, crop_size: Tuple[int, int],
                    stride: Tuple[int, int]) -> torch.Tensor:
    """Logits of overlapping ``crop_size`` windows placed every ``stride`` pixels, averaged where they overlap.

    As mmsegmentation's ``slide_inference``: the last window of a row/column is shifted back to end at the border,
    and a side shorter than the crop is taken whole (no padding), so an image that fits in one window gives exactly
    the whole-image logits.
    """
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    batch, _, height, width = images.shape
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    logits = images.new_zeros((batch, num_classes, height, width), dtype=torch.float32)
    count = images.new_zeros((1, 1, height, width), dtype=torch.float32)
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            logits[:, :, y1:y2, x1:x2] += model(images[:, :, y1:y2, x1:x2]).float()
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count


class SegmentationModule(BackboneTask):
    """Trains and evaluates a SPANet-family backbone with a segmentation head.

    Args:
        backbone: registered variant name (``spanet_pl.VARIANTS``); built with ``features_only=True``.
        num_classes: classes (the CLI links it from the data module); labels are 0..num_classes-1 and ignore_index.
        head: decoder: 'fpn' (Semantic FPN) or 'fcn' (FCN-style), see ``spanet_pl.models.heads``.
        head_kwargs: constructor arguments of the head (e.g. ``fpn_channels``, ``channels``, ``in_index``, ``norm``).
        backbone_kwargs: constructor arguments of the backbone: drop_path_rate, ablation switches, out_indices, ...
        pretrained: backbone weights: an official SPANet/SPANetV2 checkpoint, one of our classification (or
            segmentation) Lightning checkpoints, or a state dict in our layout.
        optimizer: optimizer factory (AdamW in the papers: lr 2e-4, weight_decay 1e-4), applied to backbone + head with
            norms, biases and spectral filters undecayed.
        poly_power: exponent of the poly decay ``(1 - t / T) ** poly_power`` per optimizer step.
        warmup_steps: linear warmup from 0 over this many optimizer steps before the decay.
        min_lr: floor the poly decay ends at.
        ignore_index: label of unlabelled pixels (no loss, no metric).
        inference: 'whole' (one forward at full size) or 'slide' (``window`` windows every ``window_stride`` pixels) for
            validation, test and predict.
        window: sliding-window size (H, W) (an int for square); named apart from the data's ``crop_size`` because
            Lightning merges both modules' hyper-parameters.
        window_stride: sliding-window step (H, W); at most ``window`` so that every pixel is covered.
        num_log_images: validation images logged to TensorBoard as image | ground truth | prediction (0: none).
    """

    monitor = 'val/mIoU'

    def __init__(
            self,
            backbone: str = 'spanet_nano',
            num_classes: int = 150,
            head: HeadName = 'fpn',
            head_kwargs: Optional[Dict[str, Any]] = None,
            backbone_kwargs: Optional[Dict[str, Any]] = None,
            pretrained: Optional[str] = None,
            optimizer: OptimizerCallable = torch.optim.AdamW,
            poly_power: float = 0.9,
            warmup_steps: int = 0,
            min_lr: float = 0.0,
            ignore_index: int = 255,
            inference: Inference = 'whole',
            window: Union[int, Tuple[int, int]] = (512, 512),
            window_stride: Union[int, Tuple[int, int]] = (341, 341),
            num_log_images: int = 4,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=['optimizer'])
        check_choice(head, HeadName, 'segmentation head')
        check_choice(inference, Inference, 'inference mode')
        self.crop_size, self.stride = tuple(to_2tuple(window)), tuple(to_2tuple(window_stride))
        if (len(self.crop_size) != 2 or len(self.stride) != 2 or min(self.stride) < 1
                or any(s > c for s, c in zip(self.stride, self.crop_size))):
            raise UserInputError(f'sliding window needs 1 <= window_stride <= window per side, got window '
                                 f'{self.crop_size} and window_stride {self.stride}')
        if num_classes < 1 or 0 <= ignore_index < num_classes:
            raise UserInputError(f'need num_classes >= 1 and ignore_index outside 0..num_classes-1, got '
                                 f'num_classes={num_classes}, ignore_index={ignore_index}')
        self.backbone = self.build_backbone(backbone, backbone_kwargs, pretrained, features_only=True)
        try:
            self.head = HEADS[head](self.backbone.feature_info.channels(), num_classes, **(head_kwargs or {}))
        except TypeError as error:
            raise UserInputError(f'head_kwargs for {head!r} ({HEADS[head].__name__}): {error}') from error
        self.optimizer_factory = optimizer
        self.num_classes, self.ignore_index = num_classes, ignore_index
        metrics = MetricCollection({
            'mIoU': MulticlassJaccardIndex(num_classes, ignore_index=ignore_index, average='macro',
                                           validate_args=False),
            'aAcc': MulticlassAccuracy(num_classes, ignore_index=ignore_index, average='micro', validate_args=False),
            'mAcc': MulticlassAccuracy(num_classes, ignore_index=ignore_index, average='macro', validate_args=False),
        })
        self.val_metrics = metrics.clone(prefix='val/')
        self.test_metrics = metrics.clone(prefix='test/')

    def no_weight_decay(self) -> set:
        """Names (in this module) of the backbone's undecayed tensors, e.g. SPANetV2's spectral filters."""
        model = getattr(self.backbone, 'model', self.backbone)
        prefix = 'backbone.model.' if model is not self.backbone else 'backbone.'
        skip = model.no_weight_decay() if hasattr(model, 'no_weight_decay') else ()
        return {prefix + name for name in skip}

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W) at the input's resolution."""
        logits = self.head(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode='bilinear', align_corners=False)

    def inference(self, images: torch.Tensor, mode: Optional[Inference] = None) -> torch.Tensor:
        """Full-resolution logits by the configured (or the given) mode, 'whole' or 'slide'."""
        if check_choice(mode or self.hparams.inference, Inference, 'inference mode') == 'whole':
            return self(images)
        return slide_inference(self, images, self.num_classes, self.crop_size, self.stride)

    def _check_batch(self, images: torch.Tensor, masks: torch.Tensor, same_size: bool = True) -> None:
        if (images.ndim != 4 or masks.ndim != 3 or images.shape[0] != masks.shape[0]
                or (same_size and images.shape[-2:] != masks.shape[-2:])):
            raise UserInputError(f'expected images (B, C, H, W) and masks (B, H, W) of the same size, got images '
                                 f'{tuple(images.shape)} and masks {tuple(masks.shape)}')
        if masks.dtype.is_floating_point or masks.dtype == torch.bool:
            raise UserInputError(f'masks must hold integer class indices, got {masks.dtype}')
        invalid = (masks < 0) | ((masks >= self.num_classes) & (masks != self.ignore_index))
        if invalid.any():
            values = masks[invalid].unique()[:8].tolist()
            raise UserInputError(
                f'mask labels {values} are outside 0..{self.num_classes - 1} and not ignore_index '
                f'{self.ignore_index}: check num_classes and the label mapping (ADE20K: reduce_zero_label)')

    def _loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        # the mean over labelled pixels; a batch without any (a crop of unlabelled "other") gives 0, not 0/0
        labelled = (masks != self.ignore_index).sum().clamp(min=1)
        return F.cross_entropy(logits, masks, ignore_index=self.ignore_index, reduction='sum') / labelled

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        self._check_batch(images, masks)
        loss = self._loss(self(images), masks)
        self.check_finite(loss, batch_idx)
        self.log('train/loss', loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def _eval_step(self, batch, stage: str) -> Dict[str, torch.Tensor]:
        """``batch``: ``(images, masks)`` of one size, or ``(images, masks, {'size', 'input_size'})`` with masks at the
        original size (``ADE20KDataModule``): logits are then resized back per image before the loss and metrics."""
        images, masks, *sized = batch
        self._check_batch(images, masks, same_size=not sized)
        logits = self.inference(images)
        if sized:
            logits = resize_to_original(logits, sized[0]['input_size'], sized[0]['size'])
        self.log(f'{stage}/loss', self._loss(logits, masks), sync_dist=True, batch_size=images.shape[0])
        preds = logits.argmax(dim=1)
        metrics = self.val_metrics if stage == 'val' else self.test_metrics
        metrics.update(preds, masks)
        self.log_dict(metrics, prog_bar=stage == 'val', batch_size=images.shape[0])
        return {'preds': preds}

    @override
    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Dict[str, Any]:
        """``{'indices': (B,), 'masks': B x (H, W) int64 class indices}``.

        ``batch`` is ``(images, indices)`` (masks at the input size) or, from ``ADE20KDataModule``, ``(images, meta)``
        with per-image ``index``, original ``size`` and ``input_size``: the masks then come at each original size
        (``resize_to_original`` before the argmax).
        """
        images, meta = batch
        logits = self.inference(images)
        if not isinstance(meta, Mapping):
            return {'indices': meta, 'masks': logits.argmax(dim=1)}
        preds = resize_to_original(logits, meta['input_size'], meta['size']).argmax(dim=1)
        masks = [pred[:h, :w] for pred, (h, w) in zip(preds, meta['size'].tolist())]
        return {'indices': meta['index'], 'masks': masks}

    @override
    def configure_callbacks(self) -> List:
        n = self.hparams.num_log_images
        return [SegmentationImageLogger(num_images=n)] if n > 0 else []

    @override
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(weight_decay_groups(self))
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise UserInputError('the poly schedule needs a finite length: set trainer.max_steps or max_epochs')
        total, warmup, power = max(int(total), 1), self.hparams.warmup_steps, self.hparams.poly_power
        warmup = min(max(warmup, 0), total - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(1.0 - (step - warmup) / max(total - warmup, 1), 0.0) ** power

        def decay_to(floor: float):
            return lambda step: floor + (1.0 - floor) * factor(step)

        lambdas = [decay_to(min(self.hparams.min_lr / g['lr'], 1.0) if g['lr'] > 0 else 0.0)
                   for g in optimizer.param_groups]
        _logger.info('optimizer %s: lr %.3g, poly(%.2f) over %d steps after %d warmup, floor %.3g',
                     type(optimizer).__name__, optimizer.param_groups[0]['lr'], power, total, warmup,
                     self.hparams.min_lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {'optimizer': optimizer, 'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'}}
