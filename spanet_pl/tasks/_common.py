"""What the classification and segmentation tasks share; neither task imports the other."""
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from lightning.pytorch import LightningModule
from timm.data import resolve_model_data_config
from typing_extensions import override

from ..errors import UserInputError
from ..models import create_backbone, load_backbone_weights

__all__ = ['BackboneTask', 'weight_decay_groups']

_WEIGHT_ARGUMENTS = {'pretrained', 'pretrained_cfg_overlay', 'official_checkpoint'}


def weight_decay_groups(model: nn.Module) -> List[Dict[str, Any]]:
    """Two parameter groups: decayed matrices/kernels, and undecayed norms, biases, scales and spectral filters.

    The undecayed group carries ``weight_decay=0``; the other inherits the optimizer's own ``weight_decay``.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith('.bias') or name in skip else decay).append(param)
    return [{'params': decay}, {'params': no_decay, 'weight_decay': 0.0}]


class BackboneTask(LightningModule):
    """A LightningModule around a registered backbone: building it (with optional pretrained weights), the data
    config the data modules read, a non-finite-loss guard and one ``_eval_step(batch, stage)`` for val and test."""

    backbone: nn.Module

    @staticmethod
    def build_backbone(name: str, backbone_kwargs: Optional[Dict[str, Any]], pretrained: Optional[str],
                       **task_kwargs) -> nn.Module:
        """``create_backbone(name, **task_kwargs, **backbone_kwargs)``, then ``load_backbone_weights`` from
        ``pretrained``; ``backbone_kwargs`` may not set what the task sets."""
        kwargs = dict(backbone_kwargs or {})
        clash = sorted(set(kwargs) & (set(task_kwargs) | _WEIGHT_ARGUMENTS))
        if clash:
            raise UserInputError(f'backbone_kwargs may not set {", ".join(clash)}: the task sets them '
                                 '(weights go in `pretrained`)')
        backbone = create_backbone(name, **task_kwargs, **kwargs)
        if pretrained:
            load_backbone_weights(backbone, pretrained)
        return backbone

    @property
    def data_config(self) -> Dict[str, Any]:
        """Input size, crop_pct, mean, std and interpolation of the backbone (read by the data modules)."""
        return resolve_model_data_config(self.backbone)

    def check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop the run with the step that diverged, instead of training on NaNs."""
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f'non-finite training loss ({loss.item()}) at step {self.global_step} (epoch {self.current_epoch}, '
                f'batch {batch_idx}): lower the learning rate, enable gradient clipping or check the inputs')

    def _eval_step(self, batch, stage: str):
        raise NotImplementedError

    @override
    def validation_step(self, batch, batch_idx: int):
        return self._eval_step(batch, 'val')

    @override
    def test_step(self, batch, batch_idx: int):
        return self._eval_step(batch, 'test')
