"""TensorBoard view of detection: a fixed handful of validation images as ground truth | predictions, with boxes,
class names, scores and instance masks drawn by ``torchvision.utils``."""
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks
from typing_extensions import override

from ._images import ValidationPictureLogger
from .segmentation import default_palette

__all__ = ['DetectionImageLogger', 'draw_detections', 'render_detection_sample', 'detection_records']

MIN_SIDE = 256  # small images (the digit scenes are 64x64) are enlarged so that the labels stay readable


def draw_detections(image: Tensor, detections: Dict[str, Tensor], class_names: Optional[Sequence[str]] = None,
                    score_threshold: float = 0.0, palette: Optional[Tensor] = None) -> Tensor:
    """``image`` (3, H, W) float in [0, 1] or uint8 with ``detections`` (``boxes`` XYXY, ``labels``, optional
    ``scores`` and ``masks`` (N, [1,] H, W) probabilities or binary) drawn on it, as a (3, H', W') uint8 picture
    enlarged to a short side of at least 256 px. Detections scoring below ``score_threshold`` are left out."""
    if image.is_floating_point():
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    image = image.cpu()
    height, width = image.shape[-2:]
    scale = max(1, -(-MIN_SIDE // min(height, width)))
    keep = torch.ones(len(detections['labels']), dtype=torch.bool)
    scores = detections.get('scores')
    if scores is not None:
        keep = scores.detach().cpu() >= score_threshold
    boxes = detections['boxes'].detach().float().cpu()[keep] * scale
    labels = detections['labels'].detach().cpu()[keep]
    if scale > 1:
        image = F.interpolate(image[None].float(), scale_factor=scale, mode='nearest')[0].to(torch.uint8)
    palette = default_palette(int(labels.max()) + 2 if len(labels) else 2) if palette is None else palette
    colours = [tuple(int(c) for c in palette[int(label) % len(palette)]) for label in labels]
    masks = detections.get('masks')
    if masks is not None and keep.any():
        masks = masks.detach().float().cpu()[keep]
        masks = masks[:, 0] if masks.ndim == 4 else masks
        masks = F.interpolate(masks[None], scale_factor=scale, mode='nearest')[0] > 0.5
        image = draw_segmentation_masks(image, masks, alpha=0.45, colors=colours)
    names = [class_names[int(label) - 1] if class_names and 0 < int(label) <= len(class_names) else str(int(label))
             for label in labels]
    if scores is not None:
        names = [f'{name} {float(score):.2f}' for name, score in zip(names, scores.detach().cpu()[keep])]
    if len(boxes):
        image = draw_bounding_boxes(image, boxes, labels=names, colors=colours, width=2)
    return image


def render_detection_sample(image: Tensor, target: Dict[str, Tensor], prediction: Dict[str, Tensor],
                            class_names: Optional[Sequence[str]] = None, score_threshold: float = 0.3,
                            gap: int = 4) -> Tensor:
    """One (3, H', 2W' + gap) uint8 picture: ground truth | predictions scoring at least ``score_threshold``."""
    truth = draw_detections(image, target, class_names)
    predicted = draw_detections(image, prediction, class_names, score_threshold)
    separator = torch.full((3, truth.shape[1], gap), 255, dtype=torch.uint8)
    return torch.cat([truth, separator, predicted], dim=2)


def detection_records(names: Sequence[str], detections: Sequence[Dict[str, Tensor]],
                      class_names: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """One JSON-ready record per detection: ``image`` (its name), ``label``, ``category``, ``score``, the COCO
    ``bbox`` ``[x, y, w, h]`` and, for mask detectors, the mask (probability > 0.5) as COCO RLE ``segmentation``."""
    from pycocotools import mask as mask_utils
    records = []
    for name, found in zip(names, detections):
        masks = found.get('masks')
        for i, (box, label, score) in enumerate(zip(found['boxes'].tolist(), found['labels'].tolist(),
                                                    found['scores'].tolist())):
            x1, y1, x2, y2 = box
            record = {'image': name, 'label': label,
                      'category': class_names[label - 1] if class_names and 0 < label <= len(class_names) else label,
                      'score': round(score, 5), 'bbox': [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)]}
            if masks is not None:
                binary = (masks[i, 0] > 0.5).cpu().numpy().astype('uint8')
                rle = mask_utils.encode(np.asfortranarray(binary))
                record['segmentation'] = {'size': list(rle['size']), 'counts': rle['counts'].decode('ascii')}
            records.append(record)
    return records


class DetectionImageLogger(ValidationPictureLogger):
    """Logs the first ``num_images`` validation images of rank 0 as ground truth | predictions to TensorBoard (tags
    ``val/detections_{i}``) at the end of every validation (not the sanity check).

    Expects validation batches ``([images], [targets])`` with images in [0, 1] and ``validation_step`` to return
    ``{'preds': [detections]}``; class names come from the data module's ``classes``. The detection task adds it by
    itself (``num_log_images``); without a TensorBoardLogger it does nothing.

    Args:
        num_images: how many validation images to log.
        score_threshold: smallest score of the predictions drawn.
        tag: TensorBoard tag prefix.
    """

    def __init__(self, num_images: int = 4, score_threshold: float = 0.3, tag: str = 'val/detections'):
        super().__init__(num_images, tag)
        self.score_threshold = score_threshold

    @override
    def keep(self, trainer: Trainer, pl_module: LightningModule, batch: Any, preds: Any) -> None:
        for image, target, pred in zip(batch[0], batch[1], preds):
            if self.room() <= 0:
                break
            self.samples.append((image.detach().cpu(), {k: v.detach().cpu() for k, v in target.items()},
                                 {k: v.detach().cpu() for k, v in pred.items()}))

    @override
    def render(self, trainer: Trainer, pl_module: LightningModule) -> List[Tensor]:
        """The pictures of the kept samples."""
        names = getattr(getattr(trainer, 'datamodule', None), 'classes', None)
        return [render_detection_sample(image, target, pred, names, self.score_threshold)
                for image, target, pred in self.samples]
