"""Ablation grids without training: grid files → seeded runs, bad input as one line before anything runs, executor
options and SLURM resources, loggers kept, Welch's CI, the report from run folders, the shipped grids."""
import csv
import math
import os
import re
from pathlib import Path

import pytest
import yaml

from spanet_pl.callbacks.metrics import write_json_atomic
from spanet_pl.grid import cell_stats, collect, executor_options, load_grid, main, make_plan, report_grid
from spanet_pl.grid import welch_difference

from conftest import colour_image_tree

REPO = Path(__file__).resolve().parents[1]
CLASSES = ('blue', 'red')
FILTER = 'model.init_args.backbone_kwargs.spectral_filter'
LR = 'model.init_args.optimizer.init_args.lr'


@pytest.fixture
def image_tree(tmp_path):
    """A real ImageFolder tree whose two classes differ in colour: 8 training images, 4 val."""
    return colour_image_tree(tmp_path / 'data', CLASSES, (4, 2))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_base(folder, root, **trainer) -> Path:
    config = {
        'seed_everything': 0,
        'trainer': {'accelerator': 'cpu', 'devices': 1, 'max_epochs': 1, 'log_every_n_steps': 1,
                    'enable_model_summary': False, **trainer},
        'model': {'class_path': 'spanet_pl.tasks.ClassificationModule',
                  'init_args': {'backbone': 'spanet_nano', 'warmup_epochs': 0,
                                'backbone_kwargs': {'radii': [2, 2, 1, 1]},
                                'optimizer': {'class_path': 'torch.optim.AdamW', 'init_args': {'lr': 2e-3}}}},
        'data': {'class_path': 'datamodules.ImageNetDataModule',
                 'init_args': {'root': str(root), 'batch_size': 4, 'num_workers': 0, 'img_size': 32,
                               'auto_augment': None, 're_prob': 0.0, 'mixup_alpha': 0.0, 'cutmix_alpha': 0.0,
                               'hflip': 0.0}},
    }
    path = Path(folder) / 'base.yaml'
    path.write_text(yaml.safe_dump(config))
    return path


def write_grid(folder, name='ablation', **spec) -> Path:
    path = Path(folder) / f'{name}.yaml'
    path.write_text(yaml.safe_dump({'base': 'base.yaml', **spec}, sort_keys=False))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('spanet_pl.grid: error: '), err
    return err[0]


def test_cells_and_seeded_runs_from_a_grid_file(tmp_path, image_tree):
    write_base(tmp_path, image_tree)
    path = write_grid(tmp_path, overrides={'trainer.max_epochs': 3}, grid={FILTER: [True, False], LR: [1e-3, 3e-3]},
                      variants={'k5 / wide': {'model.init_args.backbone_kwargs.kernel_size': 5}, 'base': None},
                      seeds=[0, 7], reference='base')
    grid = load_grid(path, sets=['data.init_args.batch_size=2'], log_root=tmp_path / 'logs')
    assert [c.name for c in grid.cells] == ['spectral_filter=true,lr=0.001', 'spectral_filter=true,lr=0.003',
                                            'spectral_filter=false,lr=0.001', 'spectral_filter=false,lr=0.003',
                                            'k5_wide', 'base']
    assert grid.reference == 'base' and grid.seeds == [0, 7] and len(grid.runs) == 12
    assert [r.name for r in grid.runs[:2]] == ['spectral_filter=true,lr=0.001/seed=0',
                                               'spectral_filter=true,lr=0.003/seed=0']  # seed-major
    run = grid.cells[2].runs[1]
    assert grid.cells[2].overrides == {FILTER: False, LR: 1e-3}
    config = run.config
    assert config['seed_everything'] == 7
    # a key inside the backbone_kwargs dict argument is merged into it, the base's other kwargs stay
    assert config['model']['init_args']['backbone_kwargs'] == {'radii': [2, 2, 1, 1], 'spectral_filter': False}
    assert config['trainer']['max_epochs'] == 3 and config['data']['init_args']['batch_size'] == 2
    run_dir = tmp_path / 'logs' / 'ablation' / 'spectral_filter=false,lr=0.001' / 'seed=7'
    assert run.dir == run_dir and config['trainer']['default_root_dir'] == str(run_dir)
    assert config['checkpoint']['dirpath'] == config['last_checkpoint']['dirpath'] == str(run_dir / 'checkpoints')
    assert config['metrics_json']['dirpath'] == str(run_dir)
    logger = config['trainer']['logger']  # no logger in the base: TensorBoard straight into the run's folder
    assert logger['init_args'] == {'default_hp_metric': False, 'save_dir': str(tmp_path / 'logs' / 'ablation'),
                                   'name': 'spectral_filter=false,lr=0.001', 'version': 'seed=7'}
    assert len({r.config_sha for r in grid.runs}) == 12
    assert load_grid(path, seeds='3').seeds == [0, 1, 2] and load_grid(path, seeds='0,5').seeds == [0, 5]
    assert load_grid(write_grid(tmp_path, 'plain', grid={LR: [1e-3]})).seeds == [0]  # the base's seed_everything


