"""The ablation grid runner: cells from a grid file, validation before anything runs, summary, skip on re-run,
resume, a failing cell, the shipped grids."""
import csv
import json
from pathlib import Path

import pytest
import yaml

from spanet_pl.grid import load_grid, main

from conftest import colour_image_tree

REPO = Path(__file__).resolve().parents[1]
CLASSES = ('blue', 'red')
FILTER = 'model.init_args.backbone_kwargs.spectral_filter'
LR = 'model.init_args.optimizer.init_args.lr'


@pytest.fixture
def image_tree(tmp_path):
    """A real ImageFolder tree whose two classes differ in colour: 8 training images (two batches of 4), 4 val."""
    return colour_image_tree(tmp_path / 'data', CLASSES, (4, 2))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Grids run from a scratch folder; their cells use one thread each (two cells share the two cores)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    return tmp_path


def write_base(tmp_path, root) -> Path:
    config = {
        'seed_everything': 0,
        'trainer': {'accelerator': 'cpu', 'devices': 1, 'max_epochs': 1, 'log_every_n_steps': 1,
                    'enable_model_summary': False},
        'model': {'class_path': 'spanet_pl.tasks.ClassificationModule',
                  'init_args': {'backbone': 'spanet_nano', 'warmup_epochs': 0,
                                'backbone_kwargs': {'radii': [2, 2, 1, 1]},
                                'optimizer': {'class_path': 'torch.optim.AdamW', 'init_args': {'lr': 2e-3}}}},
        'data': {'class_path': 'datamodules.ImageNetDataModule',
                 'init_args': {'root': str(root), 'batch_size': 4, 'num_workers': 0, 'img_size': 32,
                               'auto_augment': None, 're_prob': 0.0, 'mixup_alpha': 0.0, 'cutmix_alpha': 0.0,
                               'hflip': 0.0}},
    }
    path = tmp_path / 'base.yaml'
    path.write_text(yaml.safe_dump(config))
    return path


def write_grid(tmp_path, name='ablation', **spec) -> Path:
    path = tmp_path / f'{name}.yaml'
    path.write_text(yaml.safe_dump({'base': 'base.yaml', **spec}, sort_keys=False))
    return path


def nano_params() -> int:
    import timm
    return sum(p.numel() for p in timm.create_model('spanet_nano', num_classes=len(CLASSES)).parameters())


def read_summary(grid_dir: Path):
    with open(grid_dir / 'summary.csv') as fh:
        return {row['cell']: row for row in csv.DictReader(fh)}


def test_cells_from_a_grid_file(tmp_path, image_tree):
    write_base(tmp_path, image_tree)
    path = write_grid(tmp_path, overrides={'trainer.max_epochs': 3},
                      grid={FILTER: [True, False], LR: [1e-3, 3e-3]},
                      variants={'k5 / wide': {'model.init_args.backbone_kwargs.kernel_size': 5}, 'base': None})
    grid = load_grid(path, sets=['data.init_args.batch_size=2'], log_root=tmp_path / 'logs')
    names = [cell.name for cell in grid.cells]
    assert names == ['spectral_filter=true,lr=0.001', 'spectral_filter=true,lr=0.003',
                     'spectral_filter=false,lr=0.001', 'spectral_filter=false,lr=0.003', 'k5_wide', 'base']
    cell = grid.cells[2]
    assert cell.overrides == {FILTER: False, LR: 1e-3}
    init = cell.config['model']['init_args']
    # a key inside the backbone_kwargs dict argument is merged into it, the base's other kwargs stay
    assert init['backbone_kwargs'] == {'radii': [2, 2, 1, 1], 'spectral_filter': False}
    assert init['optimizer'] == {'class_path': 'torch.optim.AdamW', 'init_args': {'lr': 1e-3}}
    assert cell.config['trainer']['max_epochs'] == 3 and cell.config['data']['init_args']['batch_size'] == 2
    logger = cell.config['trainer']['logger']['init_args']
    assert logger['save_dir'] == str(tmp_path / 'logs' / 'ablation')
    assert (logger['name'], logger['version']) == (cell.name, '')
    assert grid.cells[4].config['model']['init_args']['backbone_kwargs']['kernel_size'] == 5
    assert len({c.config_sha for c in grid.cells}) == len(grid.cells)


