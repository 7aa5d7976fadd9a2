"""Distributed data parallel on CPU (gloo): a 2-process fit validates like a 1-process fit of the same data and seed.

Both runs use the same data, seed, effective batch (1 process x 8 images, 2 processes x 4), plain SGD with momentum,
deterministic training transforms (full-image crops, no flip, jitter or mixup) and the nano backbone (GroupNorm, no
BatchNorm, no dropout or drop path). The 1-process run also uses ``strategy: ddp`` (``devices: 1``) so that Lightning
gives it the same ``DistributedSampler`` (seed 0) as the 2-process run: every optimizer step then sees the same eight
images, split 4 + 4 between the ranks, and DDP's all-reduce (the mean of the two ranks' mean-loss gradients) equals
the 1-process mean-loss gradient. Only floating-point rounding differs (batch-4 vs batch-8 kernels, gloo's summation
order): about 1e-7 relative per step, which SGD carries along linearly (Adam's normalisation would amplify it for
near-zero gradients, hence SGD here).

Tolerance: after 12 steps the final weights agree to 1e-5 (relative L2 over all parameters; measured ~1e-8), the
validation loss of the final weights on the full validation set (evaluated here, in one process, for both runs) to
1e-4 (measured: identical to 7 digits), and the accuracy exactly; the best ``val/acc1`` each run logged during
training (synchronised across the two ranks in DDP) agrees exactly as well. A broken gradient average (sum instead
of mean, a rank training on its own) or a wrong sampler split moves the weights by orders of magnitude more.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import spanet_pl  # noqa: F401

from conftest import colour_image_tree

REPO = Path(__file__).resolve().parents[1]
CLASSES = ('blue', 'green', 'red')
WEIGHT_RTOL = 1e-5
LOSS_ATOL = 1e-4


@pytest.fixture
def image_tree(tmp_path):
    """48 training images (six steps of 8) and 24 validation images in three colour classes, with noise."""
    return colour_image_tree(tmp_path / 'data', CLASSES, (16, 8), noise=140, boost=90)


def write_config(tmp_path, root) -> Path:
    config = {
        'seed_everything': 0,
        'trainer': {'max_epochs': 2, 'log_every_n_steps': 1, 'enable_progress_bar': False,
                    'enable_model_summary': False},
        'model': {'class_path': 'spanet_pl.tasks.ClassificationModule',
                  'init_args': {'backbone': 'spanet_nano', 'warmup_epochs': 0, 'min_lr': 0.0,
                                'optimizer': {'class_path': 'torch.optim.SGD',
                                              'init_args': {'lr': 0.02, 'momentum': 0.9}}}},
        'data': {'class_path': 'datamodules.ImageNetDataModule',
                 'init_args': {'root': str(root), 'num_workers': 0, 'img_size': 32, 'scale': [1.0, 1.0],
                               'auto_augment': None, 're_prob': 0.0, 'hflip': 0.0, 'color_jitter': 0.0,
                               'mixup_alpha': 0.0, 'cutmix_alpha': 0.0, 'label_smoothing': 0.0}},
    }
    path = tmp_path / 'config.yaml'
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def fit(tmp_path, config, name, devices, batch_size, port) -> subprocess.Popen:
    cmd = [sys.executable, '-m', 'spanet_pl', 'fit', '--config', str(config),
           '--config', str(REPO / 'cli_configs' / 'trainer' / 'cpu_ddp_gloo.yaml'),
           '--trainer.devices', str(devices), '--data.init_args.batch_size', str(batch_size),
           '--trainer.logger.init_args.save_dir', str(tmp_path / 'logs'),
           '--trainer.logger.init_args.name', name]
    # the two runs (three processes) share the machine's cores; each run its own rendezvous port
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port)}
    with open(tmp_path / f'{name}.log', 'w') as log:
        return subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # its own process group: rank 1 included


def evaluate(checkpoint: Path, root: Path):
    """Loss and accuracy of a checkpoint's weights on the whole validation set, in this process."""
    from datamodules import ImageNetDataModule
    from spanet_pl.tasks import ClassificationModule
    model = ClassificationModule.load_from_checkpoint(checkpoint, map_location='cpu').eval()
    data = ImageNetDataModule(root=str(root), batch_size=24, num_workers=0, img_size=32, mixup_alpha=0.0,
                              cutmix_alpha=0.0, auto_augment=None, re_prob=0.0)
    data.setup('validate')
    images, target = next(iter(data.val_dataloader()))
    assert len(target) == 24
    with torch.no_grad():
        logits = model(images)
    return F.cross_entropy(logits, target).item(), (logits.argmax(-1) == target).float().mean().item(), model


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, image_tree):
    config = write_config(tmp_path, image_tree)
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    runs = {'one': fit(tmp_path, config, 'one', devices=1, batch_size=8, port=ports[0]),
            'two': fit(tmp_path, config, 'two', devices=2, batch_size=4, port=ports[1])}
    try:
        for name, proc in runs.items():
            assert proc.wait(timeout=300) == 0, (tmp_path / f'{name}.log').read_text()[-3000:]
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert 'distributed_backend=gloo' in (tmp_path / 'two.log').read_text()

    results = {}
    for name in runs:
        last = tmp_path / 'logs' / name / 'version_0' / 'checkpoints' / 'last.ckpt'
        state = torch.load(last, map_location='cpu', weights_only=False)
        assert state['global_step'] == 12, name  # 48 images / effective batch 8, two epochs, in both runs
        loss, acc, model = evaluate(last, image_tree)
        metrics = json.loads((last.parents[1] / 'metrics.json').read_text())  # what every fit writes at its end
        results[name] = dict(loss=loss, acc=acc, best=(metrics['best']['value'], metrics['monitor']),
                             params=torch.nn.utils.parameters_to_vector(model.backbone.parameters()))
    one, two = results['one'], results['two']
    drift = ((one['params'] - two['params']).norm() / one['params'].norm()).item()
    assert drift < WEIGHT_RTOL, f'weights differ by {drift:.2e} (relative L2)'
    assert abs(one['loss'] - two['loss']) < LOSS_ATOL, (one['loss'], two['loss'])
    assert one['acc'] == two['acc'], (one['acc'], two['acc'])
    assert one['best'][1] == two['best'][1] == 'val/acc1'
    assert one['best'][0] == pytest.approx(two['best'][0], abs=1e-6), (one['best'], two['best'])
    assert one['loss'] < 1.0, f'the runs did not learn (val loss {one["loss"]:.3f}): the comparison would be vacuous'
