"""The loader plumbing both task data modules share: one DataLoader recipe, four stage hooks."""
from typing import Callable, Optional

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

__all__ = ['SplitDataModule']


class SplitDataModule(LightningDataModule):
    """Serves ``train_dataset`` / ``val_dataset`` (also for test) / ``predict_dataset``, built by ``setup``.

    Subclasses set ``batch_size``, ``eval_batch_size``, ``num_workers``, ``pin_memory``, ``persistent_workers`` and,
    where batches need it, ``collate_fn``. Training batches shuffle and drop the last incomplete batch.
    """

    collate_fn: Optional[Callable] = None
    train_dataset: Optional[Dataset] = None
    val_dataset: Optional[Dataset] = None
    predict_dataset: Optional[Dataset] = None

    def _loader(self, dataset: Dataset, batch_size: int, train: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            # full batches only: Mixup pairs a batch with its reverse, and a batch of one breaks BatchNorm
            drop_last=train,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory and torch.accelerator.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup('fit')
        return self._loader(self.train_dataset, self.batch_size, train=True)

    @override
    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup('validate')
        return self._loader(self.val_dataset, self.eval_batch_size)

    @override
    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    @override
    def predict_dataloader(self) -> DataLoader:
        if self.predict_dataset is None:
            self.setup('predict')
        return self._loader(self.predict_dataset, self.eval_batch_size)
