"""Every cell through the CLI's own ``fit`` parser and constructors before the first run starts: no Trainer, no
training, so a GPU or multi-node config can be checked on a laptop."""
import logging
import warnings
from contextlib import contextmanager
from typing import Dict, Iterator, List, Sequence

import yaml

from .spec import Cell, GridError

__all__ = ['validate_cells']


def _short_error(err: BaseException) -> str:
    """One line out of a (possibly nested, multi-line) jsonargparse or constructor error."""
    from ..__main__ import user_facing_error
    known = user_facing_error(err)
    if known is not None:
        return ' '.join(str(known).split())
    noise = ('Does not validate against any of the Union subtypes', 'Subtypes:', 'Errors:', 'Given value type:',
             'Given value:', "Expected a <class 'NoneType'>")
    lines = [line.strip().lstrip('-').strip() for line in str(err).splitlines()]
    kept = [line for line in lines if line and not line.startswith(noise)]
    message = ' '.join(kept) or f'{type(err).__name__}: {err}'
    return message if len(message) <= 500 else message[:497] + '...'


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the CLI's informational logging and warnings while cells are checked."""
    loggers = [logging.getLogger(name) for name in ('lightning', 'lightning.pytorch', 'lightning.fabric',
                                                     'datamodules', 'spanet_pl')]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


_CHECKER = None  # the parser-holding CLI of validate_cells, built once per process (building a parser is slow)


def _checker_class():
    from lightning.pytorch.cli import LightningCLI

    from ..cli import SpanetCLI

    class _CheckCLI(SpanetCLI):
        @staticmethod
        def subcommands() -> Dict[str, set]:
            return {'fit': LightningCLI.subcommands()['fit']}  # the only one runs use; builds 4x faster

        def instantiate_classes(self) -> None:
            parser = self.parser
            instantiate = getattr(parser, 'instantiate', None) or parser.instantiate_classes
            self.config_init = instantiate(self.config)
            self.datamodule = self._get(self.config_init, 'data')
            self.model = self._get(self.config_init, 'model')

        def _run_subcommand(self, subcommand: str) -> None:
            pass

        def check(self, args: List[str]) -> None:
            """Parse and build another config with this instance's parser."""
            self.parse_arguments(self.parser, args)
            self.subcommand = self.config['subcommand']
            self.before_instantiate_classes()
            self.instantiate_classes()

    return _CheckCLI


def validate_cells(cells: Sequence[Cell]) -> None:
    """Parse each cell's config (its first run's: seeds do not change what is valid) with the CLI's ``fit`` parser
    and build its model and data module.

    Catches unknown keys, wrong types, unknown backbone kwargs, λ or kernel lists that do not fit the channels and
    missing data roots. Fills in each cell's trainable parameter count.

    Raises:
        GridError: naming the first bad cell and what is wrong with it.
    """
    global _CHECKER
    for cell in cells:
        args = ['fit', '--config', yaml.safe_dump(cell.runs[0].config, sort_keys=False)]
        try:
            with _quiet():
                if _CHECKER is None:
                    _CHECKER = _checker_class()(args=args, parser_kwargs={'exit_on_error': False})
                else:
                    _CHECKER.check(args)
        except SystemExit as exit_:  # jsonargparse may still exit (e.g. on --help-like input)
            raise GridError(f'cell {cell.name}: the CLI rejected its config (exit {exit_.code})') from None
        except Exception as e:
            raise GridError(f'cell {cell.name}: {_short_error(e)}') from e
        model = _CHECKER.model
        cell.params = sum(p.numel() for p in model.parameters() if p.requires_grad) if model is not None else None
        _CHECKER.model = _CHECKER.datamodule = _CHECKER.config_init = None
