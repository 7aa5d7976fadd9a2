"""What the classification, segmentation and detection tasks share; no task imports another."""
import re
from typing import Any, Dict, List, Literal, Optional

import torch
import torch.nn as nn
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from timm.data import resolve_model_data_config
from timm.scheduler.scheduler import Scheduler as TimmScheduler
from typing_extensions import override

from ..errors import UserInputError
from ..models import create_backbone, load_backbone_weights

__all__ = ['BackboneTask', 'weight_decay_groups', 'stage_lr_decay_groups', 'CompileMode', 'MatmulPrecision']

CompileMode = Literal['default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs']
MatmulPrecision = Literal['highest', 'high', 'medium']

_WEIGHT_ARGUMENTS = {'pretrained', 'pretrained_cfg_overlay', 'official_checkpoint'}


def _trainable(model: nn.Module):
    """``(name, parameter, decayed)`` of every trainable parameter: norms, biases, scales and the model's
    ``no_weight_decay()`` names (spectral filters) are not decayed."""
    skip = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
    for name, param in model.named_parameters():
        if param.requires_grad:
            yield name, param, not (param.ndim <= 1 or name.endswith('.bias') or name in skip)


def weight_decay_groups(model: nn.Module) -> List[Dict[str, Any]]:
    """Two parameter groups: decayed matrices/kernels, and undecayed norms, biases, scales and spectral filters.

    The undecayed group carries ``weight_decay=0``; the other inherits the optimizer's own ``weight_decay``.
    """
    decay, no_decay = [], []
    for _, param, decayed in _trainable(model):
        (decay if decayed else no_decay).append(param)
    return [{'params': decay}, {'params': no_decay, 'weight_decay': 0.0}]


def stage_lr_decay_groups(model: nn.Module, backbone_prefix: str, decay: float,
                          num_layers: int) -> List[Dict[str, Any]]:
    """``weight_decay_groups`` split by backbone stage, each group with an ``lr_scale`` (which timm's schedulers
    multiply into the learning rate), as SPANetV2-official's ``stage_wise`` learning-rate decay.

    Stage ids: the stem and the downsampling layers 0, the blocks of stage ``i`` ``i + 1``, every other parameter
    (heads, necks) ``num_layers + 1``; ``lr_scale = decay ** (num_layers + 1 - id)``, so the heads train at the full
    rate. The official configs use ``num_layers`` 7 (S18) and 11 (S36), i.e. the last stage at ``0.9 ** 4`` (S18) or
    ``0.9 ** 8`` (S36) of the heads' rate; ``num_layers = len(stages) - 1`` puts the last stage level with the heads.

    Args:
        model: the task, whose backbone parameters are named ``<backbone_prefix>stem.…`` / ``…stages.<i>.…``.
        backbone_prefix: e.g. ``'backbone.model.'``.
        decay: rate per stage (1.0: every group at the full rate).
        num_layers: the official ``paramwise_cfg.num_layers``.
    """
    stage = re.compile(re.escape(backbone_prefix) + r'(?:stem\.|stages\.(\d+)\.(downsample\.)?)')
    groups: Dict[Any, Dict[str, Any]] = {}
    for name, param, decayed in _trainable(model):
        match = stage.match(name)
        if match is None:
            layer = num_layers + 1
        else:
            layer = 0 if match.group(1) is None or match.group(2) else int(match.group(1)) + 1
        group = groups.setdefault((layer, decayed), {'params': [], 'lr_scale': decay ** (num_layers + 1 - layer)})
        if not decayed:
            group['weight_decay'] = 0.0
        group['params'].append(param)
    return [groups[key] for key in sorted(groups)]


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

    def speed_up(self, compile: Optional[CompileMode] = None, channels_last: bool = False,
                 float32_matmul_precision: Optional[MatmulPrecision] = None, compile_backend: str = 'inductor') -> None:
        """The training speed switches (call from ``configure_model``): ``torch.compile`` of the backbone in place
        (``nn.Module.compile``: its state-dict keys do not change) with ``compile`` as mode and ``compile_backend``
        as backend (modes other than 'default' are inductor's), channels-last memory for
        the backbone (inputs follow in ``to_memory_format``) and ``torch.set_float32_matmul_precision``. bf16 is the
        trainer's ``precision: bf16-mixed``: the spectral filters keep their FFTs in fp32 under autocast."""
        self._memory_format = torch.channels_last if channels_last else None
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if float32_matmul_precision:
            torch.set_float32_matmul_precision(float32_matmul_precision)
        if compile and not getattr(self, '_backbone_compiled', False):
            self.backbone.compile(mode=None if compile == 'default' else compile, backend=compile_backend)
            self._backbone_compiled = True

    def sync_batchnorm(self, enabled: bool) -> None:
        """SyncBatchNorm where it means something, a fit distributed over several GPU processes (call from
        ``configure_model``: before DDP wraps the model and the optimizer is built); elsewhere BatchNorm stays per
        process, where SyncBatchNorm cannot run. One info line says which."""
        trainer = self.trainer
        if trainer.state.fn != 'fit' or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules()):
            return
        device, world = trainer.strategy.root_device.type, trainer.world_size
        if enabled and world > 1 and device == 'cuda':
            if not any(isinstance(m, nn.SyncBatchNorm) for m in self.modules()):
                nn.SyncBatchNorm.convert_sync_batchnorm(self)
                rank_zero_info(f'SyncBatchNorm: batch statistics shared by the {world} GPU processes')
        else:
            why = 'sync_bn is off' if not enabled else f'{world} {device} process(es)'
            rank_zero_info(f'BatchNorm stays per process ({why}; SyncBatchNorm only for a fit distributed on GPUs)')

    def to_memory_format(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in the backbone's memory format (channels-last when ``speed_up`` set it)."""
        memory_format = getattr(self, '_memory_format', None)
        return images if memory_format is None else images.contiguous(memory_format=memory_format)

    @override
    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm's schedulers step per optimizer update (t_in_epochs=False); torch's go through Lightning's default
        if isinstance(scheduler, TimmScheduler):
            scheduler.step_update(num_updates=self.global_step)
        else:
            super().lr_scheduler_step(scheduler, metric)

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
