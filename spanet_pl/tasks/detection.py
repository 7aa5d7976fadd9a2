"""Object detection and instance segmentation with any registered SPANet-family backbone in torchvision's detectors.

Recipes follow the papers' COCO tables (mmdetection): RetinaNet / Mask R-CNN 1x for SPANet, Mask R-CNN / Cascade
Mask R-CNN 3x for SPANetV2; AdamW (SPANetV2: layer-wise lr decay over the stages), linear warm-up per iteration, step
decay at epochs; COCO AP / AP50 / AP75 / APs / APm / APl of boxes and masks through torchmetrics' pycocotools backend.
"""
import bisect
import logging
import math
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from lightning.pytorch.cli import OptimizerCallable
from timm.data import resolve_model_data_config
from torchmetrics.detection import MeanAveragePrecision
from typing_extensions import override

from ..callbacks.detection import DetectionImageLogger
from ..errors import UserInputError, check_choice
from ..models.detection import DETECTOR_LEVELS, DetectorName, build_detector
from ._common import BackboneTask, weight_decay_groups

__all__ = ['DetectionModule', 'layer_decay_ids', 'COCO_METRICS']

_logger = logging.getLogger(__name__)

MASK_DETECTORS = ('mask_rcnn', 'cascade_mask_rcnn')
# torchmetrics' names -> the COCO names logged (val/bbox_AP, val/segm_AP50, ...)
COCO_METRICS = {'map': 'AP', 'map_50': 'AP50', 'map_75': 'AP75', 'map_small': 'APs', 'map_medium': 'APm',
                'map_large': 'APl', 'mar_100': 'AR100'}


def layer_decay_ids(names: Sequence[str], depths: Sequence[int]) -> Dict[str, int]:
    """Layer id of every backbone parameter name (relative to the SPANet/SPANetV2 network), as the SPANetV2
    detection code assigns them: stem 0, stage 0 → 1, stage 1 → 2, stage 2 → 3 + block // 3, stage 3 → the last
    id; returns ``{name: id}`` plus ``'': last id + 1`` for everything outside the backbone (neck, heads, output norms).
    """
    last = 3 + math.ceil(depths[2] / 3) if len(depths) > 2 else len(depths)
    ids = {'': last + 1}
    for name in names:
        parts = name.split('.')
        if parts[0] != 'stages':
            ids[name] = 0
            continue
        stage = int(parts[1])
        if stage >= 3:
            ids[name] = last
        elif stage == 2 and parts[2] == 'blocks':
            ids[name] = 3 + int(parts[3]) // 3
        else:
            ids[name] = stage + 1
    return ids


