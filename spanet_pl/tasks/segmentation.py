"""Semantic segmentation with any registered SPANet-family backbone's ``features_only`` pyramid and a decoder head.

Recipes follow the papers' ADE20K tables (mmsegmentation): Semantic FPN, UperNet (+ an auxiliary FCN head on stage 3)
or an FCN-style head, cross-entropy with ``ignore_index=255``, AdamW with warmup + poly per iteration (timm's
``PolyLRScheduler``) and optional stage-wise learning-rate decay, mIoU / pixel accuracy over the whole validation
set, whole-image or sliding-window inference, and multi-scale + flip test-time augmentation.
"""
import math
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from timm.layers import to_2tuple
from timm.scheduler import PolyLRScheduler
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassJaccardIndex
from typing_extensions import override

from ..callbacks.segmentation import SegmentationImageLogger, SegmentationReport
from ..errors import UserInputError, check_choice
from ..models.heads import HEADS, FCNHead, HeadName, resize_to_original
from ._common import BackboneTask, CompileMode, MatmulPrecision, stage_lr_decay_groups, weight_decay_groups
from .seg_inference import aug_inference, aug_tag, check_scales, slide_inference

__all__ = ['SegmentationModule', 'segment', 'slide_inference', 'aug_inference', 'Inference']

Inference = Literal['whole', 'slide']

# mmseg's auxiliary FCNHead of the UperNet configs (SPANetV2-official's too): stage 3, 256 channels, one conv
AUX_DEFAULTS = {'in_index': 2, 'channels': 256, 'num_convs': 1, 'concat_input': False, 'dropout': 0.1}


