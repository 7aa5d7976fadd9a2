"""Ablation grids: ``python -m spanet_pl.grid experiments/NAME.yaml [--dry-run] [--max-parallel N] [--set KEY=VALUE]``.

A grid file names a base LightningCLI config, overrides shared by every cell, a mapping from dotted config keys to
value lists (their Cartesian product) and optional named variants::

    name: v2_kernel_sets                  # logs/<name>/ (default: the file's stem)
    base: cli_configs/quickstart.yaml     # or a list merged in order; looked up in the current folder, next to
                                          # the grid file, then in the repository root
    overrides:                            # applied to every cell
      model.init_args.backbone: spanetv2_nano_pure
    grid:                                 # Cartesian product
      model.init_args.backbone_kwargs.kernel_sizes: [[3, 5, 7, 9], [7, 7, 7, 7]]
    variants:                             # named cells added to the product (the only cells without ``grid``)
      no_filter: {model.init_args.backbone_kwargs.spectral_filter: false}

A dotted key sets the value at that path of the base YAML, creating the dicts on the way (so keys inside a dict
argument such as ``backbone_kwargs`` work); the value replaces what was there. Every cell is an ordinary
``python -m spanet_pl fit --config logs/<grid>/<cell>/cell.yaml`` run, logged to ``logs/<grid>/<cell>/`` (the CLI
saves the resolved ``config.yaml`` there). Every cell is parsed and its model and data module are built before the
first one trains, so an unknown key or a bad value fails the whole grid up front. After each cell
``logs/<grid>/summary.csv`` and ``summary.md`` are rewritten, and a finished cell writes TensorBoard hparams, so
``tensorboard --logdir logs/<grid>`` compares the cells side by side. Re-running skips finished cells, resumes the
others from their ``last.ckpt`` and records a failing cell (with the tail of its log) while the grid goes on.
"""
import argparse
import copy
import csv
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from .errors import MissingPathError, UserInputError

__all__ = ['Grid', 'Cell', 'GridError', 'load_grid', 'validate_cells', 'run_grid', 'write_summary', 'main']

_logger = logging.getLogger(__name__)

GRID_KEYS = ('name', 'description', 'base', 'overrides', 'grid', 'variants')
STATUS_FILE = 'grid_status.json'
CELL_CONFIG = 'cell.yaml'
RUN_LOG = 'run.log'
TAIL_LINES = 25
# Characters kept in cell (folder) names; anything else becomes '_'.
_UNSAFE = re.compile(r'[^A-Za-z0-9._=,+-]+')
_MAX_NAME = 120


class GridError(UserInputError):
    """A bad grid file, override or cell configuration: reported as one line, nothing trained."""


# ---- grid files → cells -----------------------------------------------------------------------------------------

@dataclass
class Cell:
    """One run of the grid.

    Args:
        name: folder name under ``logs/<grid>/`` (readable, filesystem-safe, unique within the grid).
        overrides: the cell's own dotted-key overrides (grid values and variant), shown in the summary.
        config: the full LightningCLI config of the run (base + shared overrides + own overrides + logger).
        dir: ``logs/<grid>/<name>``.
    """
    name: str
    overrides: Dict[str, Any]
    config: Dict[str, Any]
    dir: Path
    status: str = 'pending'
    params: Optional[int] = None
    best: Optional[float] = None
    monitor: Optional[str] = None
    wall_s: float = 0.0
    returncode: Optional[int] = None
    tail: str = ''
    config_sha: str = ''
    pid: Optional[int] = None
    previous: Dict[str, Any] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.dir / CELL_CONFIG

    @property
    def last_checkpoint(self) -> Path:
        return self.dir / 'checkpoints' / 'last.ckpt'

    @property
    def log_path(self) -> Path:
        return self.dir / RUN_LOG

    def resume_path(self) -> Optional[Path]:
        """``last.ckpt`` to resume from: only for an unfinished run of this very configuration."""
        if self.previous.get('config_sha') == self.config_sha and self.last_checkpoint.is_file():
            return self.last_checkpoint
        return None

    def command(self, python: str = 'python') -> List[str]:
        cmd = [python, '-m', 'spanet_pl', 'fit', '--config', str(self.config_path)]
        resume = self.resume_path()
        return cmd + ['--ckpt_path', str(resume)] if resume else cmd