def test_loggers_are_kept_with_the_runs_name(tmp_path, image_tree):
    base = write_base(tmp_path, image_tree, logger=[
        {'class_path': 'lightning.pytorch.loggers.CSVLogger', 'init_args': {'save_dir': 'elsewhere'}},
        {'class_path': 'lightning.pytorch.loggers.WandbLogger', 'init_args': {'project': 'spanet', 'offline': True}},
        {'class_path': 'lightning.pytorch.loggers.MLFlowLogger', 'init_args': {'tracking_uri': 'file:./ml'}}])
    grid = load_grid(write_grid(tmp_path, grid={LR: [1e-3, 3e-3]}, seeds=2), base=str(base), log_root='logs')
    run = grid.cells[1].runs[1]
    csv_logger, wandb, mlflow = (item['init_args'] for item in run.config['trainer']['logger'])
    assert csv_logger == {'save_dir': 'logs/ablation', 'name': 'lr=0.003', 'version': 'seed=1'}
    assert (wandb['project'], wandb['offline'], wandb['name'], wandb['group']) == ('spanet', True, 'lr=0.003/seed=1',
                                                                                 'ablation')
    assert wandb['version'] == load_grid(grid.path, base=str(base), log_root='logs').cells[1].runs[1].config[
        'trainer']['logger'][1]['init_args']['version']  # stable: a requeued run continues the same W&B run
    assert mlflow == {'tracking_uri': 'file:./ml', 'experiment_name': 'ablation', 'run_name': 'lr=0.003/seed=1'}


@pytest.mark.parametrize('spec, message', [
    ({'grid': {LR: [1e-3]}, 'seeds': 0}, r'seeds must be a count >= 1'),
    ({'grid': {LR: [1e-3]}, 'seeds': [1, 1]}, r'seeds \[1, 1\] repeat a seed'),
    ({'grid': {LR: [1e-3]}, 'reference': 'nope'}, r"reference 'nope' is not one of its cells: lr=0.001"),
    ({'grid': {LR: 1e-3}}, r'grid key .*lr needs a non-empty list'),
    ({'grid': {LR: [1e-3]}, 'sedes': 3}, r'unknown top-level key\(s\) sedes'),
    ({'grid': {LR: [1e-3]}, 'executor': {'name': 'pbs'}}, r"executor 'pbs' is not one of local, slurm"),
    ({'grid': {LR: [1e-3]}, 'executor': {'gpus': 8}}, r"unknown executor option 'gpus'"),
    ({'grid': {LR: [1e-3]}, 'executor': {'name': 'slurm', 'nodes': 'two'}}, r"executor: nodes must be a positive int"),
    ({'grid': {LR: [1e-3]}, 'executor': {'time': '1 day'}}, r"time '1 day' must be minutes, HH:MM:SS"),
])
def test_bad_grid_files_fail_in_one_line(workdir, image_tree, capsys, spec, message):
    write_base(workdir, image_tree)
    path = write_grid(workdir, **spec)
    assert main([str(path), '--dry-run']) == 2
    line = one_line_error(capsys)
    assert re.search(message, line), line
    assert str(path) in line or 'seeds' in message
    assert not (workdir / 'logs').exists()


@pytest.mark.parametrize('key, message', [
    ('trainer.max_epoch', r"trainer\.max_epoch"),                                  # not a Trainer argument
    ('model.init_args.backbone_kwargs.kernel_sizez', r"kernel_sizez"),            # not a backbone argument
    ('model.init_args.backbone_kwargs.lambdas', r"24 channels cannot be split"),  # a value the model rejects
])
def test_bad_cell_rejected_before_any_run_starts(workdir, image_tree, capsys, key, message):
    write_base(workdir, image_tree)
    path = write_grid(workdir, grid={LR: [1e-3, 3e-3]}, variants={'oops': {key: [0.1] * 7}}, seeds=2)
    assert main([str(path), '--max-parallel', '2']) == 2
    line = one_line_error(capsys)
    assert line.startswith('spanet_pl.grid: error: cell oops: ') and re.search(message, line), line
    assert not (workdir / 'logs').exists(), 'nothing may be written before every cell validated'


