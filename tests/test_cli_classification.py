"""The classification main job through the real CLI: fit / validate / test / predict, resume, DDP, bad input."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from spanet_pl.__main__ import main

from conftest import cli_trainer_config, colour_image_tree

REPO = Path(__file__).resolve().parents[1]
CLASSES = ('blue', 'green', 'red')


@pytest.fixture
def image_tree(tmp_path):
    """A real ImageFolder tree whose classes differ in colour, so a nano model learns it in a few steps."""
    return colour_image_tree(tmp_path / 'data', CLASSES, (8, 4))


def write_config(tmp_path, root, **overrides) -> Path:
    config = {
        'seed_everything': 0,
        'trainer': cli_trainer_config(tmp_path / 'logs'),
        'model': {'class_path': 'spanet_pl.tasks.ClassificationModule',
                  'init_args': {'backbone': 'spanet_nano', 'warmup_epochs': 0.5,
                                'optimizer': {'class_path': 'torch.optim.AdamW', 'init_args': {'lr': 2e-3}}}},
        'data': {'class_path': 'datamodules.ImageNetDataModule',
                 'init_args': {'root': str(root), 'batch_size': 4, 'num_workers': 0, 'img_size': 32,
                               'auto_augment': None, 're_prob': 0.0, 'mixup_alpha': 0.0, 'cutmix_alpha': 0.0,
                               'hflip': 0.0}},
    }
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split('.')
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = tmp_path / 'config.yaml'
    path.write_text(yaml.safe_dump(config))
    return path


def run_main(args):
    """Run the CLI in-process; return the exit code (0 when it returns normally)."""
    try:
        main(args)
    except SystemExit as exit_:
        return exit_.code or 0
    return 0


@pytest.mark.slow
def test_fit_validate_test_predict(tmp_path, image_tree):
    config = write_config(tmp_path, image_tree)
    assert run_main(['fit', '--config', str(config)]) == 0
    run = tmp_path / 'logs' / 'run' / 'version_0'
    checkpoints = sorted(p.name for p in (run / 'checkpoints').iterdir())
    assert 'last.ckpt' in checkpoints and any(name.startswith('best-epoch') for name in checkpoints)
    assert (run / 'config.yaml').is_file() and list(run.glob('events.out.tfevents.*'))
    last = torch.load(run / 'checkpoints' / 'last.ckpt', weights_only=False)
    assert last['global_step'] == 2 * 6 and last['epoch'] == 1  # 24 images / batch 4, two epochs
    best = next(p for p in (run / 'checkpoints').iterdir() if p.name.startswith('best'))
    assert run_main(['validate', '--config', str(config), '--ckpt_path', str(best)]) == 0
    assert run_main(['test', '--config', str(config), '--ckpt_path', str(best)]) == 0
    out = tmp_path / 'predictions.csv'
    assert run_main(['predict', '--config', str(config), '--ckpt_path', str(best),
                     '--prediction_writer.output', str(out)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ['image', 'class1', 'prob1', 'class2', 'prob2', 'class3', 'prob3']
    assert len(rows) == 1 + 3 * 4
    assert all(row[1] in CLASSES and 0 <= float(row[2]) <= 1 for row in rows[1:])
    correct = sum(Path(row[0]).parent.name == row[1] for row in rows[1:])
    assert correct >= 8, f'only {correct}/12 validation images right after two epochs'


@pytest.mark.slow
def test_schedule_scales_lr_with_the_effective_batch(tmp_path, image_tree):
    config = write_config(tmp_path, image_tree, **{
        'model.init_args.base_batch_size': 2, 'model.init_args.warmup_epochs': 0,
        'model.init_args.min_lr': 0.0, 'trainer.max_epochs': 1, 'trainer.accumulate_grad_batches': 2})
    assert run_main(['fit', '--config', str(config)]) == 0
    run = tmp_path / 'logs' / 'run' / 'version_0'
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run)).Reload()
    lr_tags = [t for t in events.Tags()['scalars'] if t.startswith('lr-')]
    lrs = [e.value for e in events.Scalars(lr_tags[0])]
    # lr 2e-3 for batch 2, effective batch 4 x 2 accumulation = 8: the peak is 8e-3, then cosine decay
    assert lrs[0] == pytest.approx(8e-3, rel=1e-4)
    assert lrs == sorted(lrs, reverse=True)


CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / 'cli_configs').rglob('*.yaml'))
# the quick starts and one trainer file stay in `make test-fast`; every recipe is parsed by `make test`
FAST_CONFIGS = ('cli_configs/quickstart.yaml', 'cli_configs/segmentation/quickstart.yaml',
                'cli_configs/trainer/cpu_ddp_gloo.yaml')


@pytest.mark.parametrize('config', [pytest.param(c, marks=() if c in FAST_CONFIGS else pytest.mark.slow)
                                    for c in CONFIGS])
def test_every_config_parses(config, capsys):
    # trainer/*.yaml hold only trainer settings: they are meant to follow a recipe as a second --config
    base = ['--config', str(REPO / 'cli_configs' / 'quickstart.yaml')] if config.startswith('cli_configs/trainer/') else []
    assert run_main(['fit', *base, '--config', str(REPO / config), '--print_config']) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed['model']['class_path'].startswith('spanet_pl.tasks.')
    assert printed['data']['class_path'].startswith('datamodules.')


@pytest.mark.slow
def test_resume_after_kill(tmp_path, image_tree):
    config = write_config(tmp_path, image_tree, **{'trainer.max_epochs': 12, 'last_checkpoint.every_n_train_steps': 1})
    last = tmp_path / 'logs' / 'run' / 'version_0' / 'checkpoints' / 'last.ckpt'
    cmd = [sys.executable, '-m', 'spanet_pl', 'fit', '--config', str(config)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if last.is_file() and time.time() - last.stat().st_ctime > 0:
                try:
                    step = torch.load(last, weights_only=False)['global_step']
                except Exception:  # caught mid-write; look again
                    step = 0
                if step >= 9:  # mid-way through the second epoch
                    break
            time.sleep(0.2)
        assert proc.poll() is None, f'the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}'
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = torch.load(last, weights_only=False)['global_step']
    assert 0 < killed_at < 12 * 6
    result = subprocess.run(cmd + ['--ckpt_path', 'last'], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Restoring states from the checkpoint path' in result.stderr + result.stdout
    assert sorted(p.name for p in (tmp_path / 'logs' / 'run').iterdir()) == ['version_0']  # same run folder
    final = torch.load(last, weights_only=False)
    assert final['global_step'] == 12 * 6 and final['epoch'] == 11  # no epoch lost, none repeated
    assert final['optimizer_states'][0]['param_groups'][0]['lr'] == pytest.approx(1e-5)  # schedule ran to its end


@pytest.mark.slow
def test_resume_without_checkpoint_starts_fresh(tmp_path, image_tree):
    config = write_config(tmp_path, image_tree, **{'trainer.max_epochs': 1})
    assert run_main(['fit', '--config', str(config), '--ckpt_path', 'last']) == 0
    assert (tmp_path / 'logs' / 'run' / 'version_0' / 'checkpoints' / 'last.ckpt').is_file()


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    """The quick start under a 2-process DDP (gloo) run, shortened."""
    env = {**os.environ, 'SPANET_PL_DATA': str(tmp_path / 'data')}
    cmd = [sys.executable, '-m', 'spanet_pl', 'fit', '--config', str(REPO / 'cli_configs' / 'quickstart.yaml'),
           '--trainer.devices', '2', '--trainer.strategy', 'ddp', '--trainer.max_epochs', '1',
           '--trainer.limit_train_batches', '4', '--trainer.limit_val_batches', '2',
           '--trainer.enable_progress_bar', 'false', '--data.init_args.num_workers', '0',
           '--trainer.logger.init_args.save_dir', str(tmp_path / 'logs')]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'distributed_backend=gloo' in result.stderr + result.stdout
    ckpt = torch.load(tmp_path / 'logs' / 'quickstart' / 'version_0' / 'checkpoints' / 'last.ckpt', weights_only=False)
    assert ckpt['global_step'] == 4


# ---- bad input: one line on stderr, exit code 2, nothing written ------------------------------------------------

def expect_error(tmp_path, capsys, config, pattern, extra=()):
    code = run_main(['fit', '--config', str(config), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    import re
    assert re.search(pattern, err), err
    assert not (tmp_path / 'logs').exists(), 'a failed start must not write a log folder'
    return err


def test_missing_root(tmp_path, capsys):
    config = write_config(tmp_path, tmp_path / 'nowhere')
    err = expect_error(tmp_path, capsys, config, r'nowhere')
    assert len([line for line in err.splitlines() if line.startswith('spanet_pl: error:')]) == 1
    assert 'Traceback' not in err


def test_root_without_val(tmp_path, capsys, image_tree):
    import shutil
    shutil.rmtree(image_tree / 'val')
    expect_error(tmp_path, capsys, write_config(tmp_path, image_tree), r'no val/ folder')


def test_class_folders_differ(tmp_path, capsys, image_tree):
    (image_tree / 'val' / 'red').rename(image_tree / 'val' / 'purple')
    expect_error(tmp_path, capsys, write_config(tmp_path, image_tree), r'class folders differ.*(purple|red)')


def test_empty_class_folder(tmp_path, capsys, image_tree):
    for f in (image_tree / 'train' / 'green').iterdir():
        f.unlink()
    expect_error(tmp_path, capsys, write_config(tmp_path, image_tree), r'green')


def test_unknown_model_name(tmp_path, capsys, image_tree):
    config = write_config(tmp_path, image_tree, **{'model.init_args.backbone': 'spanet_tiny'})
    expect_error(tmp_path, capsys, config, r"unknown SPANet variant 'spanet_tiny'.*spanetv2_s18_pure")


def test_unknown_yaml_key(tmp_path, capsys, image_tree):
    config = write_config(tmp_path, image_tree, **{'model.init_args.drop_pth_rate': 0.1})
    code = run_main(['fit', '--config', str(config)])
    assert code == 2 and 'drop_pth_rate' in capsys.readouterr().err
    assert not (tmp_path / 'logs').exists()


@pytest.mark.slow
def test_non_finite_loss_names_the_step(tmp_path, capsys, image_tree):
    config = write_config(tmp_path, image_tree, **{'model.init_args.optimizer.init_args.lr': 1e30,
                                                   'model.init_args.warmup_epochs': 0})
    assert run_main(['fit', '--config', str(config)]) == 2
    err = capsys.readouterr().err
    assert 'non-finite training loss' in err and 'at step' in err


@pytest.mark.slow
def test_corrupt_image_is_skipped(tmp_path, capsys, image_tree, caplog):
    bad = image_tree / 'train' / 'red' / 'broken.png'
    bad.write_bytes(b'not an image at all')
    config = write_config(tmp_path, image_tree, **{'trainer.max_epochs': 1})
    assert run_main(['fit', '--config', str(config)]) == 0
    assert 'broken.png' in caplog.text


@pytest.mark.slow
def test_ema_is_evaluated_alongside(tmp_path, image_tree):
    config = write_config(tmp_path, image_tree, **{'model.init_args.ema_decay': 0.5, 'trainer.max_epochs': 1})
    assert run_main(['fit', '--config', str(config)]) == 0
    run = tmp_path / 'logs' / 'run' / 'version_0'
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    scalars = EventAccumulator(str(run)).Reload().Tags()['scalars']
    assert 'val/acc1' in scalars and 'val/ema_acc1' in scalars
    state = torch.load(run / 'checkpoints' / 'last.ckpt', weights_only=False)['state_dict']
    ema = {k[len('ema.module.'):]: v for k, v in state.items() if k.startswith('ema.module.')}
    live = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    assert ema.keys() == live.keys()
    assert any(not torch.equal(ema[k], live[k]) for k in live)  # an average, not a copy
