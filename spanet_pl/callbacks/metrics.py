"""``metrics.json``: what every fit ends with, for scripts and ablation grids to read instead of checkpoints."""
import json
import math
import os
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

from ..flops import count_flops

__all__ = ['MetricsJSON', 'write_json_atomic', 'METRICS_FILE']

METRICS_FILE = 'metrics.json'


def write_json_atomic(path, payload: Dict[str, Any]) -> None:
    """Write ``payload`` as JSON through a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(payload, indent=1, default=str) + '\n')
    os.replace(tmp, path)


class MetricsJSON(Callback):
    """Writes ``metrics.json`` at the end of every fit, and when a fit stops on an error or an interrupt.

    The file holds the monitored metric (the best-checkpoint callback's, e.g. ``val/acc1``) at its best and at the
    last validation, each with epoch and step; the training wall time (summed over resumed attempts: it travels in
    the checkpoint); trainable and total parameters; MACs of one eval forward at the training input size (batch 1,
    ``FlopCounterMode`` FLOPs / 2 plus the analytic FFT FLOPs, as ``python -m spanet_pl.benchmark`` counts them);
    and ``status``: ``finished``, ``interrupted`` (Ctrl-C, SIGTERM, a requeue) or ``failed`` (with the error).

    Args:
        dirpath: folder of ``metrics.json`` (default: the run's log folder, ``trainer.log_dir``; none under
            ``fast_dev_run``, whose logger writes nothing).
        macs: count MACs when the fit finishes (one extra forward on rank 0).
    """

    def __init__(self, dirpath: Optional[str] = None, macs: bool = True):
        self.dirpath = dirpath
        self.macs = macs
        self.best: Optional[Dict[str, Any]] = None
        self.last: Optional[Dict[str, Any]] = None
        self._wall_before = 0.0
        self._started: Optional[float] = None
        self._input_shape = None
        self._monitor: Optional[str] = None
        self._mode = 'max'
        self._folder: Optional[str] = None

    # ---- state that survives a resume ----------------------------------------------------------------------------
    @override
    def state_dict(self) -> Dict[str, Any]:
        return {'best': self.best, 'last': self.last, 'wall_s': self._wall()}

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.best, self.last = state_dict.get('best'), state_dict.get('last')
        self._wall_before = float(state_dict.get('wall_s') or 0.0)

    def _wall(self) -> float:
        return self._wall_before + (time.monotonic() - self._started if self._started is not None else 0.0)

    # ---- hooks ---------------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != 'fit':
            return
        self._started = time.monotonic()
        # trainer.log_dir broadcasts from rank 0: ask for it here, where every rank does, never on rank 0 alone
        self._folder = self.dirpath or trainer.log_dir or trainer.default_root_dir
        if trainer.fast_dev_run and not self.dirpath:  # a smoke run logs nothing: no metrics.json in the cwd either
            self._folder = None
        checkpoint = next((cb for cb in trainer.checkpoint_callbacks
                           if isinstance(cb, ModelCheckpoint) and cb.monitor), None)
        self._monitor = checkpoint.monitor if checkpoint else getattr(pl_module, 'monitor', None)
        self._mode = checkpoint.mode if checkpoint else 'max'

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._input_shape is None:
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            if isinstance(images, torch.Tensor) and images.ndim == 4:
                self._input_shape = tuple(images.shape[1:])

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self._monitor:
            return
        value = trainer.callback_metrics.get(self._monitor)
        if value is None:
            return
        value = float(value)
        self.last = {'value': value, 'epoch': trainer.current_epoch, 'step': trainer.global_step}
        if not math.isfinite(value):
            return
        best = None if self.best is None else self.best['value']
        if best is None or (value > best if self._mode == 'max' else value < best):
            self.best = dict(self.last)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module, 'finished')

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        interrupted = isinstance(exception, (KeyboardInterrupt, SystemExit))
        error = None if interrupted else ''.join(traceback.format_exception_only(type(exception), exception)).strip()
        self._write(trainer, pl_module, 'interrupted' if interrupted else 'failed', error)

    # ---- the file ------------------------------------------------------------------------------------------------
    def _count_macs(self, pl_module: LightningModule) -> Dict[str, Optional[int]]:
        if not self.macs or self._input_shape is None:
            return {'macs': None, 'fft_flops': None}
        was_training = pl_module.training
        try:
            x = torch.zeros(1, *self._input_shape, device=pl_module.device)
            flops = count_flops(pl_module, x)
            return {'macs': flops['dense'] // 2, 'fft_flops': flops['fft']}
        except Exception:  # a model the counter cannot trace still gets its metrics written
            return {'macs': None, 'fft_flops': None}
        finally:
            pl_module.train(was_training)

    def _write(self, trainer: Trainer, pl_module: LightningModule, status: str, error: Optional[str] = None) -> None:
        if not trainer.is_global_zero or self._folder is None:
            return
        payload = {
            'status': status, 'error': error, 'monitor': self._monitor, 'mode': self._mode,
            'best': self.best, 'last': self.last, 'epoch': trainer.current_epoch, 'step': trainer.global_step,
            'wall_s': round(self._wall(), 2),
            'params': sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
            'params_total': sum(p.numel() for p in pl_module.parameters()),
            'input_shape': list(self._input_shape) if self._input_shape else None,
            **(self._count_macs(pl_module) if status == 'finished' else {'macs': None, 'fft_flops': None}),
            'written': time.strftime('%Y-%m-%d %H:%M:%S'),
        }
        write_json_atomic(Path(self._folder) / METRICS_FILE, payload)
