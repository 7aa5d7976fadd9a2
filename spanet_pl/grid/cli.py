"""The command line: ``python -m spanet_pl.grid [run] GRID.yaml [options]``, ``status GRID``, ``report GRID``."""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..errors import UserInputError
from .execution import EXECUTORS, OPTIONS, executor_options
from .plots import read_curve
from .report import duration
from .runner import alive_checker, report_grid, run_grid
from .spec import Grid, GridError, load_grid
from .state import PLAN_FILE, STATUSES, collect, grid_from_plan, read_json

__all__ = ['main', 'build_parser']

COMMANDS = ('run', 'status', 'report')


def _add_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--name', help="the grid's name, i.e. its folder logs/<name>/ (default: the file's name)")
    parser.add_argument('--logs', default='logs', metavar='DIR', help='folder holding the grid folders (default logs)')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m spanet_pl.grid', description='Ablation grids of LightningCLI fit runs on submitit executors.',
        epilog='examples: python -m spanet_pl.grid experiments/v2_spectral_filter.yaml --seeds 3 | '
               'python -m spanet_pl.grid status experiments/v2_spectral_filter.yaml | '
               'python -m spanet_pl.grid report logs/v2_spectral_filter')
    commands = parser.add_subparsers(dest='command', required=True)
    run = commands.add_parser('run', help='validate every cell, then run the unfinished runs (the default command)')
    run.add_argument('grid', help='grid YAML file (experiments/NAME.yaml)')
    run.add_argument('--dry-run', action='store_true', help='validate, list the runs, commands and jobs; run nothing')
    run.add_argument('--detach', action='store_true', help='submit, print the job ids and return at once')
    run.add_argument('--executor', choices=EXECUTORS, help='where runs go (default: the file\'s executor, else local)')
    run.add_argument('--seeds', help='runs per cell: a count (3 → seeds 0, 1, 2) or a list (0,1,2)')
    run.add_argument('--set', dest='sets', action='append', default=[], metavar='KEY=VALUE',
                     help='override for every cell, VALUE in YAML (repeatable), e.g. --set data.init_args.root=/data')
    run.add_argument('--base', action='append', metavar='CONFIG',
                     help="replace the grid file's base config; repeat to merge several in order")
    _add_location(run)
    slurm = run.add_argument_group('executor options (also an executor: section in the grid file)')
    for key, (kind, help_) in OPTIONS.items():
        if kind is not list:
            slurm.add_argument(f'--{key.replace("_", "-")}', dest=key, type=kind if kind is not str else str,
                               help=help_)
    for command, help_ in (('status', 'what each run of a grid is doing'),
                           ('report', 'rewrite summary.{csv,md}, the plots and TensorBoard hparams')):
        sub = commands.add_parser(command, help=help_)
        sub.add_argument('grid', help='the grid YAML file or its log folder (logs/NAME)')
        _add_location(sub)
        if command == 'report':
            sub.add_argument('--plot-dir', metavar='DIR', help='also copy the PNG plots here as <grid>_<plot>.png')
    return parser


def _submitted_grid(target: str, name: Optional[str], logs: str) -> Grid:
    """The grid as last submitted (``<log dir>/grid.json``), from its YAML file or its log folder."""
    path = Path(target)
    log_dir = path if path.is_dir() else load_grid(path, name=name, log_root=logs).log_dir
    plan = read_json(log_dir / PLAN_FILE)
    if not plan:
        raise GridError(f'{log_dir} holds no submitted grid ({PLAN_FILE} missing): run the grid first')
    return grid_from_plan(plan, log_dir)


def _status(grid: Grid) -> int:
    views = collect(grid, alive_checker())
    counts = ', '.join(f'{n} {s}' for s in STATUSES if (n := sum(v.status == s for v in views)))
    print(f'grid {grid.name} ({grid.log_dir}): {len(views)} runs: {counts}')
    width = max(len(v.run.name) for v in views)
    monitor = next((v.monitor for v in views if v.monitor), 'metric')
    print(f'  {"run":<{width}}  {"status":<11}  {"best " + monitor:>14}  {"final":>7}  {"epoch":>5}  {"step":>6}  '
          f'{"wall":>7}  {"tries":>5}  job')
    for v in views:
        best = f'{v.best:.4f}' if v.best is not None else ''
        final = f'{v.final:.4f}' if v.final is not None else ''
        epoch, step = v.metrics.get('epoch', ''), v.metrics.get('step', '')
        if v.status == 'running':  # where it is now: the epoch Lightning last logged to TensorBoard
            steps, epochs = read_curve(v.run.dir, 'epoch')
            epoch, step = (int(epochs[-1]), steps[-1]) if steps else ('', '')
        print(f'  {v.run.name:<{width}}  {v.status:<11}  {best:>14}  {final:>7}  {epoch!s:>5}  {step!s:>6}  '
              f'{duration(v.metrics.get("wall_s")):>7}  {v.state.get("attempts", "")!s:>5}  {v.job.get("job_id", "")}'
              + (f'  {v.state.get("error")}' if v.status == 'failed' else ''))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ('-h', '--help'):
        argv.insert(0, 'run')  # `python -m spanet_pl.grid GRID.yaml` runs it
    args = build_parser().parse_args(argv)
    try:
        if args.command == 'status':
            return _status(_submitted_grid(args.grid, args.name, args.logs))
        if args.command == 'report':
            grid = _submitted_grid(args.grid, args.name, args.logs)
            report_grid(grid, collect(grid, alive_checker()), plot_dir=args.plot_dir)
            print((grid.log_dir / 'summary.md').read_text())
            return 0
        grid = load_grid(args.grid, base=args.base, name=args.name, sets=args.sets, seeds=args.seeds,
                         log_root=args.logs)
        cli_options = {key: getattr(args, key) for key in OPTIONS if hasattr(args, key)}
        options = executor_options(grid.executor, {'name': args.executor, **cli_options}, args.grid)
        return run_grid(grid, options, dry_run=args.dry_run, detach=args.detach)
    except UserInputError as e:
        print(f'spanet_pl.grid: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('spanet_pl.grid: interrupted; run the same command again to resume', file=sys.stderr)
        return 130
