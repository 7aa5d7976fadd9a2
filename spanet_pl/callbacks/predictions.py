"""Writes ``predict`` results: top-k classes per image to a CSV file, predicted masks as palette PNGs, or detections
as JSON lines."""
import csv
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from typing_extensions import override

from .detection import detection_records

__all__ = ['PredictionWriter']


class PredictionWriter(BasePredictionWriter):
    """Streams what ``predict_step`` returns to disk, batch by batch.

    * classification (``indices``, ``classes``, ``probs``): one CSV row per image with its top-k class names and
      probabilities, in ``output`` (default ``<log_dir>/predictions.csv``);
    * segmentation (``indices``, ``masks``, a tensor or a list of masks): one palette PNG per image, named after the
      image, in ``output``
      (default ``<log_dir>/predictions/``); pixel values are class indices (255: ignore);
    * detection (``indices``, ``detections``): one JSON line per detection (image, category, score, COCO ``bbox``
      and, with masks, an RLE ``segmentation``) in ``output`` (default ``<log_dir>/detections.jsonl``).

    Indices point into the data module's ``predict_paths``. Under DDP each rank writes its own CSV / JSON lines
    (``.rankN``).
    """

    def __init__(self, output: Optional[str] = None):
        super().__init__(write_interval='batch')
        self.output = output
        self._file = None
        self._writer = None

    @override
    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        datamodule = trainer.datamodule
        paths = getattr(datamodule, 'predict_paths', None)
        indices = prediction['indices'].tolist()
        names = [paths[i] if paths is not None else str(i) for i in indices]
        if 'masks' in prediction:
            self._write_masks(trainer, names, prediction['masks'], getattr(datamodule, 'palette', None))
        elif 'detections' in prediction:
            self._write_lines(trainer, detection_records(names, prediction['detections'],
                                                         getattr(datamodule, 'classes', None)))
        else:
            self._write_topk(trainer, names, prediction, getattr(datamodule, 'classes', None))

    def _write_topk(self, trainer: Trainer, names, prediction, class_names) -> None:
        classes, probs = prediction['classes'].tolist(), prediction['probs'].tolist()
        if self._file is None:
            self._open(trainer, 'predictions.csv', newline='')
            self._writer = csv.writer(self._file)
            self._writer.writerow(['image'] + [f'{kind}{i + 1}' for i in range(len(classes[0]))
                                               for kind in ('class', 'prob')])
        for name, top_classes, top_probs in zip(names, classes, probs):
            row = [name]
            for c, p in zip(top_classes, top_probs):
                row += [class_names[c] if class_names is not None else c, f'{p:.6f}']
            self._writer.writerow(row)

    def _open(self, trainer: Trainer, default_name: str, **kwargs) -> None:
        path = self.output or os.path.join(trainer.log_dir or '.', default_name)
        if trainer.world_size > 1:
            path = f'{path}.rank{trainer.global_rank}'
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(path, 'w', **kwargs)

    def _write_lines(self, trainer: Trainer, records) -> None:
        if self._file is None:
            self._open(trainer, 'detections.jsonl')
        for record in records:
            self._file.write(json.dumps(record) + '\n')

    def _write_masks(self, trainer: Trainer, names, masks, palette) -> None:
        folder = Path(self.output or os.path.join(trainer.log_dir or '.', 'predictions'))
        folder.mkdir(parents=True, exist_ok=True)
        flat_palette = None
        if palette is not None:
            flat_palette = [int(v) for colour in palette for v in colour]
        for name, mask in zip(names, masks):  # a (B, H, W) tensor or a list of (H, W) masks of different sizes
            mask = mask.cpu().numpy().astype(np.uint8)
            image = Image.frombytes('P', (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
            if flat_palette is not None:
                image.putpalette(flat_palette)
            image.save(folder / f'{Path(name).stem}.png')

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
