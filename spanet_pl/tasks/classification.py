"""Image classification with any registered SPANet-family backbone."""
import logging
import math
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from timm.loss import SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from ._common import BackboneTask, CompileMode, MatmulPrecision, weight_decay_groups

__all__ = ['ClassificationModule']

_logger = logging.getLogger(__name__)


class ClassificationModule(BackboneTask):
    """Trains and evaluates a SPANet-family classifier.

    Args:
        backbone: registered variant name (``spanet_pl.VARIANTS``).
        num_classes: classifier outputs (the CLI links it from the data module).
        backbone_kwargs: constructor arguments of the backbone: drop_path_rate, ablation switches, ...
        pretrained: weights to start from (``spanet_pl.models.load_backbone_weights``): an official checkpoint, one of
            our Lightning checkpoints or a plain state dict; a classifier of another size is left freshly initialised.
        optimizer: optimizer factory (AdamW, timm's Lamb, ...); its ``lr`` is the rate for ``base_batch_size``.
        base_batch_size: batch size the configured lr belongs to; the lr is scaled linearly to the effective batch
            (devices x per-device batch x gradient accumulation). None: use the lr as given.
        warmup_epochs: linear warmup length from ``warmup_lr`` (fractions allowed), stepped per optimizer update.
        warmup_lr: learning rate at step 0.
        min_lr: floor of the cosine decay.
        ema_decay: keep an exponential moving average of the weights with this decay, evaluated alongside.
        top_k: classes per image written by ``predict``.
        compile: ``torch.compile`` the backbone with this mode ('default', 'reduce-overhead', 'max-autotune', ...);
            None runs eagerly. The first steps (and each new input size) pay the compilation.
        compile_backend: ``torch.compile`` backend ('inductor'; 'aot_eager' traces without generating code).
        channels_last: backbone and images in channels-last memory (faster convolutions on most hardware).
        float32_matmul_precision: ``torch.set_float32_matmul_precision`` ('high' / 'medium' allow TF32 / bf16
            matmuls on GPUs that have them). Mixed precision is the trainer's ``precision: bf16-mixed``.
    """

    monitor = 'val/acc1'

    def __init__(
            self,
            backbone: str = 'spanet_nano',
            num_classes: int = 1000,
            backbone_kwargs: Optional[Dict[str, Any]] = None,
            pretrained: Optional[str] = None,
            optimizer: OptimizerCallable = torch.optim.AdamW,
            base_batch_size: Optional[int] = None,
            warmup_epochs: float = 5.0,
            warmup_lr: float = 1e-6,
            min_lr: float = 1e-5,
            ema_decay: Optional[float] = None,
            top_k: int = 5,
            compile: Optional[CompileMode] = None,
            compile_backend: str = 'inductor',
            channels_last: bool = False,
            float32_matmul_precision: Optional[MatmulPrecision] = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=['optimizer'])
        self.backbone = self.build_backbone(backbone, backbone_kwargs, pretrained, num_classes=num_classes)
        self.optimizer_factory = optimizer
        self.ema = ModelEmaV3(self.backbone, decay=ema_decay) if ema_decay else None
        self.soft_loss = SoftTargetCrossEntropy()
        accuracy = {'acc1': MulticlassAccuracy(num_classes, top_k=1, average='micro')}
        if num_classes >= 5:
            accuracy['acc5'] = MulticlassAccuracy(num_classes, top_k=5, average='micro')
        metrics = MetricCollection(accuracy)
        self.train_metrics = metrics.clone(prefix='train/')
        self.val_metrics = metrics.clone(prefix='val/')
        self.test_metrics = metrics.clone(prefix='test/')
        self.val_ema_metrics = metrics.clone(prefix='val/ema_') if self.ema else None
        self.test_ema_metrics = metrics.clone(prefix='test/ema_') if self.ema else None

    @override
    def configure_model(self) -> None:
        self.speed_up(self.hparams.compile, self.hparams.channels_last, self.hparams.float32_matmul_precision,
                      self.hparams.compile_backend)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.to_memory_format(x))

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 2:  # mixup / cutmix soft targets
            return self.soft_loss(logits, target)
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    @property
    def label_smoothing(self) -> float:
        """Smoothing of hard targets: a data-module setting (``data.label_smoothing``, which also shapes mixup's
        soft targets), so it is set in one place."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        return getattr(datamodule, 'label_smoothing', 0.0)

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, target = batch
        logits = self(images)
        loss = self._loss(logits, target)
        self.check_finite(loss, batch_idx)
        self.log('train/loss', loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        if target.ndim == 1:
            self.train_metrics.update(logits.detach(), target)
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    @override
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.backbone, step=self.global_step)

    def _eval_step(self, batch, stage: str):
        images, target = batch
        logits = self(images)
        self.log(f'{stage}/loss', F.cross_entropy(logits, target), sync_dist=True)
        metrics = self.val_metrics if stage == 'val' else self.test_metrics
        metrics.update(logits, target)
        self.log_dict(metrics, prog_bar=stage == 'val')
        if self.ema is not None:
            ema_metrics = self.val_ema_metrics if stage == 'val' else self.test_ema_metrics
            ema_metrics.update(self.ema.module(images), target)
            self.log_dict(ema_metrics)

    @override
    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Dict[str, torch.Tensor]:
        images, indices = batch
        model = self.ema.module if self.ema is not None else self.backbone
        probs = model(images).softmax(dim=-1)
        top = probs.topk(min(self.hparams.top_k, probs.shape[-1]), dim=-1)
        return {'indices': indices, 'classes': top.indices, 'probs': top.values}

    def effective_batch_size(self) -> int:
        datamodule = self.trainer.datamodule
        per_device = getattr(datamodule, 'batch_size', None)
        if per_device is None:
            raise ValueError('base_batch_size needs a data module with a batch_size attribute to scale the lr')
        return per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches

    @override
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(weight_decay_groups(self.backbone))
        scale = 1.0
        if self.hparams.base_batch_size:
            scale = self.effective_batch_size() / self.hparams.base_batch_size
        for group in optimizer.param_groups:
            group['lr'] *= scale
        peak = optimizer.param_groups[0]['lr']
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        warmup = min(int(math.ceil(self.hparams.warmup_epochs * total / epochs)), total - 1)
        _logger.info('optimizer %s: peak lr %.3g (x%.3g for the effective batch), %d warmup of %d steps',
                     type(optimizer).__name__, peak, scale, warmup, total)
        scheduler = CosineLRScheduler(
            optimizer, t_initial=total, lr_min=self.hparams.min_lr, warmup_t=warmup,
            warmup_lr_init=self.hparams.warmup_lr, t_in_epochs=False)
        return {'optimizer': optimizer, 'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'}}
