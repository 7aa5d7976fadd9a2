"""Cascade Mask R-CNN (Cai & Vasconcelos, CVPR 2018; TPAMI 2019) from torchvision's R-CNN parts.

Three box stages trained at IoU 0.5 / 0.6 / 0.7 with tighter regression weights (10, 10, 5, 5) / (20, 20, 10, 10) /
(30, 30, 15, 15); each refines the previous stage's boxes (class-specific regression of the ground-truth class in
training, of the best non-background class at test). Losses are weighted 1 / 0.5 / 0.25; one mask head per stage,
trained on that stage's positives; at test the class scores and mask probabilities of all stages are averaged and
the boxes come from the last stage, as mmdetection's ``CascadeRoIHead``. Each stage is a torchvision ``RoIHeads``
(its matcher, sampler, box coder and post-processing); the RPN, FPN and transform are Mask R-CNN's.

Options of the SPANetV2 recipes: ``box_head_convs=4`` (mmdet's Shared4Conv1FCBBoxHead: torchvision's
``FastRCNNConvFCHead`` with BatchNorm) and ``box_loss='giou'`` (GIoU on the decoded boxes, weight 10).
Difference from mmdetection: the ground-truth boxes added to a stage's proposals are refined into the next stage's
proposals too (mmdetection drops them before refining; the next stage adds the ground truth again either way).
"""
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_loss
from torchvision.ops import boxes as box_ops
from torchvision.ops import generalized_box_iou_loss

from ..errors import UserInputError, check_choice

__all__ = ['CascadeMaskRCNN', 'CascadeRoIHeads', 'BoxLoss']

BoxLoss = Literal['smooth_l1', 'giou']
STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_WEIGHTS = (1.0, 0.5, 0.25)
STAGE_REG_WEIGHTS = ((10., 10., 5., 5.), (20., 20., 10., 10.), (30., 30., 15., 15.))
GIOU_WEIGHT = 10.0


class CascadeRoIHeads(nn.Module):
    """Cascade box stages (each a torchvision ``RoIHeads`` without mask) and one mask head per stage.

    Args:
        stages: the box stages, in order.
        loss_weights: one weight per stage.
        mask_roi_pool: RoIAlign of the mask branch (shared by the stages).
        mask_heads: one ``(mask_head, mask_predictor)`` Sequential per stage.
        box_loss: 'smooth_l1' (torchvision's Fast R-CNN loss) or 'giou' (on decoded boxes, weight 10).
    """

    def __init__(self, stages: Sequence[RoIHeads], loss_weights: Sequence[float], mask_roi_pool: nn.Module,
                 mask_heads: Sequence[nn.Module], box_loss: BoxLoss = 'smooth_l1'):
        super().__init__()
        if not len(stages) == len(loss_weights) == len(mask_heads):
            raise UserInputError(f'cascade: {len(stages)} stages, {len(loss_weights)} loss weights and '
                                 f'{len(mask_heads)} mask heads must be as many')
        self.stages = nn.ModuleList(stages)
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.mask_roi_pool = mask_roi_pool
        self.mask_heads = nn.ModuleList(mask_heads)
        self.box_loss = check_choice(box_loss, BoxLoss, 'cascade box loss')

    def _box_loss(self, stage: RoIHeads, logits: Tensor, regression: Tensor, proposals: List[Tensor],
                  labels: List[Tensor], targets: List[Tensor]) -> Tuple[Tensor, Tensor]:
        if self.box_loss == 'smooth_l1':
            return fastrcnn_loss(logits, regression, labels, targets)
        labels_all = torch.cat(labels)
        classification = F.cross_entropy(logits, labels_all)
        pos = torch.where(labels_all > 0)[0]
        regression = regression.reshape(len(labels_all), -1, 4)[pos, labels_all[pos]]
        boxes = torch.cat(proposals)[pos]
        predicted = stage.box_coder.decode_single(regression, boxes)
        truth = stage.box_coder.decode_single(torch.cat(targets)[pos], boxes)
        loss = generalized_box_iou_loss(predicted, truth, reduction='sum') * GIOU_WEIGHT / max(labels_all.numel(), 1)
        return classification, loss

    @staticmethod
    def _refine(stage: RoIHeads, scores: Tensor, regression: Tensor, proposals: List[Tensor],
                labels: Optional[List[Tensor]], image_shapes: List[Tuple[int, int]]) -> List[Tensor]:
        """The next stage's proposals: each box regressed by its class (ground truth for positives in training,
        else the best non-background class), clipped to the image, without gradient."""
        counts = [len(p) for p in proposals]
        decoded = stage.box_coder.decode(regression.detach(), proposals).reshape(sum(counts), -1, 4)
        best = scores[:, 1:].argmax(dim=1) + 1
        if labels is not None:
            given = torch.cat(labels)
            best = torch.where(given > 0, given, best)
        boxes = decoded[torch.arange(len(best), device=best.device), best]
        return [box_ops.clip_boxes_to_image(b, shape) for b, shape in zip(boxes.split(counts), image_shapes)]

    def forward(self, features: Dict[str, Tensor], proposals: List[Tensor], image_shapes: List[Tuple[int, int]],
                targets: Optional[List[Dict[str, Tensor]]] = None):
        losses: Dict[str, Tensor] = {}
        scores: List[Tensor] = []
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            labels = None
            if self.training:
                proposals, matched, labels, reg_targets = stage.select_training_samples(proposals, targets)
            regions = stage.box_head(stage.box_roi_pool(features, proposals, image_shapes))
            logits, regression = stage.box_predictor(regions)
            if self.training:
                weight = self.loss_weights[i]
                classification, box = self._box_loss(stage, logits, regression, proposals, labels, reg_targets)
                losses[f'loss_classifier_{i}'] = weight * classification
                losses[f'loss_box_reg_{i}'] = weight * box
                losses[f'loss_mask_{i}'] = weight * self._mask_loss(i, features, proposals, image_shapes, labels,
                                                                    matched, targets)
            scores.append(F.softmax(logits.float(), dim=-1))
            if i < last:
                proposals = self._refine(stage, scores[-1], regression, proposals, labels, image_shapes)
        if self.training:
            return [], losses
        # the stages' mean class probabilities through the last stage's post-processing, which applies a softmax:
        # softmax(log p) = p for probabilities that sum to one
        mean_scores = torch.stack(scores).mean(dim=0)
        boxes, kept_scores, kept_labels = self.stages[-1].postprocess_detections(
            mean_scores.clamp(min=1e-12).log(), regression, proposals, image_shapes)
        result = [{'boxes': b, 'labels': lab, 'scores': s} for b, s, lab in zip(boxes, kept_scores, kept_labels)]
        self._masks(features, result, image_shapes)
        return result, losses

    def _mask_loss(self, i: int, features, proposals: List[Tensor], image_shapes, labels: List[Tensor],
                   matched: List[Tensor], targets: List[Dict[str, Tensor]]) -> Tensor:
        positives = [torch.where(lab > 0)[0] for lab in labels]
        boxes = [p[pos] for p, pos in zip(proposals, positives)]
        logits = self.mask_heads[i](self.mask_roi_pool(features, boxes, image_shapes))
        return maskrcnn_loss(logits, boxes, [t['masks'] for t in targets], [t['labels'] for t in targets],
                             [m[pos] for m, pos in zip(matched, positives)])

    def _masks(self, features, result: List[Dict[str, Tensor]], image_shapes) -> None:
        boxes = [r['boxes'] for r in result]
        if sum(len(b) for b in boxes) == 0:
            for r, b in zip(result, boxes):
                r['masks'] = b.new_zeros((0, 1, 28, 28))
            return
        regions = self.mask_roi_pool(features, boxes, image_shapes)
        probs = torch.stack([head(regions).float().sigmoid() for head in self.mask_heads]).mean(dim=0)
        labels = torch.cat([r['labels'] for r in result])
        probs = probs[torch.arange(len(labels), device=labels.device), labels][:, None]
        for r, p in zip(result, probs.split([len(b) for b in boxes])):
            r['masks'] = p