def test_dry_run_lists_runs_commands_and_jobs(workdir, image_tree, capsys):
    write_base(workdir, image_tree)
    path = write_grid(workdir, grid={FILTER: [True, False]}, seeds=2)
    assert main([str(path), '--dry-run', '--max-parallel', '2']) == 0
    out = capsys.readouterr().out
    assert 'local: 2 job(s) at once (CPU; CPU)' in out and 'reference cell spectral_filter=true' in out
    for cell in ('spectral_filter=true', 'spectral_filter=false'):
        for seed in (0, 1):
            command = f'python -m spanet_pl fit --config logs/ablation/{cell}/seed={seed}/cell.yaml'
            assert f'seed={seed} [pending]  {command}' in out
    import timm
    params = sum(p.numel() for p in timm.create_model('spanet_nano', num_classes=2).parameters())
    assert f'{params:,} params' in out  # each cell's model was built
    assert not (workdir / 'logs').exists()


def test_slurm_resources_follow_the_trainer_config(tmp_path, image_tree):
    base = write_base(tmp_path, image_tree, accelerator='gpu', devices=8, num_nodes=2, strategy='ddp')
    grid = load_grid(write_grid(tmp_path, grid={LR: [1e-3, 3e-3]}, seeds=3), base=str(base))
    options = executor_options({'name': 'slurm', 'partition': 'gpu', 'time': '2-00:00:00'},
                               {'mem_gb': 480, 'cpus_per_task': 10, 'array_parallelism': 4, 'account': None}, 'x')
    with pytest.raises(ValueError, match=r'^--max-parallel: max_parallel must be a positive int, got 0$'):
        executor_options({}, {'max_parallel': 0}, 'x')
    plan = make_plan(grid.name, grid.runs, options)
    assert len(plan.jobs) == 6 and all(len(runs) == 1 for runs in plan.jobs)  # one array task per run
    assert plan.parameters == {'job_name': 'grid_ablation', 'time': 2880, 'nodes': 2, 'ntasks_per_node': 8,
                               'gpus_per_node': 8, 'cpus_per_task': 10, 'mem': '480GB', 'partition': 'gpu',
                               'array_parallelism': 4, 'signal_delay_s': 120}
    from submitit.slurm.slurm import _make_sbatch_string  # what submitit will hand to sbatch
    sbatch = _make_sbatch_string(command='python -m x', folder=tmp_path / '%j', map_count=6, **plan.parameters)
    for flag in ('--array=0-5%4', '--nodes=2', '--ntasks-per-node=8', '--gpus-per-node=8', '--mem=480GB',
                 '--time=2880', '--partition=gpu', '--signal=USR2@120'):
        assert f'#SBATCH {flag}' in sbatch
    with pytest.raises(ValueError, match=r'trainer.devices is 8 but --gpus-per-node is 4'):
        make_plan(grid.name, grid.runs, {**options, 'gpus_per_node': 4})
    with pytest.raises(ValueError, match=r'trainer.num_nodes is 2 but --nodes is 1'):
        make_plan(grid.name, grid.runs, {**options, 'nodes': 1})


def test_local_jobs_share_out_gpus_and_cores(tmp_path, image_tree, monkeypatch):
    """On a GPU machine one local job per GPU (or per group of trainer.devices GPUs); on a CPU machine N jobs
    share the cores. (The CUDA_VISIBLE_DEVICES each job gets is submitit's, from these lists.)"""
    import torch
    grid = load_grid(write_grid(tmp_path, grid={LR: [1e-3, 3e-3]}, seeds=3),
                     base=str(write_base(tmp_path, image_tree, accelerator='gpu', devices=1)))
    local = executor_options({}, {}, 'x')
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
    plan = make_plan(grid.name, grid.runs, local)
    assert plan.gpus == [[0], [1], [2], [3]] and [len(runs) for runs in plan.jobs] == [2, 2, 1, 1]
    assert plan.jobs[0] == [grid.runs[0], grid.runs[4]] and plan.threads is None  # dealt out in seed-major order
    assert make_plan(grid.name, grid.runs, {**local, 'max_parallel': 2}).gpus == [[0], [1]]
    grid = load_grid(grid.path, base=str(write_base(tmp_path, image_tree, accelerator='gpu', devices=2)))
    assert make_plan(grid.name, grid.runs, local).gpus == [[0, 1], [2, 3]]
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)
    monkeypatch.setattr('os.cpu_count', lambda: 8)
    grid = load_grid(grid.path, base=str(write_base(tmp_path, image_tree)))
    plan = make_plan(grid.name, grid.runs, {**local, 'max_parallel': 2})
    assert plan.gpus == [[], []] and plan.threads == 4 and plan.parameters['timeout_min'] >= 60 * 24 * 365


