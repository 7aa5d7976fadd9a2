"""What each run's folder says about it: ``run.json`` (written by the grid and the job), ``metrics.json`` (written by
the fit), ``run.log``; and the status that follows, given whether its job is still alive."""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..callbacks.metrics import METRICS_FILE, write_json_atomic
from .spec import Cell, Grid, Run

__all__ = ['RUN_STATE', 'JOBS_FILE', 'PLAN_FILE', 'RUN_LOG', 'STATUSES', 'RunView', 'read_json',
           'update_run_state', 'collect', 'tail', 'grid_to_plan', 'grid_from_plan']

RUN_STATE = 'run.json'
JOBS_FILE = 'jobs.json'  # <grid>/jobs.json: run name → {executor, job_id, folder} of its latest submission
PLAN_FILE = 'grid.json'  # <grid>/grid.json: the grid as last submitted, read by `status` and `report`
RUN_LOG = 'run.log'
TAIL_LINES = 25
# done: finished; failed: the run ended with an error; interrupted: cut (Ctrl-C, a killed or cancelled job) and not
# queued again; running / queued: its job is alive; pending: never submitted (or its configuration changed).
STATUSES = ('done', 'failed', 'interrupted', 'running', 'queued', 'pending')


def read_json(path: Path) -> Dict[str, Any]:
    """The JSON object in ``path``, or {} when it is missing or unreadable (a run killed while writing it)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_run_state(run_dir: Path, **fields: Any) -> Dict[str, Any]:
    """Merge ``fields`` into ``run_dir/run.json`` (atomically) and return the new state."""
    state = {**read_json(Path(run_dir) / RUN_STATE), **fields}
    write_json_atomic(Path(run_dir) / RUN_STATE, state)
    return state


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log (carriage-return progress lines collapsed)."""
    path = Path(path)
    if not path.is_file():
        return ''
    with path.open('rb') as fh:
        fh.seek(max(0, path.stat().st_size - 64 * 1024))
        text = fh.read().decode(errors='replace')
    text = '\n'.join(line.rsplit('\r', 1)[-1] for line in text.splitlines())
    return '\n'.join(text.splitlines()[-lines:])


@dataclass
class RunView:
    """A run and what its files say: ``status`` is one of ``STATUSES``."""
    run: Run
    status: str
    state: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    job: Dict[str, Any] = field(default_factory=dict)

    def _metric(self, which: str, key: str = 'value') -> Optional[float]:
        entry = self.metrics.get(which) or {}
        return entry.get(key)

    @property
    def best(self) -> Optional[float]:
        return self._metric('best')

    @property
    def final(self) -> Optional[float]:
        return self._metric('last')

    @property
    def monitor(self) -> Optional[str]:
        return self.metrics.get('monitor')

    @property
    def log_path(self) -> Path:
        return self.run.dir / RUN_LOG

    @property
    def stale(self) -> bool:
        """A finished run of another configuration: the summary would mix two setups."""
        return self.state.get('status') == 'done' and self.state.get('config_sha') != self.run.config_sha


def _status(run: Run, state: Mapping[str, Any], metrics: Mapping[str, Any], alive: Optional[bool]) -> str:
    recorded = state.get('status')
    if not recorded or state.get('config_sha') != run.config_sha:
        return 'pending' if recorded != 'done' else 'done'
    if recorded == 'done':
        return 'done' if metrics.get('status') == 'finished' else 'interrupted'
    if recorded in ('queued', 'running', 'interrupted') and alive:
        return 'queued' if recorded == 'interrupted' else recorded  # an interrupted job requeued by the engine
    if recorded == 'queued' and not state.get('attempts'):
        return 'pending'  # its job ended before it started
    return 'failed' if recorded == 'failed' else 'interrupted'


def collect(grid: Grid, alive: Optional[Callable[[Dict[str, Any]], bool]] = None) -> List[RunView]:
    """Every run of ``grid`` with its status. ``alive(job record)`` tells whether a run's latest job is still
    queued or running (without it, unfinished runs read as interrupted)."""
    jobs = read_json(grid.log_dir / JOBS_FILE)
    views = []
    for run in grid.runs:
        state = read_json(run.dir / RUN_STATE)
        metrics = read_json(run.dir / METRICS_FILE)
        job = jobs.get(run.name) or {}
        unfinished = state.get('status') in ('queued', 'running', 'interrupted')
        is_alive = bool(job) and unfinished and alive is not None and alive(job)
        views.append(RunView(run=run, status=_status(run, state, metrics, is_alive), state=state, metrics=metrics,
                             job=job))
    return views

def grid_to_plan(grid: Grid) -> Dict[str, Any]:
    """What ``status`` and ``report`` need to know about a submitted grid (the run configs are in their cell.yaml)."""
    return {
        'name': grid.name, 'path': str(grid.path), 'bases': [str(b) for b in grid.bases],
        'overrides': grid.overrides, 'seeds': grid.seeds, 'reference': grid.reference, 'executor': grid.executor,
        'cells': [{'name': c.name, 'overrides': c.overrides, 'params': c.params,
                   'runs': [{'seed': r.seed, 'dir': str(r.dir), 'config_sha': r.config_sha} for r in c.runs]}
                  for c in grid.cells],
    }


def grid_from_plan(plan: Mapping[str, Any], log_dir: Path) -> Grid:
    """The grid of a ``grid.json`` written into ``log_dir``; run folders are found relative to ``log_dir``."""
    cells = []
    for item in plan['cells']:
        cell = Cell(name=item['name'], overrides=item['overrides'], params=item.get('params'))
        cell.runs = [Run(cell=cell.name, seed=r['seed'], config={}, config_sha=r['config_sha'],
                         dir=Path(log_dir) / cell.name / f'seed={r["seed"]}') for r in item['runs']]
        cells.append(cell)
    return Grid(name=plan['name'], path=Path(plan['path']), bases=[Path(b) for b in plan['bases']],
                overrides=plan['overrides'], cells=cells, log_dir=Path(log_dir), seeds=list(plan['seeds']),
                reference=plan['reference'], executor=plan.get('executor') or {})
