"""The grid's two PNG figures: the best metric per cell (mean ± std, every seed a dot) and the validation curves of
every run overlaid, read from the runs' TensorBoard event files."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .spec import Grid
from .state import RunView
from .stats import CellStats

__all__ = ['plot_best', 'plot_curves', 'read_curve']


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    return Figure(figsize=(width, height), dpi=100, layout='constrained')


def _colours(n: int) -> List[str]:
    import matplotlib
    cycle = matplotlib.colormaps['tab10']
    return [cycle(i % 10) for i in range(n)]


def plot_best(grid: Grid, stats: Dict[str, CellStats], monitor: str, path: Path) -> Optional[Path]:
    """Best ``monitor`` per cell: a bar at the mean, the std as error bar, each finished run as a dot."""
    cells = [c.name for c in grid.cells if stats[c.name].n]
    if not cells:
        return None
    fig = _figure(max(5.0, 1.3 * len(cells) + 1.5), 3.4)
    ax = fig.add_subplot()
    colours = _colours(len(grid.cells))
    index = {c.name: i for i, c in enumerate(grid.cells)}
    for x, cell in enumerate(cells):
        s = stats[cell]
        colour = colours[index[cell]]
        ax.bar(x, s.best.mean, width=0.6, color=colour, alpha=0.35, edgecolor=colour,
               hatch='//' if cell == grid.reference else None)
        ax.errorbar(x, s.best.mean, yerr=s.best.std or 0, color='black', capsize=6, lw=1.2)
        offsets = [(i - (len(s.values) - 1) / 2) * 0.08 for i in range(len(s.values))]
        ax.scatter([x + o for o in offsets], s.values, color=colour, edgecolor='black', zorder=3, s=22)
    values = [v for cell in cells for v in stats[cell].values]
    low, high = min(values), max(values)
    pad = max((high - low) * 0.6, 0.002)
    ax.set_ylim(low - pad, high + pad)
    ax.set_xticks(range(len(cells)), [c + ('\n(reference)' if c == grid.reference else '') for c in cells],
                  fontsize=8)
    n = sorted({stats[c].n for c in cells})
    ax.set_ylabel(f'best {monitor}')
    ax.set_title(f'{grid.name}: best {monitor} (mean ± std, n = {"/".join(map(str, n))})', fontsize=9)
    ax.grid(axis='y', alpha=0.3)
    fig.savefig(path)
    return Path(path)


def read_curve(run_dir: Path, tag: str) -> Tuple[List[int], List[float]]:
    """(steps, values) of scalar ``tag`` in the TensorBoard event files of ``run_dir`` (empty when there are none)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
    if not any(Path(run_dir).glob('events.out.tfevents.*')):
        return [], []
    events = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0}).Reload()
    if tag not in events.Tags().get(SCALARS, []):
        return [], []
    by_step = {e.step: e.value for e in events.Scalars(tag)}  # a resumed run logs some steps again: keep the last
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot_curves(grid: Grid, views: Sequence[RunView], monitor: str, path: Path) -> Optional[Path]:
    """``monitor`` over training steps for every run that logged it, one colour per cell."""
    colours = dict(zip([c.name for c in grid.cells], _colours(len(grid.cells))))
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    labelled, drawn = set(), 0
    for view in views:
        steps, values = read_curve(view.run.dir, monitor)
        if not steps:
            continue
        label = view.run.cell if view.run.cell not in labelled else None
        labelled.add(view.run.cell)
        ax.plot(steps, values, color=colours[view.run.cell], alpha=0.8, lw=1.2, label=label,
                ls='-' if view.status == 'done' else ':', marker='.', ms=3)
        drawn += 1
    if not drawn:
        return None
    ax.set_xlabel('step')
    ax.set_ylabel(monitor)
    ax.set_title(f'{grid.name}: {monitor} of every run (dotted: unfinished)', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return Path(path)
