"""Grids that train, on the digits, through real submitit executors: the local executor (2 cells x 2 seeds, a grid
interrupted mid-way and run again, a second runner refused) and SLURM job arrays through stand-in sbatch / srun /
sacct / scancel / scontrol executables (array and resources as submitted, a preemption signal that requeues a run
which then resumes from its last.ckpt, a failing run, status and report)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import fake_slurm
from spanet_pl.grid import main

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FILTER = 'model.init_args.backbone_kwargs.spectral_filter'
LR = 'model.init_args.optimizer.init_args.lr'


@pytest.fixture
def workdir(tmp_path, tmp_path_factory, monkeypatch):
    """Grids run from a scratch folder on the digits; jobs import the tests' Gate callback and use one thread each
    (jobs and the test share two cores: more threads only spin)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    monkeypatch.setenv('SPANET_PL_DATA', str(tmp_path_factory.getbasetemp() / 'digits_cache'))
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(TESTS), os.environ.get('PYTHONPATH', '')]))
    (tmp_path / 'gate').mkdir()
    return tmp_path


def tiny_grid(folder: Path, gate_match: str, **spec) -> Path:
    """The quick start cut to 3 steps of 16 digits per epoch, last.ckpt every step, runs matching ``gate_match``
    held at step 2 until the test releases them."""
    overrides = {
        'model.init_args.backbone': 'spanet_nano', 'trainer.max_epochs': 2, 'trainer.limit_train_batches': 3,
        'trainer.limit_val_batches': 1, 'trainer.log_every_n_steps': 1, 'trainer.enable_model_summary': False,
        'data.init_args.batch_size': 16, 'data.init_args.num_workers': 0, 'last_checkpoint.every_n_train_steps': 1,
        'trainer.callbacks': [{'class_path': 'grid_gate.Gate',
                               'init_args': {'folder': str(folder / 'gate'), 'match': gate_match}}],
    }
    path = folder / 'grid.yaml'
    path.write_text(yaml.safe_dump({'name': 'tiny', 'base': str(REPO / 'cli_configs' / 'quickstart.yaml'),
                                    'overrides': overrides, **spec}, sort_keys=False))
    return path


def wait_for(predicate, what: str, timeout: float = 300.0, process=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            raise AssertionError(f'grid exited ({process.returncode}) while waiting for {what}: '
                                 f'{process.stderr.read()[-3000:]}')
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.5)


def state(run_dir: Path, name: str = 'run.json') -> dict:
    path = run_dir / name
    return json.loads(path.read_text()) if path.is_file() else {}