class CascadeMaskRCNN(MaskRCNN):
    """torchvision's Mask R-CNN with its RoI heads replaced by ``CascadeRoIHeads``.

    Args:
        backbone: returns the FPN maps ('0'..'3', 'pool') and has ``out_channels``.
        num_classes: classes including background.
        box_head_convs: 0: torchvision's two-FC box head (1024); n > 0: n 3x3 convs with BatchNorm, then one FC
            (mmdet's Shared{n}Conv1FCBBoxHead; the SPANetV2 cascade recipe uses 4).
        box_loss: 'smooth_l1' or 'giou' (the SPANetV2 cascade recipe).
        mask_head_channels: width of each mask head's four convs and deconv.
        stage_iou_thresholds: foreground IoU per stage.
        stage_loss_weights: loss weight per stage.
        **kwargs: ``MaskRCNN``'s keyword arguments (box_head / box_predictor / mask_head / mask_predictor excepted).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, box_head_convs: int = 0,
                 box_loss: BoxLoss = 'smooth_l1', mask_head_channels: int = 256,
                 stage_iou_thresholds: Sequence[float] = STAGE_IOUS,
                 stage_loss_weights: Sequence[float] = STAGE_WEIGHTS, **kwargs):
        taken = sorted({'box_head', 'box_predictor', 'mask_head', 'mask_predictor', 'bbox_reg_weights',
                        'box_fg_iou_thresh', 'box_bg_iou_thresh'} & set(kwargs))
        if taken:
            raise UserInputError(f'cascade_mask_rcnn sets {", ".join(taken)} per stage itself')
        if len(stage_iou_thresholds) != len(STAGE_REG_WEIGHTS):
            raise UserInputError(f'cascade: stage_iou_thresholds needs {len(STAGE_REG_WEIGHTS)} values, got '
                                 f'{list(stage_iou_thresholds)}')
        super().__init__(backbone, num_classes, **kwargs)
        channels, heads = backbone.out_channels, self.roi_heads
        resolution = heads.box_roi_pool.output_size[0]

        def box_head() -> nn.Module:
            if box_head_convs > 0:
                return FastRCNNConvFCHead((channels, resolution, resolution), [channels] * box_head_convs, [1024],
                                          norm_layer=nn.BatchNorm2d)
            return TwoMLPHead(channels * resolution ** 2, 1024)

        stages = [RoIHeads(heads.box_roi_pool, box_head(), FastRCNNPredictor(1024, num_classes), iou, iou,
                           heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction,
                           weights, heads.score_thresh, heads.nms_thresh, heads.detections_per_img)
                  for iou, weights in zip(stage_iou_thresholds, STAGE_REG_WEIGHTS)]
        width = mask_head_channels
        mask_heads = [nn.Sequential(MaskRCNNHeads(channels, [width] * 4, 1),
                                    MaskRCNNPredictor(width, width, num_classes)) for _ in stages]
        self.roi_heads = CascadeRoIHeads(stages, stage_loss_weights, heads.mask_roi_pool, mask_heads, box_loss)
