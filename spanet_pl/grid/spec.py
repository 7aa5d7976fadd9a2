"""Grid files → cells → seeded runs: each run's full LightningCLI config, folder and config hash (no I/O)."""
import copy
import hashlib
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from ..errors import MissingPathError, UserInputError
from .runconfig import run_config, sha

__all__ = ['Grid', 'Cell', 'Run', 'GridError', 'load_grid', 'set_dotted', 'merge_configs', 'parse_seeds',
           'key_labels', 'flow']

GRID_KEYS = ('name', 'description', 'base', 'overrides', 'grid', 'variants', 'seeds', 'reference', 'executor')
CELL_CONFIG = 'cell.yaml'
DEFAULT_SEED = 42  # the CLI's seed_everything default
_UNSAFE = re.compile(r'[^A-Za-z0-9._=,+-]+')  # anything else in a cell (folder) name becomes '_'
_MAX_NAME = 120


class GridError(UserInputError):
    """A bad grid file, override, option or cell configuration: reported as one line, nothing run."""


@dataclass
class Run:
    """One training run: a cell with one seed, in its own folder ``logs/<grid>/<cell>/seed=<seed>/``."""
    cell: str
    seed: int
    config: Dict[str, Any]
    dir: Path
    config_sha: str

    @property
    def name(self) -> str:
        return f'{self.cell}/seed={self.seed}'

    @property
    def config_path(self) -> Path:
        return self.dir / CELL_CONFIG


@dataclass
class Cell:
    """One point of the ablation: its own dotted-key overrides, run once per seed."""
    name: str
    overrides: Dict[str, Any]
    runs: List[Run] = field(default_factory=list)
    params: Optional[int] = None


@dataclass
class Grid:
    """A loaded grid file: where it logs, what it runs, what the summary compares against."""
    name: str
    path: Path
    bases: List[Path]
    overrides: Dict[str, Any]
    cells: List[Cell]
    log_dir: Path
    seeds: List[int]
    reference: str
    executor: Dict[str, Any]

    @property
    def runs(self) -> List[Run]:
        """Seed-major: every cell's first seed before any second seed, so early results cover every cell."""
        return [cell.runs[i] for i in range(len(self.seeds)) for cell in self.cells]

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
            raise GridError(f'cannot set {key}: {".".join(parents[:i + 1])} is {type(child).__name__} {child!r} in '
                            f'the config, not a mapping')
        node = child
    node[leaf] = copy.deepcopy(value)


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


def flow(value: Any) -> str:
    """A value as one line of YAML: ``[3, 5, 7, 9]``, ``false``."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix('...').strip()


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


def key_labels(keys: Sequence[str]) -> Dict[str, str]:
    """Shortest unique trailing part of each dotted key (``init_args`` skipped): ...backbone_kwargs.kernel_sizes →
    kernel_sizes, optimizer.init_args.lr → lr."""
    parts = {key: [p for p in key.split('.') if p != 'init_args'] or key.split('.') for key in keys}
    labels = {}
    for key in keys:
        for n in range(1, len(parts[key]) + 1):
            label = '.'.join(parts[key][-n:])
            if not any(other != key and '.'.join(parts[other][-n:]) == label for other in keys):
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
    for key, values in grid.items():
        _check_key(key, f'{where}: grid')
        if not isinstance(values, list) or not values:
            raise GridError(f'{where}: grid key {key} needs a non-empty list of values, got {values!r}')
    labels = key_labels(list(grid))
    for combo in (itertools.product(*grid.values()) if grid else ()):
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


def parse_seeds(value: Any, where: str) -> Optional[List[int]]:
    """``3`` → [0, 1, 2]; ``[0, 7]`` or ``'0,7'`` → [0, 7]; None → None."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(',')] if ',' in value else int(value)
        except ValueError:
            raise GridError(f'{where}: seeds must be a count or a list of integers, got {value!r}') from None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise GridError(f'{where}: seeds must be a count >= 1 or a list of integers, got {value}')
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if len(set(value)) != len(value):
            raise GridError(f'{where}: seeds {value} repeat a seed')
        return list(value)
    raise GridError(f'{where}: seeds must be a count or a non-empty list of integers, got {value!r}')


def _find_base(base: str, grid_path: Path) -> Path:
    path = Path(base).expanduser()
    # the current folder, the grid file's folder, the repository root (experiments/..)
    candidates = [path] if path.is_absolute() else [path, grid_path.parent / path, grid_path.parent.parent / path]
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


def load_grid(path, base: Union[None, str, Sequence[str]] = None, name: Optional[str] = None,
              sets: Sequence[str] = (), seeds: Any = None, log_root='logs') -> Grid:
    """Read a grid file and build every run's config (nothing is written or run).

    Args:
        path: the grid YAML.
        base: replaces the file's ``base``: one config or several merged in order like repeated ``--config``.
        name: replaces the file's ``name``: the runs log to ``<log_root>/<name>/``.
        sets: extra ``KEY=VALUE`` overrides for every cell (VALUE is YAML), applied after the file's overrides.
        seeds: replaces the file's ``seeds``: a count (``3`` → 0, 1, 2) or a list.
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
        raise GridError(f'grid file {path}: unknown top-level key(s) {", ".join(map(str, unknown))}; allowed: '
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
    executor = spec.get('executor') or {}
    if not isinstance(executor, dict):
        raise GridError(f'grid file {path}: executor must be a mapping (name: local | slurm, ...), got {executor!r}')

    seed_list = parse_seeds(seeds, '--seeds') if seeds is not None else parse_seeds(spec.get('seeds'),
                                                                                    f'grid file {path}')
    if seed_list is None:  # one run per cell, with the base's own seed
        own = base_config.get('seed_everything', DEFAULT_SEED)
        seed_list = [own if isinstance(own, int) and not isinstance(own, bool) else DEFAULT_SEED]

    grid_name = _safe_name(str(name or spec.get('name') or path.stem))
    log_dir = Path(log_root) / grid_name
    cells, seen = [], set()
    for raw_name, own in _expand(spec, str(path)):
        cell_name, n = _safe_name(raw_name), 2
        unique = cell_name
        while unique in seen:
            unique, n = f'{cell_name}-{n}', n + 1
        seen.add(unique)
        config = copy.deepcopy(base_config)
        for key, value in {**shared, **own}.items():
            set_dotted(config, key, value)
        if not isinstance(config.get('trainer', {}), dict):
            raise GridError(f'cell {unique}: trainer must be a mapping')
        cell = Cell(name=unique, overrides=own)
        for seed in seed_list:
            run = Run(cell=unique, seed=seed, config={}, dir=log_dir / unique / f'seed={seed}', config_sha='')
            run.config = run_config(config, run, log_dir)
            run.config_sha = sha(run.config)
            cell.runs.append(run)
        cells.append(cell)

    names = [cell.name for cell in cells]
    reference = spec.get('reference', names[0])
    if reference not in names:
        raise GridError(f'grid file {path}: reference {reference!r} is not one of its cells: {", ".join(names)}')
    return Grid(name=grid_name, path=path, bases=base_paths, overrides=shared, cells=cells, log_dir=log_dir,
                seeds=seed_list, reference=str(reference), executor=dict(executor))