@pytest.mark.slow
def test_local_grid_interrupted_and_run_again(workdir, capsys):
    """2 cells x 2 seeds in one local job (runs in seed-major order). Seed 0 finishes; the first seed-1 run is held
    mid-way; a second runner is refused; Ctrl-C stops the grid; the next invocation skips the finished runs, resumes
    the cut one from its last.ckpt and starts the one that never ran."""
    path = tiny_grid(workdir, 'seed=1', grid={FILTER: [True, False]}, seeds=2)
    grid_dir = workdir / 'logs' / 'tiny'
    runs = {f'{cell}/seed={seed}': grid_dir / cell / f'seed={seed}'
            for cell in ('spectral_filter=true', 'spectral_filter=false') for seed in (0, 1)}
    cut, unstarted = 'spectral_filter=true/seed=1', 'spectral_filter=false/seed=1'
    first = subprocess.Popen([sys.executable, '-m', 'spanet_pl.grid', str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any((workdir / 'gate').glob('*.seed=1.waiting')), 'a seed=1 run mid-way', process=first)
        assert main([str(path)]) == 2
        err = capsys.readouterr().err
        assert 'spanet_pl.grid: error: grid tiny is already running: 2 run(s) in local job(s)' in err, err
        first.send_signal(signal.SIGINT)
        _, first_err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, first_err[-3000:]
    for name, run_dir in runs.items():
        if name.endswith('seed=0'):
            assert state(run_dir)['status'] == 'done' and state(run_dir, 'metrics.json')['status'] == 'finished'
    assert state(runs[cut])['status'] in ('running', 'interrupted')  # SIGINT, or SIGKILL a second later
    assert (runs[cut] / 'checkpoints' / 'last.ckpt').is_file()
    assert state(runs[unstarted])['status'] == 'queued' and not (runs[unstarted] / 'metrics.json').exists()
    finished = {name: (runs[name] / 'metrics.json').stat().st_mtime_ns for name in runs if name.endswith('seed=0')}

    (workdir / 'gate' / 'release').touch()
    assert main([str(path)]) == 0
    assert '2 of 4 runs already done, skipped' in capsys.readouterr().err
    assert {name: (runs[name] / 'metrics.json').stat().st_mtime_ns for name in finished} == finished
    for name, run_dir in runs.items():
        metrics = state(run_dir, 'metrics.json')
        assert metrics['status'] == 'finished' and metrics['step'] == 6 and metrics['last']['epoch'] == 1
    assert state(runs[cut])['attempts'] == 2
    assert state(runs[cut])['resumed_from'] == str(runs[cut] / 'checkpoints' / 'last.ckpt')
    assert 'Restored all states from the checkpoint' in (runs[cut] / 'run.log').read_text()
    assert state(runs[unstarted])['attempts'] == 1 and state(runs[unstarted])['resumed_from'] is None
    with open(grid_dir / 'summary.csv') as fh:
        rows = list(csv.DictReader(fh))
    assert [(r['cell'], r['n'], r['failed']) for r in rows] == [('spectral_filter=true', '2', '0'),
                                                              ('spectral_filter=false', '2', '0')]
    assert rows[1]['diff_best'] != '' and rows[0]['monitor'] == 'val/acc1'
    assert (grid_dir / 'best.png').is_file() and (grid_dir / 'curves.png').is_file()


@pytest.fixture
def slurm(workdir, monkeypatch):
    fake_slurm.install(workdir / 'bin', workdir / 'slurm')
    monkeypatch.setenv('PATH', os.pathsep.join([str(workdir / 'bin'), os.environ['PATH']]))
    monkeypatch.setenv('FAKE_SLURM_DIR', str(workdir / 'slurm'))
    return workdir / 'slurm'


def submissions(slurm_dir: Path):
    return [json.loads(line) for line in (slurm_dir / 'submissions.jsonl').read_text().splitlines()]


@pytest.mark.slow
def test_slurm_array_requeue_resume_status_report(workdir, slurm, capsys):
    """One job array of two runs with the resources asked for; a preemption (SIGTERM, then submitit's USR2) requeues
    the held run, which resumes from last.ckpt; the diverging run fails; `status` and `report` read the results."""
    path = tiny_grid(workdir, 'spectral_filter=true', grid={FILTER: [True]}, variants={'diverge': {LR: 1.0e30}},
                     executor={'name': 'slurm', 'partition': 'debug', 'account': 'proj', 'qos': 'high',
                               'cpus_per_task': 2, 'mem_gb': 4, 'time': '0:30:00'})
    assert main([str(path), '--detach', '--array-parallelism', '2']) == 0
    detached = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    [submitted] = submissions(slurm)
    array = submitted['job_id']
    assert detached['job_ids'] == [f'{array}_0', f'{array}_1']
    params = submitted['params']
    assert params['array'] == '0-1%2' and params['job-name'] == 'grid_tiny' and params['signal'] == 'USR2@120'
    assert {k: params[k] for k in ('partition', 'account', 'qos', 'cpus-per-task', 'mem', 'time', 'nodes',
                                   'ntasks-per-node')} == {'partition': 'debug', 'account': 'proj', 'qos': 'high',
                                                           'cpus-per-task': '2', 'mem': '4GB', 'time': '30',
                                                           'nodes': '1', 'ntasks-per-node': '1'}
    assert 'srun --unbuffered' in submitted['script'] and 'gpus-per-node' not in params

    held = workdir / 'logs' / 'tiny' / 'spectral_filter=true' / 'seed=0'
    wait_for(lambda: any((workdir / 'gate').glob('*.waiting')), 'the held run')
    assert main([str(path), '--executor', 'slurm']) == 2  # a second runner while the array runs
    assert 'is already running: ' in capsys.readouterr().err
    import submitit
    submitit.SlurmJob(folder=workdir / 'logs' / 'tiny' / '.submitit' / '%j', job_id=f'{array}_0')._interrupt()
    wait_for(lambda: state(held).get('status') == 'interrupted', 'the preempted run to stop')
    assert state(held, 'metrics.json')['status'] == 'interrupted'
    (workdir / 'gate' / 'release').touch()
    wait_for(lambda: state(held).get('status') == 'done', 'the requeued run to finish')

    assert main(['status', str(path)]) == 0
    out = capsys.readouterr().out
    assert 'grid tiny (logs/tiny): 2 runs: 1 done, 1 failed' in out
    assert state(held)['attempts'] == 2 and state(held)['resumed_from'] == str(held / 'checkpoints' / 'last.ckpt')
    assert 'Restored all states from the checkpoint' in (held / 'run.log').read_text()
    assert state(held, 'metrics.json')['step'] == 6
    failed = workdir / 'logs' / 'tiny' / 'diverge' / 'seed=0'
    assert 'non-finite' in state(failed)['error'] and state(failed, 'metrics.json')['status'] == 'failed'

    assert main(['report', 'logs/tiny', '--plot-dir', 'docs']) == 0
    report = capsys.readouterr().out
    assert '| diverge | 0 | 1 |' in report and '## Failed runs' in report
    assert (workdir / 'docs' / 'tiny_best.png').is_file() and (workdir / 'docs' / 'tiny_curves.png').is_file()
