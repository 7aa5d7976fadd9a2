"""Class activation maps through the grad-cam package (``pytorch_grad_cam``), ScoreCAM by default as the official
SPANet / SPANetV2 demos use; the target layer is the backbone's last stage (SPANetV2's channels-last output is
permuted to NCHW for the package)."""
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..errors import UserInputError
from ..models import SPANetV2
from .layers import find_backbone

__all__ = ['CAM_METHODS', 'CamResult', 'class_activation_maps', 'nhwc_to_nchw']


def _methods():
    import pytorch_grad_cam as pgc
    return {
        'scorecam': pgc.ScoreCAM, 'gradcam': pgc.GradCAM, 'gradcam++': pgc.GradCAMPlusPlus, 'xgradcam': pgc.XGradCAM,
        'hirescam': pgc.HiResCAM, 'layercam': pgc.LayerCAM, 'eigencam': pgc.EigenCAM, 'ablationcam': pgc.AblationCAM,
    }


CAM_METHODS = ('scorecam', 'gradcam', 'gradcam++', 'xgradcam', 'hirescam', 'layercam', 'eigencam', 'ablationcam')


def nhwc_to_nchw(tensor: Tensor) -> Tensor:
    """grad-cam's reshape_transform for channels-last activations."""
    return tensor.permute(0, 3, 1, 2)


@dataclass
class CamResult:
    """CAMs in [0, 1] at the input size (N, H, W), the explained class and its softmax probability per image."""
    cams: np.ndarray
    classes: np.ndarray
    probs: np.ndarray


def class_activation_maps(
        model: nn.Module,
        images: Tensor,
        method: str = 'scorecam',
        target_layer: Optional[nn.Module] = None,
        reshape_transform: Optional[Callable] = None,
        classes: Optional[Sequence[int]] = None,
        batch_size: int = 32,
) -> CamResult:
    """CAMs of ``model``'s top-1 class (or ``classes``) for ``images`` (N, 3, H, W).

    Args:
        model: a classifier returning logits.
        method: one of ``CAM_METHODS``.
        target_layer: layer whose activations are weighted; default the last stage of the SPANet / SPANetV2 inside
            ``model`` (with the channels-last permute for SPANetV2).
        reshape_transform: maps the target layer's output to NCHW (set automatically with the default layer).
        classes: class to explain per image; default each image's top-1.
        batch_size: ScoreCAM / AblationCAM forward batch over masked inputs.
    """
    if method not in CAM_METHODS:
        raise UserInputError(f'unknown CAM method {method!r}; choose from {", ".join(CAM_METHODS)}')
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    if target_layer is None:
        backbone = find_backbone(model)
        target_layer = backbone.stages[-1]
        if isinstance(backbone, SPANetV2):
            reshape_transform = nhwc_to_nchw
    model.eval()
    with torch.no_grad():
        probs = model(images).float().softmax(dim=-1)
    if classes is None:
        classes = probs.argmax(dim=-1).tolist()
    classes = [int(c) for c in classes]
    if len(classes) != len(images):
        raise UserInputError(f'{len(classes)} target classes for {len(images)} images')
    cam = _methods()[method](model=model, target_layers=[target_layer], reshape_transform=reshape_transform)
    cam.batch_size = batch_size
    try:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in classes])
    finally:
        cam.activations_and_grads.release()
    chosen = probs[torch.arange(len(classes)), torch.tensor(classes)]
    return CamResult(np.asarray(maps, dtype=np.float32), np.asarray(classes), chosen.numpy())