def segment(backbone: nn.Module, head: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, H, W) of ``head`` over ``backbone``'s pyramid, upsampled to the input's resolution (the task's
    ``forward``, and the exported network's)."""
    logits = head(backbone(images))
    return F.interpolate(logits, size=images.shape[-2:], mode='bilinear', align_corners=False)


class SegmentationModule(BackboneTask):
    """Trains and evaluates a SPANet-family backbone with a segmentation head.

    Args:
        backbone: registered variant name (``spanet_pl.VARIANTS``); built with ``features_only=True``.
        num_classes: classes (the CLI links it from the data module); labels are 0..num_classes-1 and ignore_index.
        head: decoder: 'fpn' (Semantic FPN), 'upernet' (UperNet) or 'fcn' (FCN-style), see ``spanet_pl.models.heads``.
        head_kwargs: constructor arguments of the head (e.g. ``fpn_channels``, ``channels``, ``in_index``, ``norm``).
        aux_weight: weight of the auxiliary FCN head's loss (0.4 in the UperNet recipes); 0: no auxiliary head. It
            works with any head and is used in training only.
        aux_kwargs: ``FCNHead`` arguments of the auxiliary head over ``AUX_DEFAULTS`` (stage 3, 256 channels, 1 conv).
        backbone_kwargs: constructor arguments of the backbone: drop_path_rate, ablation switches, out_indices, ...
        pretrained: backbone weights: an official SPANet/SPANetV2 checkpoint, one of our classification (or
            segmentation) Lightning checkpoints, or a state dict in our layout.
        optimizer: optimizer factory (the papers' AdamW), applied to backbone + heads with norms, biases and spectral
            filters undecayed.
        poly_power: exponent of the poly decay ``(1 - t / T) ** poly_power`` per optimizer step after the warmup.
        warmup_steps: linear warmup from ``warmup_lr`` over this many optimizer steps before the decay.
        warmup_lr: learning rate at step 0 of the warmup.
        min_lr: floor the poly decay ends at.
        stage_lr_decay: stage-wise learning-rate decay of the backbone (SPANetV2-official: 0.9 in the UperNet
            configs; 1.0: off), see ``stage_lr_decay_groups``.
        stage_lr_decay_layers: the official ``num_layers`` of that decay (7 for S18, 11 for S36); default
            ``len(stages) - 1``, which puts the last stage at the heads' rate.
        ignore_index: label of unlabelled pixels (no loss, no metric).
        inference: 'whole' (one forward at full size) or 'slide' (``window`` windows every ``window_stride`` pixels) for
            validation, test and predict.
        window: sliding-window size (H, W) (an int for square); named apart from the data's ``crop_size`` because
            Lightning merges both modules' hyper-parameters.
        window_stride: sliding-window step (H, W); at most ``window`` so that every pixel is covered.
        test_scales: resize ratios of the multi-scale test (e.g. ``[0.5, 0.75, 1.0, 1.25, 1.5, 1.75]``), applied by
            ``validate``, ``test`` and ``predict`` (not by the validations during ``fit``); its metrics are logged
            as ``<stage>/mIoU_ms+flip`` etc. beside the single-scale ones.
        test_flip: also average the left-right mirrored image at every scale (``[1.0]`` when test_scales is unset).
        sync_bn: convert BatchNorm to SyncBatchNorm when training runs distributed on GPUs (else plain BatchNorm).
        num_log_images: validation images logged to TensorBoard as image | ground truth | prediction (0: none).
        compile, compile_backend, channels_last, float32_matmul_precision: the speed switches of the backbone, as in
            ``ClassificationModule`` (``BackboneTask.speed_up``); bf16 is the trainer's ``precision: bf16-mixed``.
    """

    monitor = 'val/mIoU'

    def __init__(
            self,
            backbone: str = 'spanet_nano',
            num_classes: int = 150,
            head: HeadName = 'fpn',
            head_kwargs: Optional[Dict[str, Any]] = None,
            aux_weight: float = 0.0,
            aux_kwargs: Optional[Dict[str, Any]] = None,
            backbone_kwargs: Optional[Dict[str, Any]] = None,
            pretrained: Optional[str] = None,
            optimizer: OptimizerCallable = torch.optim.AdamW,
            poly_power: float = 0.9,
            warmup_steps: int = 0,
            warmup_lr: float = 0.0,
            min_lr: float = 0.0,
            stage_lr_decay: float = 1.0,
            stage_lr_decay_layers: Optional[int] = None,
            ignore_index: int = 255,
            inference: Inference = 'whole',
            window: Union[int, Tuple[int, int]] = (512, 512),
            window_stride: Union[int, Tuple[int, int]] = (341, 341),
            test_scales: Optional[List[float]] = None,
            test_flip: bool = False,
            sync_bn: bool = True,
            num_log_images: int = 4,
            compile: Optional[CompileMode] = None,
            compile_backend: str = 'inductor',
            channels_last: bool = False,
            float32_matmul_precision: Optional[MatmulPrecision] = None,
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
        if aux_weight < 0 or not 0 < stage_lr_decay <= 1:
            raise UserInputError(f'need aux_weight >= 0 and 0 < stage_lr_decay <= 1, got aux_weight={aux_weight}, '
                                 f'stage_lr_decay={stage_lr_decay}')
        self.test_scales = check_scales(test_scales) or ((1.0,) if test_flip else None)
        self.backbone = self.build_backbone(backbone, backbone_kwargs, pretrained, features_only=True)
        channels = self.backbone.feature_info.channels()
        self.head = self._build_head(head, HEADS[head], channels, num_classes, head_kwargs, 'head_kwargs')
        self.aux_head = (self._build_head('fcn', FCNHead, channels, num_classes, {**AUX_DEFAULTS, **(aux_kwargs or {})},
                                          'aux_kwargs') if aux_weight > 0 else None)
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
        self.aug_tag = aug_tag(self.test_scales, test_flip) if self.test_scales else None
        if self.aug_tag:
            self.val_aug_metrics = metrics.clone(prefix='val/', postfix=f'_{self.aug_tag}')
            self.test_aug_metrics = metrics.clone(prefix='test/', postfix=f'_{self.aug_tag}')
        # per-class IoU / accuracy of validate and test runs (SegmentationReport writes them out)
        self.confusion = nn.ModuleDict({
            f'{stage}{suffix}': MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)
            for stage in ('val', 'test') for suffix in ([''] + ([f'_{self.aug_tag}'] if self.aug_tag else []))})

    @staticmethod
    def _build_head(name: str, cls, channels: Sequence[int], num_classes: int, kwargs: Optional[Dict[str, Any]],
                    key: str) -> nn.Module:
        try:
            return cls(channels, num_classes, **(kwargs or {}))
        except TypeError as error:
            raise UserInputError(f'{key} for {name!r} ({cls.__name__}): {error}') from error

    def no_weight_decay(self) -> set:
        """Names (in this module) of the backbone's undecayed tensors, e.g. SPANetV2's spectral filters."""
        model = getattr(self.backbone, 'model', self.backbone)
        skip = model.no_weight_decay() if hasattr(model, 'no_weight_decay') else ()
        return {self._backbone_prefix + name for name in skip}

    @property
    def _backbone_prefix(self) -> str:
        return 'backbone.model.' if hasattr(self.backbone, 'model') else 'backbone.'

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W) at the input's resolution."""
        return segment(self.backbone, self.head, self.to_memory_format(images))

    def inference(self, images: torch.Tensor, mode: Optional[Inference] = None) -> torch.Tensor:
        """Full-resolution logits by the configured (or the given) mode, 'whole' or 'slide'."""
        if check_choice(mode or self.hparams.inference, Inference, 'inference mode') == 'whole':
            return self(images)
        return slide_inference(self, images, self.num_classes, self.crop_size, self.stride)

    def _augmenting(self) -> bool:
        # the multi-scale test is for validate/test/predict; inside fit it would multiply every validation's cost
        return bool(self.aug_tag) and not (self._trainer is not None and self.trainer.state.fn == 'fit')

    def evaluate(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(single-scale logits, test-time-augmented class probabilities or None)`` at the input's resolution."""
        if not self._augmenting():
            return self.inference(images), None
        probs, plain = aug_inference(self.inference, images, self.test_scales, self.hparams.test_flip)
        return (plain if plain is not None else self.inference(images)), probs

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

    def training_loss(self, images: torch.Tensor, masks: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``(loss, parts)``: the decode head's cross-entropy plus ``aux_weight`` x the auxiliary head's, both on
        logits upsampled to the masks' size; ``parts`` holds the unweighted ``decode`` and ``aux`` losses."""
        features = self.backbone(self.to_memory_format(images))
        size = masks.shape[-2:]
        logits = F.interpolate(self.head(features), size=size, mode='bilinear', align_corners=False)
        parts = {'decode': self._loss(logits, masks)}
        loss = parts['decode']
        if self.aux_head is not None:
            aux = F.interpolate(self.aux_head(features), size=size, mode='bilinear', align_corners=False)
            parts['aux'] = self._loss(aux, masks)
            loss = loss + self.hparams.aux_weight * parts['aux']
        return loss, parts

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        self._check_batch(images, masks)
        loss, parts = self.training_loss(images, masks)
        self.check_finite(loss, batch_idx)
        self.log('train/loss', loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        if 'aux' in parts:
            self.log_dict({'train/loss_decode': parts['decode'], 'train/loss_aux': parts['aux']}, sync_dist=True)
        return loss

    def _eval_step(self, batch, stage: str) -> Dict[str, torch.Tensor]:
        """``batch``: ``(images, masks)`` of one size, or ``(images, masks, {'size', 'input_size'})`` with masks at the
        original size (``ADE20KDataModule``): logits are then resized back per image before the loss and metrics."""
        images, masks, *sized = batch
        self._check_batch(images, masks, same_size=not sized)
        logits, probs = self.evaluate(images)
        if sized:
            logits = resize_to_original(logits, sized[0]['input_size'], sized[0]['size'])
            probs = None if probs is None else resize_to_original(probs, sized[0]['input_size'], sized[0]['size'])
        self.log(f'{stage}/loss', self._loss(logits, masks), sync_dist=True, batch_size=images.shape[0])
        reporting = self._trainer is not None and self.trainer.state.fn in ('validate', 'test')
        outputs = {}
        for suffix, scores, metrics in (('', logits, getattr(self, f'{stage}_metrics')),
                                        (f'_{self.aug_tag}', probs, getattr(self, f'{stage}_aug_metrics', None))):
            if scores is None:
                continue
            outputs['preds'] = preds = scores.argmax(dim=1)  # the augmented prediction, where there is one
            metrics.update(preds, masks)
            self.log_dict(metrics, prog_bar=stage == 'val', batch_size=images.shape[0])
            if reporting:
                self.confusion[stage + suffix].update(preds, masks)
        return outputs

    @override
    def on_validation_epoch_start(self) -> None:
        for key, metric in self.confusion.items():
            if key.startswith('val'):
                metric.reset()

    @override
    def on_test_epoch_start(self) -> None:
        for key, metric in self.confusion.items():
            if key.startswith('test'):
                metric.reset()

    def confusion_matrices(self, stage: str) -> Dict[str, MulticlassConfusionMatrix]:
        """``{'': single-scale, 'ms+flip': augmented (when configured)}`` confusion-matrix metrics of ``stage``."""
        return {key[len(stage):].lstrip('_'): metric for key, metric in self.confusion.items()
                if key == stage or key.startswith(stage + '_')}

    @override
    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Dict[str, Any]:
        """``{'indices': (B,), 'masks': B x (H, W) int64 class indices}``.

        ``batch`` is ``(images, indices)`` (masks at the input size) or, from ``ADE20KDataModule``, ``(images, meta)``
        with per-image ``index``, original ``size`` and ``input_size``: the masks then come at each original size
        (``resize_to_original`` before the argmax). With ``test_scales`` / ``test_flip`` the masks are the augmented
        prediction.
        """
        images, meta = batch
        logits, probs = self.evaluate(images)
        scores = logits if probs is None else probs
        if not isinstance(meta, Mapping):
            return {'indices': meta, 'masks': scores.argmax(dim=1)}
        preds = resize_to_original(scores, meta['input_size'], meta['size']).argmax(dim=1)
        masks = [pred[:h, :w] for pred, (h, w) in zip(preds, meta['size'].tolist())]
        return {'indices': meta['index'], 'masks': masks}

    @override
    def configure_callbacks(self) -> List:
        n = self.hparams.num_log_images
        return ([SegmentationImageLogger(num_images=n)] if n > 0 else []) + [SegmentationReport()]

    @override
    def configure_model(self) -> None:
        """The speed switches and SyncBatchNorm for a fit distributed on GPUs (``BackboneTask.sync_batchnorm``)."""
        self.speed_up(self.hparams.compile, self.hparams.channels_last, self.hparams.float32_matmul_precision,
                      self.hparams.compile_backend)
        self.sync_batchnorm(self.hparams.sync_bn)

    @override
    def configure_optimizers(self):
        decay, layers = self.hparams.stage_lr_decay, self.hparams.stage_lr_decay_layers
        if decay < 1:
            model = getattr(self.backbone, 'model', self.backbone)
            layers = len(model.stages) - 1 if layers is None else layers
            groups = stage_lr_decay_groups(self, self._backbone_prefix, decay, layers)
        else:
            groups = weight_decay_groups(self)
        optimizer = self.optimizer_factory(groups)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise UserInputError('the poly schedule needs a finite length: set trainer.max_steps or max_epochs')
        total = max(int(total), 1)
        warmup = min(max(self.hparams.warmup_steps, 0), total - 1)
        scheduler = PolyLRScheduler(
            optimizer, t_initial=total - warmup, power=self.hparams.poly_power, lr_min=self.hparams.min_lr,
            warmup_t=warmup, warmup_lr_init=self.hparams.warmup_lr, warmup_prefix=True, t_in_epochs=False)
        scheduler.step_update(num_updates=0)  # apply the groups' lr_scale before the first step
        rank_zero_info(f'optimizer {type(optimizer).__name__}: lr {scheduler.base_values[0]:.3g}, {warmup} warmup '
                       f'steps, then poly({self.hparams.poly_power:g}) to {self.hparams.min_lr:g} at step {total}'
                       + (f'; stage-wise lr decay {decay:g} ({layers} layers)' if decay < 1 else ''))
        return {'optimizer': optimizer, 'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'}}
