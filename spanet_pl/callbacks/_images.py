"""What the picture callbacks share: finding the TensorBoard writer, and keeping the first validation samples of
rank 0 to draw at the end of the validation."""
from typing import Any, List, Optional

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from typing_extensions import override

__all__ = ['tensorboard_writer', 'ValidationPictureLogger']


def tensorboard_writer(trainer: Trainer):
    """The ``SummaryWriter`` of the trainer's first TensorBoardLogger, or None without one."""
    loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    return loggers[0].experiment if loggers else None


class ValidationPictureLogger(Callback):
    """Keeps ``samples`` from the first ``num_images`` validation images of rank 0 (not the sanity check) and logs
    ``render``'s pictures as ``<tag>_<i>`` at the end of the validation.

    Subclasses implement ``keep(trainer, pl_module, batch, preds)`` (append to ``self.samples``, at most
    ``room()`` more) and ``render(trainer, pl_module)`` ((3, H, W) uint8 pictures). ``validation_step`` must return
    ``{'preds': ...}``.
    """

    def __init__(self, num_images: int = 4, tag: str = 'val/pictures'):
        super().__init__()
        self.num_images = num_images
        self.tag = tag
        self.samples: List[Any] = []

    def room(self) -> int:
        return self.num_images - len(self.samples)

    def keep(self, trainer: Trainer, pl_module: LightningModule, batch: Any, preds: Any) -> None:
        raise NotImplementedError

    def render(self, trainer: Trainer, pl_module: LightningModule) -> List[Tensor]:
        raise NotImplementedError

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.samples = []

    @override
    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if (trainer.sanity_checking or not trainer.is_global_zero or dataloader_idx != 0 or self.room() <= 0
                or not isinstance(outputs, dict) or 'preds' not in outputs):
            return
        self.keep(trainer, pl_module, batch, outputs['preds'])

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer: Optional[Any] = tensorboard_writer(trainer)
        if trainer.sanity_checking or not trainer.is_global_zero or not self.samples or writer is None:
            self.samples = []
            return
        for i, picture in enumerate(self.render(trainer, pl_module)):
            writer.add_image(f'{self.tag}_{i}', picture, global_step=trainer.global_step, dataformats='CHW')
        self.samples = []
