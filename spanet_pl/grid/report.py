"""The grid's report, from its runs' ``metrics.json``: ``summary.csv`` (one row per cell), ``runs.csv`` (one per
run), ``summary.md`` (both tables, failed runs with their log tails, the plots) and TensorBoard hparams, so
``tensorboard --logdir logs/<grid>`` shows every run in its HPARAMS view."""
import csv
import io
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .spec import Grid, flow, key_labels
from .state import STATUSES, RunView, tail
from .stats import CellStats, cell_stats

__all__ = ['write_summary', 'write_hparams', 'duration', 'overrides_text', 'cell_table']


def overrides_text(overrides: Mapping[str, Any]) -> str:
    return '; '.join(f'{key}={flow(value)}' for key, value in overrides.items())


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ''
    seconds = int(round(seconds))
    if seconds < 60:
        return f'{seconds}s'
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f'{minutes}m{seconds:02d}s'
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m'


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(text)
    tmp.replace(path)


def _csv(rows: List[List[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator='\n').writerows(rows)
    return buffer.getvalue()


def _num(value: Optional[float], spec: str = '.6g') -> str:
    return '' if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _macs(macs: Optional[int]) -> str:
    if not macs:
        return ''
    return f'{macs / 1e9:.2f} G' if macs >= 1e9 else f'{macs / 1e6:.2f} M'


def _first(views: Sequence[RunView], key: str) -> Any:
    return next((v.metrics.get(key) for v in views if v.metrics.get(key) is not None), None)


def _mean_wall(views: Sequence[RunView]) -> Optional[float]:
    walls = [v.metrics['wall_s'] for v in views if v.status == 'done' and v.metrics.get('wall_s') is not None]
    return sum(walls) / len(walls) if walls else None


def _monitor(views: Sequence[RunView]) -> str:
    monitors = {v.monitor for v in views if v.monitor}
    return next(iter(monitors)) if len(monitors) == 1 else 'metric'


def cell_table(grid: Grid, views: Sequence[RunView], stats: Dict[str, CellStats]) -> List[str]:
    """The Markdown table of the cells: n, mean ± std of best and final, Δ best vs the reference with its CI."""
    metric = _monitor(views)
    lines = [f'| cell | n | failed | best {metric} | final {metric} | Δ best vs reference [95% CI] | p | params | '
             f'MACs | wall / run |', '|---|---:|---:|---:|---:|---|---:|---:|---:|---:|']
    for cell in grid.cells:
        s = stats[cell.name]
        runs = [v for v in views if v.run.cell == cell.name]
        name = f'{cell.name} (reference)' if cell.name == grid.reference else cell.name
        diff = s.difference.text() if s.difference else ('' if cell.name == grid.reference else 'n/a')
        p = _num(s.difference.p_value, '.3g') if s.difference else ''
        params = _first(runs, 'params') or cell.params
        macs = _first(runs, 'macs')
        n = f'{s.n}' + (f' (+{s.unfinished} unfinished)' if s.unfinished else '')
        lines.append(f'| {name} | {n} | {s.failed} | {s.best.text()} | {s.final.text()} | {diff} | {p} | '
                     f'{f"{params:,}" if params else ""} | {_macs(macs)} | '
                     f'{duration(_mean_wall(runs))} |')
    return lines


def write_summary(grid: Grid, views: Sequence[RunView], plots: Sequence[str] = ()) -> Dict[str, CellStats]:
    """Rewrite ``summary.csv``, ``runs.csv`` and ``summary.md`` in the grid's folder; return the cell statistics."""
    grid.log_dir.mkdir(parents=True, exist_ok=True)
    stats = cell_stats(views, [c.name for c in grid.cells], grid.reference)
    rows = [['cell', 'overrides', 'n', 'failed', 'unfinished', 'monitor', 'best_mean', 'best_std', 'final_mean',
             'final_std', 'diff_best', 'diff_low', 'diff_high', 'p_value', 'params', 'macs', 'wall_mean_s']]
    for cell in grid.cells:
        s, runs = stats[cell.name], [v for v in views if v.run.cell == cell.name]
        d = s.difference
        rows.append([cell.name, overrides_text(cell.overrides), s.n, s.failed, s.unfinished, _monitor(runs),
                     _num(s.best.mean), _num(s.best.std), _num(s.final.mean), _num(s.final.std),
                     _num(d.mean if d else None), _num(d.low if d else None), _num(d.high if d else None),
                     _num(d.p_value if d else None), _first(runs, 'params') or cell.params or '',
                     _first(runs, 'macs') or '', _num(_mean_wall(runs), '.1f')])
    _write_text(grid.log_dir / 'summary.csv', _csv(rows))

    rows = [['run', 'cell', 'seed', 'status', 'monitor', 'best', 'best_epoch', 'best_step', 'final', 'final_epoch',
             'final_step', 'params', 'macs', 'wall_s', 'attempts', 'job_id', 'error', 'dir']]
    for v in views:
        best, last = v.metrics.get('best') or {}, v.metrics.get('last') or {}
        rows.append([v.run.name, v.run.cell, v.run.seed, v.status, v.monitor or '', _num(best.get('value')),
                     best.get('epoch', ''), best.get('step', ''), _num(last.get('value')), last.get('epoch', ''),
                     last.get('step', ''), v.metrics.get('params', ''), v.metrics.get('macs') or '',
                     _num(v.metrics.get('wall_s'), '.1f'), v.state.get('attempts', ''), v.job.get('job_id', ''),
                     v.state.get('error') or '', str(v.run.dir)])
    _write_text(grid.log_dir / 'runs.csv', _csv(rows))

    counts = {status: sum(v.status == status for v in views) for status in STATUSES}
    shared = overrides_text(grid.overrides)
    lines = [
        f'# Grid `{grid.name}`', '',
        f'Grid file `{grid.path}`, base ' + ' + '.join(f'`{b}`' for b in grid.bases)
        + (f', shared overrides `{shared}`' if shared else '') + '.',
        f'{len(grid.cells)} cells × {len(grid.seeds)} seed(s) ({", ".join(map(str, grid.seeds))}) = '
        f'{len(views)} runs: '
        + ', '.join(f'{n} {status}' for status, n in counts.items() if n) + '.',
        f'Best and final (last validation) metric: mean ± std over the finished runs; failed runs are counted, never '
        f'averaged in. Δ: mean best minus the reference cell\'s (`{grid.reference}`), with the 95% confidence '
        f'interval and p-value of Welch\'s t-test.', '',
        *cell_table(grid, views, stats), '',
    ]
    lines += [f'![{Path(p).stem}]({Path(p).name})' for p in plots] + ([''] if plots else [])
    lines += ['## Runs', '', '| run | status | best (epoch, step) | final | wall | attempts | job |',
              '|---|---|---:|---:|---:|---:|---|']
    for v in views:
        best = v.metrics.get('best') or {}
        best_text = f'{best["value"]:.4f} ({best.get("epoch")}, {best.get("step")})' if best else ''
        lines.append(f'| {v.run.name} | {v.status} | {best_text} | {_num(v.final, ".4f")} | '
                     f'{duration(v.metrics.get("wall_s"))} | {v.state.get("attempts", "")} | '
                     f'{v.job.get("job_id", "")} |')
    failed = [v for v in views if v.status == 'failed']
    if failed:
        lines += ['', '## Failed runs']
        for v in failed:
            lines += ['', f'### {v.run.name}', '', f'{v.state.get("error") or "error"}; last lines of `{v.log_path}`:',
                      '', '```text', tail(v.log_path), '```']
    lines += ['', f'Compare in TensorBoard: `tensorboard --logdir {grid.log_dir}` (HPARAMS). '
                  f'Updated {time.strftime("%Y-%m-%d %H:%M:%S")}.']
    _write_text(grid.log_dir / 'summary.md', '\n'.join(lines) + '\n')
    return stats


def _hparam(value: Any) -> Any:
    if isinstance(value, (bool, int, float)) and not (isinstance(value, float) and not math.isfinite(value)):
        return value
    return value if isinstance(value, str) else flow(value)


def write_hparams(grid: Grid, views: Sequence[RunView]) -> None:
    """TensorBoard hparams of every finished run, in its own folder (``*.grid`` events file, rewritten each time):
    the varying keys (``base`` where a cell keeps the base value) and the seed; best and final metric, parameters
    and wall time."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    keys, labels = grid.keys, key_labels(grid.keys)
    cells = {c.name: c for c in grid.cells}
    columns = {key: [_hparam(c.overrides[key]) if key in c.overrides else 'base' for c in grid.cells] for key in keys}
    for view in views:
        if view.status != 'done':
            continue
        overrides = cells[view.run.cell].overrides
        hparam_dict, domains = {}, {}
        for key in keys:
            own = _hparam(overrides[key]) if key in overrides else 'base'
            if all(isinstance(v, bool) for v in columns[key]) or all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in columns[key]):
                hparam_dict[labels[key]] = own
            else:
                hparam_dict[labels[key]] = str(own)
                domains[labels[key]] = sorted({str(v) for v in columns[key]})
        if not keys:
            hparam_dict['cell'], domains['cell'] = view.run.cell, list(cells)
        hparam_dict['seed'] = view.run.seed
        monitor = view.monitor or 'metric'
        nan = float('nan')
        metrics = {f'grid/best_{monitor}': view.best if view.best is not None else nan,
                   f'grid/final_{monitor}': view.final if view.final is not None else nan,
                   'grid/params': float(view.metrics.get('params') or 0),
                   'grid/wall_s': float(view.metrics.get('wall_s') or 0)}
        for old in view.run.dir.glob('events.out.tfevents.*.grid'):
            old.unlink()
        exp, ssi, sei = hparams(hparam_dict, metrics, hparam_domain_discrete=domains)
        with SummaryWriter(log_dir=str(view.run.dir), filename_suffix='.grid') as writer:
            for summary in (exp, ssi, sei):
                writer.file_writer.add_summary(summary)
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, 0)
