"""Run checkpoints as ``python -m spanet_pl fit`` leaves them (task + data hyper-parameters, metrics.json,
config.yaml), written without training: for the export and hub tests."""
import json
from pathlib import Path

import torch

from spanet_pl.tasks import ClassificationModule, SegmentationModule

DATA_HPARAMS = {'_class_path': 'datamodules.DigitsDataModule', 'img_size': 32, 'crop_pct': 1.0,
                'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5], 'interpolation': None}


def write_run(folder: Path, segmentation: bool = False, **hparams) -> Path:
    """``folder/checkpoints/last.ckpt`` of a freshly initialised task (with metrics.json and config.yaml)."""
    torch.manual_seed(0)
    if segmentation:
        task = SegmentationModule(**{'backbone': 'spanet_nano', 'num_classes': 4, 'head': 'fpn',
                                     'head_kwargs': {'fpn_channels': 16, 'head_channels': 8}, **hparams})
    else:
        task = ClassificationModule(**{'backbone': 'spanetv2_nano_pure', 'num_classes': 3, **hparams})
    kind = type(task).__name__
    checkpoint = {'state_dict': task.state_dict(),
                  'hyper_parameters': {'_class_path': f'spanet_pl.tasks.{kind}', **dict(task.hparams)},
                  'datamodule_hyper_parameters': DATA_HPARAMS}
    path = folder / 'checkpoints' / 'last.ckpt'
    path.parent.mkdir(parents=True)
    torch.save(checkpoint, path)
    (folder / 'metrics.json').write_text(json.dumps(
        {'status': 'finished', 'monitor': 'val/acc1', 'best': {'value': 0.875, 'epoch': 3, 'step': 40}}))
    (folder / 'config.yaml').write_text(f'model:\n  class_path: spanet_pl.tasks.{kind}\n  init_args:\n'
                                        f'    backbone: {task.hparams.backbone}\n')
    return path
