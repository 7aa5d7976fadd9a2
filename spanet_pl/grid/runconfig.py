"""What makes a cell's config one run's: its seed, its folder for logs, checkpoints and ``metrics.json``, the
user's logger pointed at it; and the config hash that tells a finished run of this exact configuration."""
import copy
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

if TYPE_CHECKING:
    from .spec import Run

__all__ = ['sha', 'run_config', 'run_logger']


def sha(config: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _logger_args(kind: str, run: 'Run', grid_dir: Path) -> Optional[Dict[str, Any]]:
    """Where a logger of class ``kind`` writes and under which name, for ``run`` (None: a logger the grid leaves as
    configured)."""
    if kind in ('TensorBoardLogger', 'CSVLogger'):  # <grid>/<cell>/seed=<seed>/, the run's folder
        return {'save_dir': str(grid_dir), 'name': run.cell, 'version': f'seed={run.seed}'}
    if kind == 'WandbLogger':  # a stable id: a resumed run continues the same W&B run
        return {'save_dir': str(run.dir), 'name': run.name, 'group': grid_dir.name,
                'version': sha({'grid': str(grid_dir.resolve()), 'run': run.name})}
    if kind == 'MLFlowLogger':
        return {'experiment_name': grid_dir.name, 'run_name': run.name}
    return None


def run_logger(logger: Any, run: 'Run', grid_dir: Path) -> Any:
    """The user's logger(s) pointed at the run (see ``_logger_args``); no logger configured: TensorBoard, as the CLI."""
    if logger is None or logger is True:
        logger = {'class_path': 'lightning.pytorch.loggers.TensorBoardLogger',
                  'init_args': {'default_hp_metric': False}}
    if logger is False:
        return False
    loggers = logger if isinstance(logger, list) else [logger]
    out = []
    for item in loggers:
        item = copy.deepcopy(item)
        if isinstance(item, dict) and 'class_path' in item:
            args = _logger_args(str(item['class_path']).rsplit('.', 1)[-1], run, grid_dir)
            if args is not None:
                item['init_args'] = {**(item.get('init_args') or {}), **args}
        out.append(item)
    return out if isinstance(logger, list) else out[0]


def run_config(base: Dict[str, Any], run: 'Run', grid_dir: Path) -> Dict[str, Any]:
    """The cell's config plus what makes it this run: its seed, folders for checkpoints, metrics.json and logs."""
    config = copy.deepcopy(base)
    config['seed_everything'] = run.seed
    trainer = config.setdefault('trainer', {})
    trainer.setdefault('enable_progress_bar', False)  # runs are unattended: no progress bar in run.log
    trainer['default_root_dir'] = str(run.dir)
    trainer['logger'] = run_logger(trainer.get('logger'), run, grid_dir)
    for section, key in (('checkpoint', 'dirpath'), ('last_checkpoint', 'dirpath'), ('metrics_json', 'dirpath')):
        config.setdefault(section, {})
        config[section][key] = str(run.dir / 'checkpoints' if section != 'metrics_json' else run.dir)
    return config