def test_failed_submission_leaves_nothing_behind(workdir, image_tree, capsys, monkeypatch):
    import fake_slurm
    fake_slurm.install(workdir / 'bin', workdir / 'slurm')
    monkeypatch.setenv('PATH', f'{workdir / "bin"}:{os.environ["PATH"]}')
    monkeypatch.setenv('FAKE_SLURM_DIR', str(workdir / 'slurm'))
    monkeypatch.setenv('FAKE_SLURM_FAIL', 'Invalid account or account/partition combination specified')
    write_base(workdir, image_tree)
    path = write_grid(workdir, grid={LR: [1e-3, 3e-3]}, executor={'name': 'slurm', 'account': 'nope'})
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # sbatch's own message (passed through), then ours
    assert len(err) == 2 and err[0].startswith('sbatch: error: Invalid account'), err
    assert err[1].startswith('spanet_pl.grid: error: submitting to slurm failed, nothing was submitted: sbatch: '
                             'error: Invalid account'), err
    assert not (workdir / 'logs').exists()


def test_welch_difference_matches_the_formula():
    a, b = [0.91, 0.93, 0.92, 0.95], [0.90, 0.89, 0.92]
    diff = welch_difference(a, b)
    from scipy import stats
    va, vb = stats.tvar(a) / len(a), stats.tvar(b) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch–Satterthwaite
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    mean = sum(a) / len(a) - sum(b) / len(b)
    assert diff.mean == pytest.approx(mean)
    assert (diff.low, diff.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert 0 < diff.p_value < 1
    assert welch_difference([0.9], [0.8, 0.85]).low is None  # one run: no interval
    assert welch_difference([0.9, 0.9], [0.9, 0.9]).text() == '+0.0000 (CI n/a)'  # no variance: no interval


def test_run_status_from_its_files(tmp_path, image_tree):
    """What a run's folder and its job's liveness say: the summary and a second runner both rely on this."""
    write_base(tmp_path, image_tree)
    grid = load_grid(write_grid(tmp_path, grid={LR: [1e-3]}, seeds=6), log_root=tmp_path / 'logs')
    states = [{'status': 'queued'}, {'status': 'running', 'attempts': 1}, {'status': 'interrupted', 'attempts': 1},
              {'status': 'done', 'attempts': 1}, {'status': 'done', 'attempts': 1}, {'status': 'failed'}]
    for run, extra in zip(grid.runs, states):
        sha = run.config_sha if run.seed != 4 else 'another-config'
        write_json_atomic(run.dir / 'run.json', {**extra, 'config_sha': sha})
    write_json_atomic(grid.runs[3].dir / 'metrics.json', {'status': 'finished'})
    write_json_atomic(grid.log_dir / 'jobs.json', {run.name: {'executor': 'local', 'job_id': '1'} for run in grid.runs})
    dead = [v.status for v in collect(grid, alive=lambda record: False)]
    assert dead == ['pending', 'interrupted', 'interrupted', 'done', 'done', 'failed']
    alive = [v.status for v in collect(grid, alive=lambda record: True)]
    assert alive == ['queued', 'running', 'queued', 'done', 'done', 'failed']  # interrupted + live job: requeued
    assert [v.stale for v in collect(grid)] == [False, False, False, False, True, False]


def fake_run(run, status, best=None, steps=(), seed_shift=0.0):
    """A run folder as a finished (or failed) job leaves it: run.json, metrics.json, TensorBoard scalars."""
    run.dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run.dir / 'run.json', {'status': status, 'config_sha': run.config_sha, 'attempts': 1,
                                             'error': 'FloatingPointError: non-finite loss' if status == 'failed'
                                             else None})
    (run.dir / 'run.log').write_text('epoch 0\nspanet_pl: error: non-finite training loss\n')
    if best is None:
        return
    write_json_atomic(run.dir / 'metrics.json', {
        'status': 'finished', 'monitor': 'val/acc1', 'best': {'value': best, 'epoch': 3, 'step': 40},
        'last': {'value': best - 0.01, 'epoch': 4, 'step': 50}, 'wall_s': 61.0, 'params': 1000, 'macs': 2_500_000})
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(log_dir=str(run.dir)) as writer:
        for step in steps:
            writer.add_scalar('val/acc1', best * step / steps[-1] + seed_shift, step)


