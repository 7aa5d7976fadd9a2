"""One grid invocation: read what the run folders say, refuse what would clash, validate every cell, submit the
unfinished runs to the executor, then follow them with a progress bar (or return the job ids with ``detach``) and
write the report."""
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from ..callbacks.metrics import write_json_atomic
from .execution import Plan, cancel, job_alive, job_record, make_plan, submit
from .report import duration, overrides_text, write_hparams, write_summary
from .spec import Grid, GridError
from .state import JOBS_FILE, PLAN_FILE, RUN_STATE, RunView, collect, grid_to_plan, read_json, update_run_state
from .validate import validate_cells

__all__ = ['run_grid', 'report_grid', 'alive_checker']

POLL_S = 2.0


def alive_checker(own_jobs: Optional[Dict[str, Any]] = None):
    """``alive(record)``: asks this process's own submitit jobs first (a finished local child must be reaped, not
    probed), the engine otherwise."""
    own = {str(job.job_id): job for job in (own_jobs or {}).values()}

    def alive(record: Dict[str, str]) -> bool:
        job = own.get(record.get('job_id'))
        return not job.done() if job is not None else job_alive(record)
    return alive


def report_grid(grid: Grid, views: Sequence[RunView], plots: bool = True, plot_dir: Optional[Path] = None) -> None:
    """summary.{csv,md} + runs.csv, TensorBoard hparams of the finished runs and (``plots``) best.png, curves.png,
    also copied into ``plot_dir`` as ``<grid>_best.png`` / ``<grid>_curves.png``."""
    made: List[Path] = []
    if plots:
        from .plots import plot_best, plot_curves
        from .stats import cell_stats
        stats = cell_stats(views, [c.name for c in grid.cells], grid.reference)
        monitor = next((v.monitor for v in views if v.monitor), None)
        if monitor:
            made = [p for p in (plot_best(grid, stats, monitor, grid.log_dir / 'best.png'),
                                plot_curves(grid, views, monitor, grid.log_dir / 'curves.png')) if p]
        if plot_dir is not None:
            Path(plot_dir).mkdir(parents=True, exist_ok=True)
            for path in made:
                shutil.copyfile(path, Path(plot_dir) / f'{grid.name}_{path.name}')
    write_summary(grid, views, [p.name for p in made])
    write_hparams(grid, views)


def _check_clashes(grid: Grid, views: Sequence[RunView]) -> None:
    stale = [v for v in views if v.stale]
    if stale:
        run = stale[0].run
        raise GridError(f'run {run.name} finished with a different configuration ({run.dir / RUN_STATE}); give this '
                        f'grid a new folder with --name, or delete {run.dir} to run it again')
    live = [v for v in views if v.status in ('queued', 'running')]
    if live:
        jobs = sorted({v.job['job_id'] for v in live})
        raise GridError(f'grid {grid.name} is already running: {len(live)} run(s) in {live[0].job["executor"]} job(s) '
                        f'{", ".join(jobs[:5])}{" ..." if len(jobs) > 5 else ""}; follow them with '
                        f'`python -m spanet_pl.grid status {grid.log_dir}`, or stop those jobs first')


def _dry_run(grid: Grid, views: Sequence[RunView], plan: Optional[Plan]) -> int:
    todo = [v for v in views if v.status != 'done']
    print(f'grid {grid.name}: {len(grid.cells)} cells × {len(grid.seeds)} seed(s), {len(views) - len(todo)} runs '
          f'done, {len(todo)} to run (logs in {grid.log_dir}/); reference cell {grid.reference}')
    if plan is not None:
        print(f'  {plan.describe()}')
    for cell in grid.cells:
        params = f', {cell.params:,} params' if cell.params is not None else ''
        print(f'  {cell.name}  [{overrides_text(cell.overrides) or "(base)"}{params}]')
        for view in (v for v in views if v.run.cell == cell.name):
            last = view.run.dir / 'checkpoints' / 'last.ckpt'
            state = 'resume' if view.status != 'done' and last.is_file() and \
                view.state.get('config_sha') == view.run.config_sha else view.status
            resume = f' --ckpt_path {last}' if state == 'resume' else ''
            print(f'    seed={view.run.seed} [{state}]  '
                  f'python -m spanet_pl fit --config {view.run.config_path}{resume}')
    return 0


def _prepare_runs(views: Sequence[RunView]) -> Dict[str, Dict[str, Any]]:
    """Write each run's cell.yaml and mark it queued (a run whose configuration changed starts afresh); return the
    previous run.json of each, to put back if the submission fails."""
    previous = {}
    for view in views:
        run = view.run
        previous[run.name] = read_json(run.dir / RUN_STATE)
        if run.dir.exists() and view.state and view.state.get('config_sha') != run.config_sha:
            shutil.rmtree(run.dir)
            previous[run.name] = {}
        run.dir.mkdir(parents=True, exist_ok=True)
        run.config_path.write_text(yaml.safe_dump(run.config, sort_keys=False))
        update_run_state(run.dir, status='queued', config_sha=run.config_sha, cell=run.cell,
                         seed=run.seed, queued=time.strftime('%Y-%m-%d %H:%M:%S'))
    return previous


def _restore(views: Sequence[RunView], previous: Dict[str, Dict[str, Any]]) -> None:
    for view in views:
        state_path = view.run.dir / RUN_STATE
        if previous.get(view.run.name):
            write_json_atomic(state_path, previous[view.run.name])
        else:
            state_path.unlink(missing_ok=True)
            view.run.config_path.unlink(missing_ok=True)
            if view.run.dir.is_dir() and not any(view.run.dir.iterdir()):
                view.run.dir.rmdir()


