"""Checkpoint callbacks every run gets."""
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

__all__ = ['LastCheckpoint']


class LastCheckpoint(ModelCheckpoint):
    """Keeps ``last.ckpt`` fresh: every ``every_n_train_steps`` optimizer steps and at the end of every epoch.

    Lightning's own ``save_last`` follows the best-model schedule (epoch ends only); a run killed mid-epoch would
    lose the whole epoch. ``--ckpt_path last`` resumes from this file.

    Args:
        every_n_train_steps: optimizer steps between saves (0: epoch ends only).
        dirpath: where to write (default: the logger's ``checkpoints`` folder).
    """

    def __init__(self, every_n_train_steps: int = 500, dirpath=None):
        super().__init__(dirpath=dirpath, monitor=None, save_top_k=0, save_last=True,
                         every_n_train_steps=every_n_train_steps or None)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning saves the last checkpoint here even in a fast_dev_run, which has no logger folder (so into
        # ./checkpoints of the working directory): a smoke test must leave nothing behind
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)