@dataclass
class Grid:
    """A loaded grid file: where it logs, what it runs."""
    name: str
    path: Path
    bases: List[Path]
    overrides: Dict[str, Any]
    cells: List[Cell]
    log_dir: Path

    @property
    def keys(self) -> List[str]:
        """The dotted keys that vary between cells, in first-seen order."""
        return list(dict.fromkeys(key for cell in self.cells for key in cell.overrides))


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key or any(not part for part in key.split('.')):
        raise GridError(f'{where}: {key!r} is not a dotted config key like model.init_args.backbone')
    return key


def set_dotted(config: Dict[str, Any], key: str, value: Any) -> None:
    """Set ``config[a][b][c] = value`` for ``key='a.b.c'``, creating (or replacing ``None`` by) dicts on the way."""
    *parents, leaf = key.split('.')
    node = config
    for i, part in enumerate(parents):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            path = '.'.join(parents[:i + 1])
            raise GridError(f'cannot set {key}: {path} is {type(child).__name__} {child!r} in the config, '
                            f'not a mapping')
        node = child
    node[leaf] = copy.deepcopy(value)


def _format_value(value: Any) -> str:
    """A short readable form of an override value for cell names: [3, 5] → 3-5, True → true, 0.001 → 0.001."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if value is None:
        return 'none'
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return '-'.join(_format_value(v) for v in value) or 'empty'
    if isinstance(value, dict):
        if 'class_path' in value:
            return str(value['class_path']).rsplit('.', 1)[-1]
        return '+'.join(f'{k}-{_format_value(v)}' for k, v in value.items()) or 'empty'
    return str(value)


def _labels(keys: Sequence[str]) -> Dict[str, str]:
    """Shortest unique trailing part of each dotted key (``init_args`` skipped): ...backbone_kwargs.kernel_sizes →
    kernel_sizes, optimizer.init_args.lr → lr."""
    parts = {key: [p for p in key.split('.') if p != 'init_args'] or key.split('.') for key in keys}
    labels = {}
    for key in keys:
        for n in range(1, len(parts[key]) + 1):
            label = '.'.join(parts[key][-n:])
            clashes = [other for other in keys if other != key and '.'.join(parts[other][-n:]) == label]
            if not clashes:
                break
        labels[key] = label
    return labels


def _safe_name(name: str) -> str:
    safe = _UNSAFE.sub('_', name).strip('._') or 'cell'
    if len(safe) > _MAX_NAME:
        safe = f'{safe[:_MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}'
    return safe


def _expand(spec: Mapping[str, Any], where: str) -> List[Tuple[str, Dict[str, Any]]]:
    """(raw name, own overrides) of every cell: the product of ``grid``, then the ``variants``."""
    grid = spec.get('grid') or {}
    variants = spec.get('variants') or {}
    if not isinstance(grid, dict):
        raise GridError(f'{where}: grid must map dotted keys to value lists, got {type(grid).__name__}')
    if not isinstance(variants, dict):
        raise GridError(f'{where}: variants must map names to override mappings, got {type(variants).__name__}')
    cells = []
    if grid:
        for key, values in grid.items():
            _check_key(key, f'{where}: grid')
            if not isinstance(values, list) or not values:
                raise GridError(f'{where}: grid key {key} needs a non-empty list of values, got {values!r}')
        labels = _labels(list(grid))
        for combo in itertools.product(*grid.values()):
            overrides = dict(zip(grid, combo))
            cells.append((','.join(f'{labels[k]}={_format_value(v)}' for k, v in overrides.items()), overrides))
    for name, overrides in variants.items():
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise GridError(f'{where}: variant {name!r} must be a mapping of dotted keys to values, got {overrides!r}')
        for key in overrides:
            _check_key(key, f'{where}: variant {name!r}')
        cells.append((str(name), dict(overrides)))
    return cells or [('base', {})]


def merge_configs(into: Dict[str, Any], other: Mapping[str, Any]) -> Dict[str, Any]:
    """Merge ``other`` into ``into`` as LightningCLI merges several ``--config`` files: mappings recursively, other
    values replaced; a mapping naming another ``class_path`` replaces the old one instead of mixing their init_args."""
    for key, value in other.items():
        old = into.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and old.get('class_path', value.get('class_path')) == \
                value.get('class_path', old.get('class_path')):
            merge_configs(old, value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def _find_base(base: str, grid_path: Path) -> Path:
    path = Path(base).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:  # the current folder, the grid file's folder, the repository root (experiments/..)
        candidates = [path, grid_path.parent / path, grid_path.parent.parent / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingPathError(f'{grid_path}: base config {base} not found (looked in {", ".join(map(str, candidates))})')


def _load_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise GridError(f'{what} {path} is not valid YAML: {" ".join(str(e).split())}') from e


def _parse_set(items: Sequence[str]) -> Dict[str, Any]:
    out = {}
    for item in items:
        key, sep, raw = item.partition('=')
        if not sep:
            raise GridError(f'--set {item!r}: expected KEY=VALUE, e.g. data.init_args.root=/data/imagenet')
        out[_check_key(key.strip(), '--set')] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _cell_logger(base_logger: Any, save_dir: Path, name: str) -> Dict[str, Any]:
    """A TensorBoardLogger writing exactly into ``save_dir/name`` (version '' adds no ``version_N`` level), keeping
    the base's TensorBoardLogger settings."""
    init_args = {'default_hp_metric': False}
    if isinstance(base_logger, dict) and str(base_logger.get('class_path', '')).endswith('TensorBoardLogger'):
        init_args.update(base_logger.get('init_args') or {})
    init_args.update(save_dir=str(save_dir), name=name, version='')
    return {'class_path': 'lightning.pytorch.loggers.TensorBoardLogger', 'init_args': init_args}