def _follow(grid: Grid, jobs: Dict[str, Any], kind: str) -> List[RunView]:
    """Progress bar over the runs until every submitted job has ended; the summary is rewritten as runs finish."""
    from tqdm import tqdm
    alive = alive_checker(jobs)
    views = collect(grid, alive)

    def finished(views: Sequence[RunView]) -> int:
        return sum(v.status in ('done', 'failed') for v in views)

    bar = tqdm(total=len(views), initial=finished(views), desc=f'grid {grid.name}', unit='run', file=sys.stderr,
               dynamic_ncols=True)
    seen = {v.run.name: v.status for v in views}
    try:
        while True:
            pending = [job for job in {id(j): j for j in jobs.values()}.values() if not job.done()]
            views = collect(grid, alive)
            changed = [v for v in views if seen.get(v.run.name) != v.status]
            for view in changed:
                seen[view.run.name] = view.status
                if view.status == 'done':
                    bar.write(f'{view.run.name}: done, best {view.monitor} {view.best:.4f} '
                              f'in {duration(view.metrics.get("wall_s"))}' if view.best is not None else
                              f'{view.run.name}: done', file=sys.stderr)
                elif view.status == 'failed':
                    bar.write(f'{view.run.name}: FAILED: {view.state.get("error")}  [{view.log_path}]', file=sys.stderr)
            if changed:
                bar.n = finished(views)
                bar.set_postfix(running=sum(v.status == 'running' for v in views),
                                failed=sum(v.status == 'failed' for v in views), refresh=False)
                bar.refresh()
                write_summary(grid, views)
            if not pending:
                return collect(grid, alive)
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        if kind == 'local':
            bar.write('interrupted: stopping the runs (they resume from last.ckpt on the next invocation)',
                      file=sys.stderr)
            cancel(list(jobs.values()))
            deadline = time.monotonic() + 60
            while any(not job.done() for job in jobs.values()) and time.monotonic() < deadline:
                time.sleep(0.5)
        else:
            bar.write(f'interrupted: the SLURM jobs keep running; follow them with '
                      f'`python -m spanet_pl.grid status {grid.log_dir}`', file=sys.stderr)
        write_summary(grid, collect(grid, alive))
        raise
    finally:
        bar.close()


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def run_grid(grid: Grid, options: Dict[str, Any], dry_run: bool = False, detach: bool = False,
             validate: bool = True) -> int:
    """Validate, then run every unfinished run of ``grid`` on the executor ``options`` name; return 0 when all
    runs are done, 1 when some failed or were cut (2 is left to the caller for bad input)."""
    views = collect(grid, job_alive)
    _check_clashes(grid, views)
    todo = [v for v in views if v.status != 'done']
    if validate and todo:
        validate_cells([c for c in grid.cells if any(v.run.cell == c.name for v in todo)])
    plan = make_plan(grid.name, [v.run for v in todo], options) if todo else None
    if dry_run:
        return _dry_run(grid, views, plan)

    done = len(views) - len(todo)
    if done:
        print(f'grid {grid.name}: {done} of {len(views)} runs already done, skipped', file=sys.stderr)
    if not todo:
        write_json_atomic(grid.log_dir / PLAN_FILE, grid_to_plan(grid))
        report_grid(grid, views)
        return 0
    if plan.kind == 'local' and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started in the background (nohup, &): SIGINT is ignored and local jobs would inherit that, but submitit
        # cancels a local job with SIGINT (and Lightning stops cleanly on it)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # the outermost folder this submission creates (logs/ itself on a first grid): removed if submitting fails
    created = next((p for p in reversed([grid.log_dir, *grid.log_dir.parents]) if not p.exists()), None)
    previous = _prepare_runs(todo)
    try:
        jobs = submit(plan, grid.log_dir / '.submitit', cwd=str(Path.cwd()))
    except BaseException as e:  # nothing half-submitted stays behind: the runs read as before
        _restore(todo, previous)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        if isinstance(e, Exception):
            detail = ' '.join(str(e).split())[-300:] or type(e).__name__
            raise GridError(f'submitting to {plan.kind} failed, nothing was submitted: {detail}') from e
        raise
    write_json_atomic(grid.log_dir / PLAN_FILE, grid_to_plan(grid))
    records = read_json(grid.log_dir / JOBS_FILE)
    records.update({name: job_record(plan.kind, job) for name, job in jobs.items()})
    write_json_atomic(grid.log_dir / JOBS_FILE, records)
    ids = sorted({str(job.job_id) for job in jobs.values()})
    print(f'grid {grid.name}: {len(todo)} run(s) submitted, {plan.describe()}; job id(s) {", ".join(ids)}',
          file=sys.stderr)
    if detach:
        print(json.dumps({'grid': grid.name, 'log_dir': str(grid.log_dir), 'executor': plan.kind, 'job_ids': ids}))
        print(f'follow: python -m spanet_pl.grid status {grid.log_dir}; when done: python -m spanet_pl.grid report '
              f'{grid.log_dir}', file=sys.stderr)
        write_summary(grid, collect(grid, alive_checker(jobs)))
        return 0
    previous_handler = signal.signal(signal.SIGTERM, _sigterm)  # `kill` stops the grid like Ctrl-C does
    try:
        views = _follow(grid, jobs, plan.kind)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    report_grid(grid, views)
    bad = [v.run.name for v in views if v.status != 'done']
    print(f'grid {grid.name}: {len(views) - len(bad)}/{len(views)} runs done'
          + (f', not done: {", ".join(bad)}' if bad else '') + f'; summary: {grid.log_dir / "summary.md"}',
          file=sys.stderr)
    return 1 if bad else 0
