"""Writes ``predict`` results to a CSV file: one row per image with its top-k classes and probabilities."""
import csv
import os
from typing import Any, Optional, Sequence

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override

__all__ = ['TopKPredictionWriter']


class TopKPredictionWriter(BasePredictionWriter):
    """Streams predictions to ``output`` (default ``<log_dir>/predictions.csv``; ``.rankN`` added under DDP).

    Expects ``predict_step`` to return a dict with ``indices`` (into ``datamodule.predict_paths``), ``classes`` and
    ``probs`` (both (B, k)); class indices are written as the datamodule's class names when it has ``classes``.
    """

    def __init__(self, output: Optional[str] = None):
        super().__init__(write_interval='batch')
        self.output = output
        self._file = None
        self._writer = None

    def _path(self, trainer: Trainer) -> str:
        path = self.output or os.path.join(trainer.log_dir or '.', 'predictions.csv')
        if trainer.world_size > 1:
            path = f'{path}.rank{trainer.global_rank}'
        return path

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = self._path(trainer)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(path, 'w', newline='')
        self._writer = csv.writer(self._file)
        self.path = path

    @override
    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        datamodule = trainer.datamodule
        paths = getattr(datamodule, 'predict_paths', None)
        names = getattr(datamodule, 'classes', None)
        classes, probs = prediction['classes'].tolist(), prediction['probs'].tolist()
        if self._file.tell() == 0:
            k = len(classes[0]) if classes else 0
            header = ['image'] + [f'{kind}{i + 1}' for i in range(k) for kind in ('class', 'prob')]
            self._writer.writerow(header)
        for index, top_classes, top_probs in zip(prediction['indices'].tolist(), classes, probs):
            row = [paths[index] if paths is not None else index]
            for c, p in zip(top_classes, top_probs):
                row += [names[c] if names is not None else c, f'{p:.6f}']
            self._writer.writerow(row)

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