def _sha(config: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_grid(path, base: Union[None, str, Sequence[str]] = None, name: Optional[str] = None,
              sets: Sequence[str] = (), log_root='logs') -> Grid:
    """Read a grid file and build every cell's config (nothing is written or run).

    Args:
        path: the grid YAML.
        base: replaces the file's ``base``: one config or several merged in order like repeated ``--config``
            (e.g. an ImageNet recipe, then ``cli_configs/trainer/ddp_single_node.yaml``).
        name: replaces the file's ``name``: the cells log to ``<log_root>/<name>/``.
        sets: extra ``KEY=VALUE`` overrides for every cell (VALUE is YAML), applied after the file's overrides.
        log_root: folder holding the grids' folders.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f'grid file {path} not found')
    spec = _load_yaml(path, 'grid file')
    if not isinstance(spec, dict):
        raise GridError(f'grid file {path} must be a mapping with base/overrides/grid/variants')
    unknown = sorted(set(spec) - set(GRID_KEYS))
    if unknown:
        raise GridError(f'grid file {path}: unknown top-level key(s) {", ".join(unknown)}; allowed: '
                        f'{", ".join(GRID_KEYS)}')
    base = base or spec.get('base')
    bases = [base] if isinstance(base, str) else list(base or [])
    if not bases:
        raise GridError(f'grid file {path} names no base config (base: cli_configs/....yaml)')
    base_paths, base_config = [], {}
    for item in bases:
        base_path = _find_base(str(item), path)
        loaded = _load_yaml(base_path, 'base config')
        if not isinstance(loaded, dict):
            raise GridError(f'base config {base_path} is not a LightningCLI config mapping')
        merge_configs(base_config, loaded)
        base_paths.append(base_path)
    shared = spec.get('overrides') or {}
    if not isinstance(shared, dict):
        raise GridError(f'grid file {path}: overrides must map dotted keys to values')
    for key in shared:
        _check_key(key, f'{path}: overrides')
    shared = {**shared, **_parse_set(sets)}

    grid_name = _safe_name(str(name or spec.get('name') or path.stem))
    log_dir = Path(log_root) / grid_name
    cells, seen = [], set()
    for raw_name, own in _expand(spec, str(path)):
        cell_name = _safe_name(raw_name)
        unique, n = cell_name, 2
        while unique in seen:
            unique, n = f'{cell_name}-{n}', n + 1
        seen.add(unique)
        config = copy.deepcopy(base_config)
        # cells run unattended: no progress bar in run.log unless a cell asks for one
        config.setdefault('trainer', {}).setdefault('enable_progress_bar', False)
        for key, value in {**shared, **own}.items():
            set_dotted(config, key, value)
        trainer = config.get('trainer')
        if not isinstance(trainer, dict):
            raise GridError(f'cell {unique}: trainer must be a mapping')
        trainer['logger'] = _cell_logger(trainer.get('logger'), log_dir, unique)
        cells.append(Cell(name=unique, overrides=own, config=config, dir=log_dir / unique, config_sha=_sha(config)))
    return Grid(name=grid_name, path=path, bases=base_paths, overrides=shared, cells=cells, log_dir=log_dir)


# ---- validation: the CLI's own parser and constructors, no Trainer, no training ---------------------------------

def _short_error(err: BaseException) -> str:
    """One line out of a (possibly nested, multi-line) jsonargparse or constructor error."""
    from .__main__ import user_facing_error
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


_CHECKER = None  # the parser-holding CLI of validate_cells, built once per process


def validate_cells(cells: Sequence[Cell]) -> None:
    """Parse every cell's config with the CLI's ``fit`` parser and build its model and data module.

    Catches unknown keys, wrong types, unknown backbone kwargs, λ or kernel lists that do not fit the channels and
    missing data roots. The Trainer is not built, so GPU configs can be checked on a machine without GPUs.
    Fills in each cell's trainable parameter count.

    Raises:
        GridError: naming the first bad cell and what is wrong with it.
    """
    from lightning.pytorch.cli import LightningCLI

    from .cli import SpanetCLI

    class _CheckCLI(SpanetCLI):
        @staticmethod
        def subcommands() -> Dict[str, set]:
            return {'fit': LightningCLI.subcommands()['fit']}  # the only one cells run; builds 4x faster

        def instantiate_classes(self) -> None:
            parser = self.parser
            instantiate = getattr(parser, 'instantiate', None) or parser.instantiate_classes
            self.config_init = instantiate(self.config)
            self.datamodule = self._get(self.config_init, 'data')
            self.model = self._get(self.config_init, 'model')

        def _run_subcommand(self, subcommand: str) -> None:
            pass

        def check(self, args: List[str]) -> None:
            """Parse and build another config with this instance's parser (building a parser is the slow part)."""
            self.parse_arguments(self.parser, args)
            self.subcommand = self.config['subcommand']
            self.before_instantiate_classes()
            self.instantiate_classes()

    global _CHECKER
    cli = _CHECKER
    for cell in cells:
        args = ['fit', '--config', yaml.safe_dump(cell.config, sort_keys=False)]
        try:
            with _quiet():
                if cli is None:
                    cli = _CHECKER = _CheckCLI(args=args, parser_kwargs={'exit_on_error': False})
                else:
                    cli.check(args)
        except SystemExit as exit_:  # jsonargparse may still exit (e.g. on --help-like input)
            raise GridError(f'cell {cell.name}: the CLI rejected its config (exit {exit_.code})') from None
        except Exception as e:
            raise GridError(f'cell {cell.name}: {_short_error(e)}') from e
        model = cli.model
        cell.params = sum(p.numel() for p in model.parameters() if p.requires_grad) if model is not None else None
        cli.model = cli.datamodule = cli.config_init = None


# ---- run state ----------------------------------------------------------------------------------------------------

def _load_state(cell: Cell) -> None:
    path = cell.dir / STATUS_FILE
    if not path.is_file():
        return
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    cell.previous = state
    cell.params = state.get('params')
    cell.best, cell.monitor = state.get('best'), state.get('monitor')
    cell.wall_s = float(state.get('wall_s') or 0.0)
    cell.returncode, cell.tail = state.get('returncode'), state.get('tail', '')
    status = state.get('status', 'pending')
    if status == 'running':  # the grid process died while this cell ran
        if _alive(state.get('pid'), cell.config_path):
            raise GridError(f'cell {cell.name} is still running (pid {state["pid"]}, {cell.log_path}); '
                            f'wait for it or stop it before running the grid again')
        status = 'interrupted'
    cell.status = status


def _alive(pid: Optional[int], config_path: Path) -> bool:
    """Whether ``pid`` is a live process running this cell (a grid killed with SIGKILL leaves its cells running)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    try:
        # the cell's own '<cell>/cell.yaml' on the command line (the grid may have been started from elsewhere)
        tail = os.path.join(config_path.parent.name, config_path.name)
        return tail in Path(f'/proc/{int(pid)}/cmdline').read_bytes().decode(errors='replace')
    except OSError:
        return True  # no /proc: assume the worst


def _save_state(cell: Cell) -> None:
    state = {
        'status': cell.status, 'config_sha': cell.config_sha, 'overrides': cell.overrides, 'params': cell.params,
        'best': cell.best, 'monitor': cell.monitor, 'wall_s': round(cell.wall_s, 1), 'returncode': cell.returncode,
        'tail': cell.tail, 'pid': cell.pid, 'updated': time.strftime('%Y-%m-%d %H:%M:%S'),
    }
    _write_atomic(cell.dir / STATUS_FILE, json.dumps(state, indent=1, default=str) + '\n')


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def read_best(last_checkpoint: Path) -> Tuple[Optional[float], Optional[str]]:
    """(best score, monitored metric) of the best-model ``ModelCheckpoint`` stored in a ``last.ckpt``."""
    if not last_checkpoint.is_file():
        return None, None
    import torch
    try:
        state = torch.load(last_checkpoint, map_location='cpu', weights_only=False)
    except Exception as e:  # a truncated file from a killed run: no metric, not a grid failure
        _logger.warning('cannot read %s: %s', last_checkpoint, e)
        return None, None
    for key, callback_state in (state.get('callbacks') or {}).items():
        if not str(key).startswith('ModelCheckpoint') or not isinstance(callback_state, dict):
            continue
        score = callback_state.get('best_model_score')
        if score is not None and callback_state.get('monitor'):
            return float(score), str(callback_state['monitor'])
    return None, None


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    if not path.is_file():
        return ''
    with path.open('rb') as fh:
        fh.seek(max(0, path.stat().st_size - 64 * 1024))
        text = fh.read().decode(errors='replace')
    text = '\n'.join(line.rsplit('\r', 1)[-1] for line in text.splitlines())
    return '\n'.join(text.splitlines()[-lines:])


# ---- summary and TensorBoard hparams ------------------------------------------------------------------------------

def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix('...').strip()


def _overrides_text(overrides: Mapping[str, Any]) -> str:
    return '; '.join(f'{key}={_flow(value)}' for key, value in overrides.items())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f'{seconds}s'
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f'{minutes}m{seconds:02d}s'
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m'


def write_summary(grid: Grid) -> None:
    """Rewrite ``summary.csv`` and ``summary.md`` of the grid from its cells' current state."""
    grid.log_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(['cell', 'status', 'monitor', 'best', 'params', 'wall_s', 'overrides', 'log'])
    for cell in grid.cells:
        writer.writerow([cell.name, cell.status, cell.monitor or '', '' if cell.best is None else f'{cell.best:.6g}',
                         '' if cell.params is None else cell.params, f'{cell.wall_s:.1f}',
                         _overrides_text(cell.overrides), str(cell.log_path)])
    _write_atomic(grid.log_dir / 'summary.csv', buffer.getvalue())

    monitors = {cell.monitor for cell in grid.cells if cell.monitor}
    metric = f'best {next(iter(monitors))}' if len(monitors) == 1 else 'best (metric)'
    counts = {status: sum(cell.status == status for cell in grid.cells)
              for status in ('done', 'running', 'failed', 'interrupted', 'pending')}
    shared = _overrides_text(grid.overrides)
    bases = ' + '.join(f'`{base}`' for base in grid.bases)
    lines = [
        f'# Grid `{grid.name}`', '',
        f'Grid file `{grid.path}`, base {bases}' + (f', shared overrides `{shared}`' if shared else '') + '.',
        f'{len(grid.cells)} cells: ' + ', '.join(f'{n} {status}' for status, n in counts.items() if n) + '.',
        f'Compare: `tensorboard --logdir {grid.log_dir}` (HPARAMS tab). Updated {time.strftime("%Y-%m-%d %H:%M:%S")}.',
        '',
        f'| cell | overrides | {metric} | params | wall | status |',
        '|---|---|---:|---:|---:|---|',
    ]
    for cell in grid.cells:
        best = '' if cell.best is None else f'{cell.best:.4f}'
        if cell.best is not None and len(monitors) > 1:
            best += f' ({cell.monitor})'
        params = '' if cell.params is None else f'{cell.params:,}'
        overrides = f'`{_overrides_text(cell.overrides)}`'.replace('|', '\\|') if cell.overrides else '(base)'
        lines.append(f'| {cell.name} | {overrides} | {best} | {params} | '
                     f'{_duration(cell.wall_s) if cell.wall_s else ""} | {cell.status} |')
    failed = [cell for cell in grid.cells if cell.status == 'failed']
    if failed:
        lines += ['', '## Failed cells']
        for cell in failed:
            lines += ['', f'### {cell.name}', '',
                      f'Exit code {cell.returncode}; last lines of `{cell.log_path}`:', '', '```text', cell.tail, '```']
    _write_atomic(grid.log_dir / 'summary.md', '\n'.join(lines) + '\n')


def _hparam_value(value: Any) -> Any:
    if isinstance(value, (bool, int, float)) and not (isinstance(value, float) and not math.isfinite(value)):
        return value
    return _flow(value) if not isinstance(value, str) else value


def write_hparams(grid: Grid, cell: Cell) -> None:
    """TensorBoard hparams of a finished cell into its own run folder: the varying keys (``base`` where the cell
    keeps the base value), the best monitored metric, parameters and wall time."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    keys = grid.keys
    labels = _labels(keys)
    columns = {key: [_hparam_value(c.overrides[key]) if key in c.overrides else 'base' for c in grid.cells]
               for key in keys}
    hparam_dict, domains = {}, {}
    for key in keys:
        values = columns[key]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        boolean = all(isinstance(v, bool) for v in values)
        own = _hparam_value(cell.overrides[key]) if key in cell.overrides else 'base'
        if numeric or boolean:
            hparam_dict[labels[key]] = own
        else:
            hparam_dict[labels[key]] = str(own)
            domains[labels[key]] = sorted({str(v) for v in values})
    if not hparam_dict:
        hparam_dict = {'cell': cell.name}
        domains = {'cell': [c.name for c in grid.cells]}
    monitor = cell.monitor or 'metric'
    metrics = {f'grid/best_{monitor}': cell.best if cell.best is not None else float('nan'),
               'grid/params': float(cell.params or 0), 'grid/wall_s': cell.wall_s}
    exp, ssi, sei = hparams(hparam_dict, metrics, hparam_domain_discrete=domains)
    with SummaryWriter(log_dir=str(cell.dir), filename_suffix='.grid') as writer:
        for summary in (exp, ssi, sei):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, 0)


# ---- running ------------------------------------------------------------------------------------------------------

@contextmanager
def _grid_lock(log_dir: Path) -> Iterator[None]:
    import fcntl
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / '.grid.lock', 'w') as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise GridError(f'another grid process is running in {log_dir}; wait for it or stop it first') from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prepare(grid: Grid) -> Tuple[List[Cell], List[Cell]]:
    """Load every cell's recorded state; return (cells to run, finished cells)."""
    to_run, finished = [], []
    for cell in grid.cells:
        _load_state(cell)
        if cell.status == 'done':
            if cell.previous.get('config_sha') != cell.config_sha:
                raise GridError(
                    f'cell {cell.name} finished with a different configuration ({cell.dir / STATUS_FILE}); give this '
                    f'grid a new folder with --name, or delete {cell.dir} to run it again')
            finished.append(cell)
        else:
            to_run.append(cell)
    return to_run, finished


class _Runner:
    """Runs cells as subprocesses, at most ``max_parallel`` at a time, keeping state, summary and progress bar."""

    def __init__(self, grid: Grid, max_parallel: int, python: str = sys.executable):
        self.grid = grid
        self.max_parallel = max(1, max_parallel)
        self.python = python
        self.running: Dict[str, Tuple[Cell, subprocess.Popen, float, Any]] = {}
        self.bar = None

    def _postfix(self) -> None:
        if self.bar is not None:
            cells = self.grid.cells
            self.bar.set_postfix(done=sum(c.status == 'done' for c in cells), running=len(self.running),
                                 failed=sum(c.status == 'failed' for c in cells), refresh=True)

    def _say(self, message: str) -> None:
        from tqdm import tqdm
        tqdm.write(message, file=sys.stderr)

    def start(self, cell: Cell) -> None:
        if cell.dir.exists() and cell.previous and cell.previous.get('config_sha') != cell.config_sha:
            self._say(f'{cell.name}: configuration changed since its last run; starting it afresh')
            shutil.rmtree(cell.dir)
            cell.previous = {}
        cell.dir.mkdir(parents=True, exist_ok=True)
        cell.config_path.write_text(yaml.safe_dump(cell.config, sort_keys=False))
        resume = cell.resume_path()
        if resume is None:  # a fresh start: nothing of an earlier attempt counts
            cell.wall_s, cell.best, cell.monitor = 0.0, None, None
        cmd = cell.command(self.python)
        cell.previous = {'config_sha': cell.config_sha}
        cell.status, cell.returncode, cell.tail = 'running', None, ''
        log = cell.log_path.open('a')
        log.write(f'\n=== spanet_pl.grid {time.strftime("%Y-%m-%d %H:%M:%S")}: '
                  f'{"resuming from " + str(resume) if resume else "starting"}\n$ {" ".join(cmd)}\n')
        log.flush()
        env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        cell.pid = proc.pid
        _save_state(cell)
        self.running[cell.name] = (cell, proc, time.monotonic(), log)
        if resume:
            self._say(f'{cell.name}: resuming from {resume}')

    def finish(self, name: str, returncode: int) -> None:
        cell, _, started, log = self.running.pop(name)
        log.close()
        cell.wall_s += time.monotonic() - started
        cell.returncode = returncode
        best, monitor = read_best(cell.last_checkpoint)
        if best is not None:
            cell.best, cell.monitor = best, monitor
        if returncode == 0:
            cell.status = 'done'
            try:
                write_hparams(self.grid, cell)
            except Exception as e:  # the run is fine; only the dashboard entry is missing
                self._say(f'{cell.name}: could not write TensorBoard hparams: {e}')
            metric = f', best {cell.monitor} {cell.best:.4f}' if cell.best is not None else ''
            self._say(f'{cell.name}: done in {_duration(cell.wall_s)}{metric}')
        else:
            cell.status = 'failed'
            cell.tail = _tail(cell.log_path)
            last = next((line for line in reversed(cell.tail.splitlines()) if line.strip()), '')
            self._say(f'{cell.name}: FAILED (exit {returncode}): {last.strip()}  [{cell.log_path}]')
        cell.pid = None
        _save_state(cell)
        write_summary(self.grid)
        self._postfix()
        if self.bar is not None:
            self.bar.update(1)

    def interrupt(self) -> None:
        """Stop the running cells: SIGINT (Lightning shuts down cleanly), then SIGTERM, then SIGKILL. They resume
        from their ``last.ckpt`` on the next invocation."""
        for sig, grace in ((signal.SIGINT, 10), (signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            alive = [proc for _, proc, _, _ in self.running.values() if proc.poll() is None]
            for proc in alive:
                proc.send_signal(sig)
            deadline = time.monotonic() + grace
            while any(proc.poll() is None for proc in alive) and time.monotonic() < deadline:
                time.sleep(0.1)
        for name in list(self.running):
            cell, proc, started, log = self.running.pop(name)
            proc.wait()
            log.close()
            cell.wall_s += time.monotonic() - started
            cell.status, cell.returncode, cell.pid = 'interrupted', proc.returncode, None
            best, monitor = read_best(cell.last_checkpoint)
            if best is not None:
                cell.best, cell.monitor = best, monitor
            _save_state(cell)
        write_summary(self.grid)

    def run(self, cells: Sequence[Cell]) -> None:
        from tqdm import tqdm
        pending = list(cells)
        done = len(self.grid.cells) - len(pending)
        self.bar = tqdm(total=len(self.grid.cells), initial=done, desc=f'grid {self.grid.name}', unit='cell',
                        file=sys.stderr, dynamic_ncols=True)
        try:
            while pending or self.running:
                while pending and len(self.running) < self.max_parallel:
                    self.start(pending.pop(0))
                    write_summary(self.grid)
                    self._postfix()
                for name, (_, proc, _, _) in list(self.running.items()):
                    code = proc.poll()
                    if code is not None:
                        self.finish(name, code)
                time.sleep(0.2)
        except KeyboardInterrupt:
            self._say('interrupted: stopping the running cells (they resume on the next invocation)')
            self.interrupt()
            raise
        finally:
            self.bar.close()


def run_grid(grid: Grid, max_parallel: int = 1, dry_run: bool = False, validate: bool = True) -> int:
    """Validate, then run every unfinished cell of ``grid``; return 0 when all are done, 1 when some failed."""
    to_run, finished = _prepare(grid)
    if validate and to_run:
        validate_cells(to_run)
    if dry_run:
        print(f'grid {grid.name}: {len(grid.cells)} cells, {len(finished)} done, {len(to_run)} to run '
              f'(logs in {grid.log_dir}/)')
        for cell in grid.cells:
            if cell.status == 'done':
                print(f'  {cell.name}  [done, skipped]')
                continue
            params = f', {cell.params:,} params' if cell.params is not None else ''
            state = 'resume' if cell.resume_path() else cell.status
            print(f'  {cell.name}  [{state}{params}]  {_overrides_text(cell.overrides) or "(base)"}\n'
                  f'    {" ".join(cell.command())}')
        return 0
    with _grid_lock(grid.log_dir):
        write_summary(grid)
        for cell in finished:
            _logger.info('%s: done, skipped', cell.name)
        if finished:
            print(f'grid {grid.name}: {len(finished)} of {len(grid.cells)} cells already done, skipped',
                  file=sys.stderr)
        if to_run:
            runner = _Runner(grid, max_parallel)

            def _sigterm(signum, frame):  # SLURM / kill: stop the cells like Ctrl-C does
                raise KeyboardInterrupt

            previous = signal.signal(signal.SIGTERM, _sigterm)
            try:
                runner.run(to_run)
            finally:
                signal.signal(signal.SIGTERM, previous)
        write_summary(grid)
    failed = [cell.name for cell in grid.cells if cell.status != 'done']
    print(f'grid {grid.name}: {len(grid.cells) - len(failed)}/{len(grid.cells)} cells done'
          + (f', failed: {", ".join(failed)}' if failed else '') + f'; summary: {grid.log_dir / "summary.md"}',
          file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m spanet_pl.grid', description='Run an ablation grid of LightningCLI fit runs.',
        epilog='example: python -m spanet_pl.grid experiments/v2_kernel_sets.yaml --max-parallel 2')
    parser.add_argument('grid', help='grid YAML file (experiments/NAME.yaml)')
    parser.add_argument('--dry-run', action='store_true', help='validate and list the cells and commands, run nothing')
    parser.add_argument('--max-parallel', type=int, default=1, metavar='N', help='cells run at once (default 1)')
    parser.add_argument('--set', dest='sets', action='append', default=[], metavar='KEY=VALUE',
                        help='override for every cell, VALUE in YAML (repeatable), '
                             'e.g. --set data.init_args.root=/data/imagenet')
    parser.add_argument('--base', action='append', metavar='CONFIG',
                        help="replace the grid file's base config; repeat to merge several in order, e.g. a recipe "
                             "then cli_configs/trainer/ddp_single_node.yaml")
    parser.add_argument('--name', help="replace the grid's name, i.e. its folder logs/<name>/")
    parser.add_argument('--logs', default='logs', metavar='DIR', help='folder holding the grid folders (default logs)')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_parallel < 1:
        print('spanet_pl.grid: error: --max-parallel must be >= 1', file=sys.stderr)
        return 2
    try:
        grid = load_grid(args.grid, base=args.base, name=args.name, sets=args.sets, log_root=args.logs)
        return run_grid(grid, max_parallel=args.max_parallel, dry_run=args.dry_run)
    except UserInputError as e:
        print(f'spanet_pl.grid: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'spanet_pl.grid: interrupted; run the same command again to resume', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