@pytest.mark.parametrize('key, message', [
    ('trainer.max_epoch', r"trainer\.max_epoch"),                                  # not a Trainer argument
    ('model.init_args.backbone_kwargs.kernel_sizez', r"kernel_sizez"),            # not a backbone argument
    ('model.init_args.backbone_kwargs.lambdas', r"24 channels cannot be split"),  # a value the model rejects
])
def test_bad_cell_rejected_before_any_cell_runs(workdir, image_tree, capsys, key, message):
    import re
    write_base(workdir, image_tree)
    path = write_grid(workdir, grid={LR: [1e-3, 3e-3]}, variants={'oops': {key: [0.1] * 7}})
    assert main([str(path), '--max-parallel', '2']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('spanet_pl.grid: error: cell oops: '), err
    assert re.search(message, err[0]), err[0]
    assert not (workdir / 'logs').exists(), 'nothing may be written before every cell validated'


def test_dry_run_lists_cells_and_commands(workdir, image_tree, capsys):
    write_base(workdir, image_tree)
    path = write_grid(workdir, grid={FILTER: [True, False]})
    assert main([str(path), '--dry-run']) == 0
    out = capsys.readouterr().out
    for name in ('spectral_filter=true', 'spectral_filter=false'):
        assert f'python -m spanet_pl fit --config logs/ablation/{name}/cell.yaml' in out
    assert f'{nano_params():,} params' in out  # each cell's model was built
    assert not (workdir / 'logs').exists()


def test_grid_runs_records_a_failure_and_skips_finished_cells(workdir, image_tree, capsys):
    """A 2x2 grid plus a cell that diverges: the four finish, the fifth is recorded as failed with its log tail.
    With the broken cell dropped from the file, the next invocation runs nothing; an interrupted cell resumes."""
    write_base(workdir, image_tree)
    grid_2x2 = {FILTER: [True, False], LR: [1e-3, 3e-3]}
    path = write_grid(workdir, grid=grid_2x2, variants={'diverge': {LR: 1e30}})
    assert main([str(path), '--max-parallel', '2']) == 1

    grid_dir = workdir / 'logs' / 'ablation'
    rows = read_summary(grid_dir)
    assert len(rows) == 5
    done = [name for name, row in rows.items() if row['status'] == 'done']
    assert len(done) == 4 and rows['diverge']['status'] == 'failed'
    for name in done:
        cell = grid_dir / name
        assert (cell / 'config.yaml').is_file() and (cell / 'cell.yaml').is_file()
        assert (cell / 'checkpoints' / 'last.ckpt').is_file()
        assert rows[name]['monitor'] == 'val/acc1' and 0 <= float(rows[name]['best']) <= 1
        assert int(rows[name]['params']) == nano_params() and float(rows[name]['wall_s']) > 0
    assert yaml.safe_load((grid_dir / done[0] / 'config.yaml').read_text())['trainer']['logger']['init_args'][
        'version'] == ''  # the CLI saved its resolved config into the cell's own folder, no version_N level
    failed = json.loads((grid_dir / 'diverge' / 'grid_status.json').read_text())
    assert 'non-finite training loss' in failed['tail'] and failed['returncode'] == 2
    markdown = (grid_dir / 'summary.md').read_text()
    assert '## Failed cells' in markdown and 'non-finite training loss' in markdown
    assert markdown.count('| done |') == 4 and markdown.count('| failed |') == 1

    # one TensorBoard dashboard: every finished cell carries hparams and its best metric
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(grid_dir / done[0])).Reload()
    assert 'grid/best_val/acc1' in events.Tags()['scalars']
    assert '_hparams_/session_start_info' in events.PluginTagToContent('hparams')

    # the broken cell is dropped: nothing trains again, the summary lists the four finished cells
    checkpoints = {name: (grid_dir / name / 'checkpoints' / 'last.ckpt').stat().st_mtime_ns for name in done}
    path = write_grid(workdir, grid=grid_2x2)
    capsys.readouterr()
    assert main([str(path), '--max-parallel', '2']) == 0
    assert '4 of 4 cells already done, skipped' in capsys.readouterr().err
    assert {name: (grid_dir / name / 'checkpoints' / 'last.ckpt').stat().st_mtime_ns for name in done} == checkpoints
    rows = read_summary(grid_dir)
    assert len(rows) == 4 and all(row['status'] == 'done' for row in rows.values())

    # a cell whose grid process died mid-run resumes from its last.ckpt
    state_path = grid_dir / done[0] / 'grid_status.json'
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**state, 'status': 'running', 'pid': None}))
    assert main([str(path), '--dry-run']) == 0
    out = capsys.readouterr().out
    assert '[resume' in out
    assert f'--ckpt_path logs/ablation/{done[0]}/checkpoints/last.ckpt' in out


@pytest.fixture(scope='module')
def digits_cache(tmp_path_factory):
    return tmp_path_factory.mktemp('spanet_pl_data')


@pytest.mark.parametrize('grid_file', sorted(p.name for p in (REPO / 'experiments').glob('*.yaml')))
def test_shipped_grids_validate(grid_file, tmp_path, digits_cache, monkeypatch, capsys):
    """Every shipped grid builds every cell's model and data module on the quick-start data."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv('SPANET_PL_DATA', str(digits_cache))
    assert main([f'experiments/{grid_file}', '--dry-run', '--logs', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    grid = load_grid(REPO / 'experiments' / grid_file)
    assert len(grid.cells) >= 2 and out.count('python -m spanet_pl fit --config') == len(grid.cells)
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
        assert printed['trainer'][key] == value, key
    assert printed['model']['init_args']['backbone'] == 'spanet_nano'
