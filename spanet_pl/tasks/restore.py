"""A run's task rebuilt from its checkpoint (classification or segmentation), for export and the hub."""
import inspect
import os
from dataclasses import dataclass
from typing import Any, Dict, Union

import torch.nn as nn
from torch import Tensor

from ..errors import UserInputError
from ..models.official import read_checkpoint
from .classification import ClassificationModule
from .segmentation import SegmentationModule, segment

__all__ = ['RestoredRun', 'restore_run', 'SegmentationNet']


class SegmentationNet(nn.Module):
    """A segmentation run's network alone: backbone pyramid -> decode head -> logits at the input's resolution
    (``SegmentationModule.forward`` without the task's metrics and loss)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        return segment(self.backbone, self.head, images)


@dataclass
class RestoredRun:
    """What a run's checkpoint holds.

    Args:
        kind: 'classification' or 'segmentation'.
        task: the LightningModule, weights loaded, in eval mode.
        network: what to deploy: the classifier (a timm model) or a ``SegmentationNet``.
        hparams: the task's hyper-parameters as saved.
        data_hparams: the data module's hyper-parameters (img_size, mean, std, ...), where the run saved them.
    """
    kind: str
    task: nn.Module
    network: nn.Module
    hparams: Dict[str, Any]
    data_hparams: Dict[str, Any]


def restore_run(path: Union[str, os.PathLike]) -> RestoredRun:
    """Rebuild the task of a ``python -m spanet_pl fit`` checkpoint and load its weights (strictly).

    The task's ``pretrained`` argument is dropped: the checkpoint already holds the trained weights.
    """
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get('hyper_parameters') if isinstance(checkpoint, dict) else None
    if not hparams or 'backbone' not in hparams or 'state_dict' not in checkpoint:
        raise UserInputError(f'{os.fspath(path)!r} is not a checkpoint of a spanet_pl classification or segmentation '
                             f'run (no hyper_parameters.backbone / state_dict)')
    class_path = str(hparams.get('_class_path', ''))
    if 'Detection' in class_path:
        raise UserInputError(f'{os.fspath(path)!r} is a detection run; export and the hub take classification or '
                             f'segmentation runs')
    segmentation = 'Segmentation' in class_path or 'head' in hparams
    cls = SegmentationModule if segmentation else ClassificationModule
    accepted = inspect.signature(cls).parameters
    task = cls(**{k: v for k, v in hparams.items() if k in accepted and k != 'pretrained'})
    task.load_state_dict(checkpoint['state_dict'], strict=True)
    task.eval()
    network = SegmentationNet(task.backbone, task.head) if segmentation else task.backbone
    return RestoredRun('segmentation' if segmentation else 'classification', task, network.eval(), dict(hparams),
                       dict(checkpoint.get('datamodule_hyper_parameters') or {}))
