"""Ablation grids: ``python -m spanet_pl.grid experiments/NAME.yaml`` (see ``experiments/README.md``).

A grid file names a base LightningCLI config, overrides shared by every cell, a Cartesian product of dotted config
keys plus named variants (the cells), seeds (each cell runs once per seed) and a reference cell. Every run is an
ordinary ``python -m spanet_pl fit`` in ``logs/<grid>/<cell>/seed=<seed>/``, run by a submitit executor: local
processes, or one SLURM job array per grid with requeue on preemption. The summary reports n, mean ± std and each
cell's difference to the reference with a Welch's t confidence interval, from every fit's ``metrics.json``.

Modules, in the order data flows: ``spec`` (grid files → runs) with ``runconfig`` (a run's own config),
``validate`` (every cell through the CLI's parser), ``execution`` (submitit executors) and ``job`` (what a job
runs), ``state`` (what run folders say), ``stats`` and ``report`` / ``plots``, ``runner`` (one invocation), ``cli``
(the command line).
"""
from .cli import main
from .execution import executor_options, make_plan
from .runner import report_grid, run_grid
from .spec import Cell, Grid, GridError, Run, load_grid
from .state import collect
from .stats import cell_stats, welch_difference
from .validate import validate_cells

__all__ = ['Grid', 'Cell', 'Run', 'GridError', 'load_grid', 'validate_cells', 'executor_options', 'make_plan',
           'run_grid', 'report_grid', 'collect', 'cell_stats', 'welch_difference', 'main']