class DetectionModule(BackboneTask):
    """Trains and evaluates a SPANet-family backbone + FPN in RetinaNet, Faster R-CNN, Mask R-CNN or Cascade Mask
    R-CNN (torchvision).

    Args:
        backbone: registered variant name (``spanet_pl.VARIANTS``); built with ``features_only=True``.
        num_classes: object categories (the CLI links it from the data module); labels are 1..num_classes.
        detector: 'retinanet', 'faster_rcnn', 'mask_rcnn' or 'cascade_mask_rcnn'.
        backbone_kwargs: constructor arguments of the backbone: drop_path_rate, ablation switches, ...
        pretrained: backbone weights: an official SPANet/SPANetV2 checkpoint, one of our classification (or
            segmentation) Lightning checkpoints, or a state dict in our layout.
        fpn_channels: FPN and head channels (the papers: 256).
        out_norm: norm every backbone output before the FPN, as the official detection backbones do.
        anchor_size: anchor size at the finest level (RetinaNet stride 8, R-CNNs stride 4); 32 for COCO.
        mask_head_channels: width of the mask head's convs (the papers: 256).
        eval_min_size: evaluation short side (the detector resizes, then maps results back to the original image).
        eval_max_size: evaluation long-side cap.
        detector_kwargs: torchvision's keyword arguments of the detector (``score_thresh``,
            ``box_detections_per_img``, ``rpn_batch_size_per_image``, ``box_loss`` for the cascade, ...).
        optimizer: optimizer factory (AdamW in the papers), applied with norms, biases and spectral filters undecayed.
        layer_decay: layer-wise lr decay: the backbone's layer ``i`` (``layer_decay_ids``) trains at
            ``lr * layer_decay ** (last + 1 - i)`` and the neck and heads at ``lr``; None: one lr.
        warmup_steps: linear warm-up over this many optimizer steps ...
        warmup_ratio: ... from ``lr * warmup_ratio``.
        milestones: epochs at which the lr is multiplied by ``gamma`` (1x: 8, 11; 3x: 27, 33).
        gamma: step-decay factor.
        num_log_images: validation images logged to TensorBoard with ground truth and predictions (0: none).
        log_score_threshold: smallest score of the predictions drawn in those images.
        sync_bn: BatchNorm (the cascade's conv box heads) becomes SyncBatchNorm when a fit runs distributed on GPUs;
            elsewhere (CPU, gloo, one process) it stays per process, where SyncBatchNorm cannot run.
    """

    monitor = 'val/bbox_AP'

    def __init__(
            self,
            backbone: str = 'spanet_nano',
            num_classes: int = 80,
            detector: DetectorName = 'mask_rcnn',
            backbone_kwargs: Optional[Dict[str, Any]] = None,
            pretrained: Optional[str] = None,
            fpn_channels: int = 256,
            out_norm: bool = True,
            anchor_size: int = 32,
            mask_head_channels: int = 256,
            eval_min_size: int = 800,
            eval_max_size: int = 1333,
            detector_kwargs: Optional[Dict[str, Any]] = None,
            optimizer: OptimizerCallable = torch.optim.AdamW,
            layer_decay: Optional[float] = None,
            warmup_steps: int = 1000,
            warmup_ratio: float = 0.001,
            milestones: Sequence[int] = (8, 11),
            gamma: float = 0.1,
            num_log_images: int = 4,
            log_score_threshold: float = 0.3,
            sync_bn: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=['optimizer'])
        check_choice(detector, DetectorName, 'detector')
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise UserInputError(f'layer_decay={layer_decay} must be in (0, 1] (or null for none)')
        if warmup_steps < 0 or not 0 < warmup_ratio <= 1:
            raise UserInputError(f'need warmup_steps >= 0 and 0 < warmup_ratio <= 1, got {warmup_steps}, '
                                 f'{warmup_ratio}')
        body = self.build_backbone(backbone, backbone_kwargs, pretrained, features_only=True,
                                   out_indices=DETECTOR_LEVELS[detector])
        config = resolve_model_data_config(body)
        self.detector = build_detector(
            detector, body, num_classes, fpn_channels=fpn_channels, out_norm=out_norm, anchor_size=anchor_size,
            mask_head_channels=mask_head_channels, min_size=eval_min_size, max_size=eval_max_size,
            image_mean=config['mean'], image_std=config['std'],
            detector_kwargs=detector_kwargs)
        self.optimizer_factory = optimizer
        self.num_classes = num_classes
        self.with_masks = detector in MASK_DETECTORS
        iou_type = ('bbox', 'segm') if self.with_masks else ('bbox',)
        self.val_metrics = MeanAveragePrecision(iou_type=iou_type, backend='pycocotools')
        self.test_metrics = MeanAveragePrecision(iou_type=iou_type, backend='pycocotools')

    @property
    def backbone(self) -> nn.Module:
        """The backbone's ``features_only`` pyramid inside the detector."""
        return self.detector.backbone.body

    def no_weight_decay(self) -> set:
        """Names (in this module) of the backbone's undecayed tensors, e.g. SPANetV2's spectral filters."""
        network = self.backbone.model
        return {f'detector.backbone.body.model.{name}' for name in getattr(network, 'no_weight_decay', set)()}

    @override
    def forward(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        """Detections per image (``boxes`` XYXY in the image's pixels, ``labels`` 1..num_classes, ``scores``, and
        ``masks`` (N, 1, H, W) probabilities for the mask detectors)."""
        return self.detector(images)

    def _check_targets(self, targets: List[Dict[str, torch.Tensor]]) -> None:
        if self.with_masks and any('masks' not in t for t in targets):
            raise UserInputError(f'{self.hparams.detector} needs instance masks: set data.init_args.with_masks true')
        for t in targets:
            labels = t['labels']
            if labels.numel() and (labels.min() < 1 or labels.max() > self.num_classes):
                raise UserInputError(f'image {int(t.get("image_id", -1))}: labels {labels.unique().tolist()} outside '
                                     f'1..num_classes={self.num_classes}')

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        self._check_targets(targets)
        losses = self.detector(images, [{k: t[k] for k in ('boxes', 'labels', 'masks') if k in t} for t in targets])
        loss = sum(losses.values())
        self.check_finite(loss, batch_idx)
        size = len(images)
        self.log('train/loss', loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=size)
        self.log_dict({f'train/{k}': v.detach() for k, v in losses.items()}, on_step=True, on_epoch=False,
                      batch_size=size)
        return loss

    def _eval_step(self, batch, stage: str) -> Dict[str, Any]:
        images, targets = batch
        preds = self.detector(images)
        metrics = self.val_metrics if stage == 'val' else self.test_metrics
        metrics.update([self._for_metric(p, score=True) for p in preds], [self._for_metric(t) for t in targets])
        return {'preds': preds}

    def _for_metric(self, item: Dict[str, torch.Tensor], score: bool = False) -> Dict[str, torch.Tensor]:
        out = {'boxes': item['boxes'].float(), 'labels': item['labels']}
        if score:
            out['scores'] = item['scores'].float()
        else:
            out.update({k: item[k] for k in ('iscrowd', 'area') if k in item})
        if self.with_masks:
            if 'masks' not in item:
                raise UserInputError('mask AP needs instance masks in the validation targets: set '
                                     'data.init_args.with_masks true')
            masks = item['masks']
            out['masks'] = (masks[:, 0] > 0.5) if score else masks.bool()
        return out

    def _log_metrics(self, stage: str) -> None:
        metrics = self.val_metrics if stage == 'val' else self.test_metrics
        values = metrics.compute()
        metrics.reset()
        logged = {}
        for key, value in values.items():
            # a single iou_type gives 'map', several give 'bbox_map', 'segm_map'
            iou, name = (key[:4], key[5:]) if key.startswith(('bbox_', 'segm_')) else ('bbox', key)
            if name in COCO_METRICS:
                logged[f'{stage}/{iou}_{COCO_METRICS[name]}'] = value.float()
        shown = f'{stage}/bbox_AP50'
        self.log(shown, logged.pop(shown), prog_bar=True)  # the values are already reduced over ranks
        self.log_dict(logged)

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_metrics('val')

    @override
    def on_test_epoch_end(self) -> None:
        self._log_metrics('test')

    @override
    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Dict[str, Any]:
        """``{'indices': (B,), 'detections': [per-image detections]}`` (``forward``'s, in the image's pixels)."""
        images, indices = batch
        return {'indices': torch.as_tensor(indices), 'detections': self.detector(images)}

    @override
    def configure_model(self) -> None:
        """SyncBatchNorm for the cascade's box heads in a fit distributed on GPUs (``BackboneTask.sync_batchnorm``)."""
        self.sync_batchnorm(self.hparams.sync_bn)

    @override
    def configure_callbacks(self) -> List:
        n = self.hparams.num_log_images
        return [DetectionImageLogger(n, self.hparams.log_score_threshold)] if n > 0 else []

    def _param_groups(self) -> List[Dict[str, Any]]:
        groups = weight_decay_groups(self)
        decay = self.hparams.layer_decay
        if decay is None:
            return groups
        prefix = 'detector.backbone.body.model.'
        network = self.backbone.model
        names = {id(p): n for n, p in self.named_parameters()}
        ids = layer_decay_ids([n[len(prefix):] for n in names.values() if n.startswith(prefix)],
                              [len(stage.blocks) for stage in network.stages])
        top = ids['']
        split = []
        for group in groups:
            by_layer: Dict[int, List[nn.Parameter]] = {}
            for param in group['params']:
                name = names[id(param)]
                layer = ids[name[len(prefix):]] if name.startswith(prefix) else top
                by_layer.setdefault(layer, []).append(param)
            for layer, params in sorted(by_layer.items()):
                split.append(dict(group, params=params, lr_scale=decay ** (top - layer), layer_id=layer))
        return split

    @override
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self._param_groups())
        for group in optimizer.param_groups:
            group['lr'] *= group.get('lr_scale', 1.0)
        warmup, ratio = self.hparams.warmup_steps, self.hparams.warmup_ratio
        milestones, gamma = sorted(self.hparams.milestones), self.hparams.gamma

        def factor(step: int) -> float:
            warm = 1.0 if step >= warmup else ratio + (1.0 - ratio) * step / warmup
            return warm * gamma ** bisect.bisect_right(milestones, self.trainer.current_epoch)

        _logger.info('optimizer %s: lr %.3g in %d groups (layer decay %s), warm-up %d steps from x%g, x%g at epochs %s',
                     type(optimizer).__name__, max(g['lr'] for g in optimizer.param_groups),
                     len(optimizer.param_groups), self.hparams.layer_decay, warmup, ratio, gamma, milestones)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {'optimizer': optimizer, 'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'}}