def test_report_from_run_folders(tmp_path, image_tree):
    """Statistics, tables, plots and hparams from what jobs leave behind; a failed run counts but is not averaged."""
    write_base(tmp_path, image_tree)
    grid = load_grid(write_grid(tmp_path, grid={FILTER: [True, False]}, seeds=3), log_root=tmp_path / 'logs')
    ref, other = grid.cells
    for i, (run, value) in enumerate(zip(ref.runs, (0.95, 0.96, 0.97))):
        fake_run(run, 'done', value, steps=(10, 20, 30), seed_shift=i * 0.001)
    fake_run(other.runs[0], 'done', 0.91, steps=(10, 20, 30))
    fake_run(other.runs[1], 'done', 0.93, steps=(10, 20, 30))
    fake_run(other.runs[2], 'failed')
    views = collect(grid)
    assert [v.status for v in views] == ['done', 'done', 'done', 'done', 'done', 'failed']
    stats = cell_stats(views, [c.name for c in grid.cells], grid.reference)
    assert (stats[other.name].n, stats[other.name].failed) == (2, 1)
    assert stats[other.name].best.mean == pytest.approx(0.92)
    assert stats[other.name].difference.mean == pytest.approx(0.92 - 0.96)
    assert stats[ref.name].best.std == pytest.approx(0.01) and stats[ref.name].difference is None

    report_grid(grid, views)
    with open(grid.log_dir / 'summary.csv') as fh:
        rows = {row['cell']: row for row in csv.DictReader(fh)}
    assert rows[other.name]['n'] == '2' and rows[other.name]['failed'] == '1'
    assert float(rows[other.name]['diff_low']) < -0.04 < float(rows[other.name]['diff_high'])
    with open(grid.log_dir / 'runs.csv') as fh:
        assert len(list(csv.DictReader(fh))) == 6
    markdown = (grid.log_dir / 'summary.md').read_text()
    assert '| spectral_filter=true (reference) | 3 | 0 | 0.9600 ± 0.0100 | 0.9500 ± 0.0100 |' in markdown
    assert '| spectral_filter=false | 2 | 1 | 0.9200 ± 0.0141 | 0.9100 ± 0.0141 | -0.0400 [' in markdown
    assert '## Failed runs' in markdown and 'non-finite training loss' in markdown
    assert '![best](best.png)' in markdown and '![curves](curves.png)' in markdown
    for png in ('best.png', 'curves.png'):
        assert (grid.log_dir / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(ref.runs[0].dir)).Reload()
    assert 'grid/best_val/acc1' in events.Tags()['scalars']
    assert '_hparams_/session_start_info' in events.PluginTagToContent('hparams')


@pytest.fixture(scope='module')
def digits_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / 'digits_cache'  # shared with test_grid_e2e: written once


@pytest.mark.parametrize('grid_file', sorted(p.name for p in (REPO / 'experiments').glob('*.yaml')))
def test_shipped_grids_validate(grid_file, tmp_path, digits_cache, monkeypatch, capsys):
    """Every shipped grid builds every cell's model and data module on the quick-start data."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv('SPANET_PL_DATA', str(digits_cache))
    assert main([f'experiments/{grid_file}', '--dry-run', '--logs', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    grid = load_grid(REPO / 'experiments' / grid_file)
    assert len(grid.cells) >= 2 and out.count('python -m spanet_pl fit --config') == len(grid.runs)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('trainer', sorted(p.name for p in (REPO / 'cli_configs' / 'trainer').glob('*.yaml')))
def test_trainer_configs_merge_with_a_recipe(trainer, capsys):
    from spanet_pl.__main__ import main as cli_main
    try:
        cli_main(['fit', '--config', str(REPO / 'cli_configs' / 'quickstart.yaml'),
                  '--config', str(REPO / 'cli_configs' / 'trainer' / trainer), '--print_config'])
    except SystemExit as exit_:
        assert not exit_.code
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = yaml.safe_load((REPO / 'cli_configs' / 'trainer' / trainer).read_text())['trainer']
    for key, value in expected.items():
        assert _subset(value, printed['trainer'][key]), key  # the printed config adds every default (callbacks')
    assert printed['model']['init_args']['backbone'] == 'spanet_nano'


def _subset(expected, actual) -> bool:
    """Whether ``actual`` holds ``expected``: dicts key by key, lists item by item, anything else equal."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and _subset(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(map(_subset, expected, actual))
    return expected == actual
