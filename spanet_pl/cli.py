"""The project's LightningCLI: ``python -m spanet_pl {fit,validate,test,predict} --config FILE.yaml``.

Every run gets a TensorBoard logger (``logs/<name>/version_N``), a best checkpoint on the task's metric, a
``last.ckpt`` refreshed every few hundred steps, a learning-rate monitor, a progress bar, a seed and, when a fit
ends, a ``metrics.json`` in its log folder.
``--ckpt_path last`` resumes the newest run of the same logger name from its ``last.ckpt``, in the same log folder.
With ``--ckpt_path``, Lightning parses the checkpoint's hyper-parameters over the config; ``--model...`` flags typed on
the command line are applied after them (``validate --ckpt_path X --model.init_args.test_flip true`` flips).
"""
import logging
import os
import re
import sys
from pathlib import Path
from typing import List, Optional

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from .callbacks import LastCheckpoint, MetricsJSON, PredictionWriter

__all__ = ['SpanetCLI', 'find_last_checkpoint', 'model_flags']

_logger = logging.getLogger(__name__)


def find_last_checkpoint(save_dir: str, name: str, version=None) -> Optional[Path]:
    """``last.ckpt`` of the given (or newest) ``<save_dir>/<name>/version_*`` run, or None."""
    root = Path(save_dir) / (name or '')
    if version is not None:
        folder = root / (version if isinstance(version, str) else f'version_{version}')
        candidates = [folder / 'checkpoints' / 'last.ckpt']
    else:
        candidates = list(root.glob('version_*/checkpoints/last.ckpt'))
    candidates = [path for path in candidates if path.is_file()]
    return max(candidates, key=lambda path: path.stat().st_mtime) if candidates else None


def model_flags(args) -> List[str]:
    """The ``--model`` / ``--model.<key>`` flags of a command line with their values (``--flag value`` or
    ``--flag=value``), in order."""
    flags, tokens = [], list(args or [])
    for i, token in enumerate(tokens):
        name = token.split('=', 1)[0]
        if name == '--model' or name.startswith('--model.'):
            flags += [token] if '=' in token or i + 1 == len(tokens) else [token, tokens[i + 1]]
    return flags


class SpanetCLI(LightningCLI):
    """LightningCLI with this project's defaults and argument links (data's num_classes -> model)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('trainer_defaults', {
            'logger': {
                'class_path': 'lightning.pytorch.loggers.TensorBoardLogger',
                'init_args': {'save_dir': 'logs', 'name': 'spanet_pl', 'default_hp_metric': False},
            },
        })
        super().__init__(
            LightningModule, LightningDataModule, *args,
            subclass_mode_model=True, subclass_mode_data=True,
            seed_everything_default=kwargs.pop('seed_everything_default', 42),
            # a resumed run writes its config into its own folder again
            save_config_kwargs={'overwrite': True},
            auto_configure_optimizers=False,
            **kwargs,
        )

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments('data.num_classes', 'model.init_args.num_classes', apply_on='instantiate')
        parser.add_lightning_class_args(ModelCheckpoint, 'checkpoint')
        parser.set_defaults({
            'checkpoint.monitor': None,  # None: the task's own metric (the model's `monitor`)
            'checkpoint.mode': 'max',
            'checkpoint.save_top_k': 1,
            'checkpoint.filename': 'best-epoch{epoch:03d}-step{step}',
            'checkpoint.auto_insert_metric_name': False,
        })
        parser.add_lightning_class_args(LastCheckpoint, 'last_checkpoint')
        parser.add_lightning_class_args(LearningRateMonitor, 'lr_monitor')
        parser.set_defaults({'lr_monitor.logging_interval': 'step'})
        parser.add_lightning_class_args(PredictionWriter, 'prediction_writer')
        parser.add_lightning_class_args(MetricsJSON, 'metrics_json')  # metrics.json at the end of every fit

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        typed = sys.argv[1:] if args is None else args
        self._command_line = list(typed) if isinstance(typed, (list, tuple)) else []  # a dict config has no flags
        super().parse_arguments(parser, args)

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if self.subcommand == 'fit' and config.get('ckpt_path') == 'last':
            self._resolve_last(config)
        elif self.subcommand and config.get('ckpt_path') and Path(config.ckpt_path).is_file():
            self._typed_model_flags_win()

    def _typed_model_flags_win(self) -> None:
        """Lightning has parsed the checkpoint's hyper-parameters over the whole model config, typed flags included
        (an evaluation setting such as ``--model.init_args.test_scales`` would be silently dropped): parse the
        typed ``--model`` flags again on top."""
        flags = model_flags(getattr(self, '_command_line', []))
        if flags:
            parser = self.parser._subcommands_action._name_parser_map[self.subcommand]
            self.config[self.subcommand] = parser.parse_args(flags, namespace=self.config[self.subcommand].clone())

    def _resolve_last(self, config) -> None:
        logger = config.trainer.logger
        init = logger.get('init_args', {}) if hasattr(logger, 'get') else {}
        save_dir, name = init.get('save_dir', 'logs'), init.get('name', 'spanet_pl')
        dirpath = config.last_checkpoint.get('dirpath')
        path = Path(dirpath) / 'last.ckpt' if dirpath else find_last_checkpoint(save_dir, name, init.get('version'))
        if path is None or not path.is_file():
            _logger.warning('--ckpt_path last: no last.ckpt under %s, starting from scratch', dirpath or
                            os.path.join(save_dir, name))
            config.ckpt_path = None
            return
        config.ckpt_path = str(path)
        match = re.fullmatch(r'version_(\d+)', path.parent.parent.name)
        if not dirpath and hasattr(logger, 'get') and 'init_args' in logger:
            logger.init_args.version = int(match.group(1)) if match else path.parent.parent.name
        _logger.warning('resuming from %s', path)

    def after_fit(self) -> None:
        for callback in self.trainer.checkpoint_callbacks:
            if type(callback) is ModelCheckpoint and callback.best_model_path and callback.best_model_score is not None:
                rank_zero_info(f'best {callback.monitor} = {callback.best_model_score.item():.4f} '
                               f'({callback.best_model_path})')
        if self.trainer.log_dir is not None:  # None under fast_dev_run, whose logger writes nothing
            rank_zero_info(f'logs: {self.trainer.log_dir}   (tensorboard --logdir {self.trainer.log_dir})')

    @override
    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        monitor = getattr(self.model, 'monitor', None)
        for callback in self.trainer.callbacks:
            if type(callback) is ModelCheckpoint and callback.monitor is None:
                callback.monitor = monitor
