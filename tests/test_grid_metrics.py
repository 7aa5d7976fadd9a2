"""metrics.json, which every fit writes at its end and the grid reads instead of checkpoints: best and last metric
with epoch/step, wall time carried through a resume, parameters, MACs, status. (Failed, interrupted and resumed fits
are checked in test_grid_e2e.py, where they happen inside grid jobs.)"""
import json

import pytest

from spanet_pl.__main__ import main as cli_main
from spanet_pl.callbacks import MetricsJSON

from conftest import colour_image_tree
from test_grid import write_base


def fit(tmp_path, root):
    """A tiny classification fit through the CLI (the grid tests' base config), logging to logs/run/version_0."""
    base = write_base(tmp_path, root, max_epochs=2, enable_progress_bar=False,
                      logger={'class_path': 'lightning.pytorch.loggers.TensorBoardLogger',
                              'init_args': {'save_dir': str(tmp_path / 'logs'), 'name': 'run'}})
    return cli_main(['fit', '--config', str(base)])


@pytest.mark.slow
def test_metrics_json_finished_and_resumed(tmp_path):
    root = colour_image_tree(tmp_path / 'data', ('blue', 'red'), (4, 2))
    cli = fit(tmp_path, root)
    run_dir = tmp_path / 'logs' / 'run' / 'version_0'
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics['status'] == 'finished' and metrics['error'] is None
    assert (metrics['monitor'], metrics['mode']) == ('val/acc1', 'max')
    assert metrics['last'] == {'value': pytest.approx(float(cli.trainer.callback_metrics['val/acc1'])),
                               'epoch': 1, 'step': 4}
    checkpoint = cli.trainer.checkpoint_callback
    assert metrics['best']['value'] == pytest.approx(float(checkpoint.best_model_score))
    assert f'step{metrics["best"]["step"]}' in checkpoint.best_model_path  # the best checkpoint's own step
    params = sum(p.numel() for p in cli.model.parameters())
    assert metrics['params'] == metrics['params_total'] == params
    assert metrics['input_shape'] == [3, 32, 32] and metrics['macs'] > 1e6 and metrics['fft_flops'] > 0
    assert metrics['wall_s'] > 0

    # the numbers travel in the checkpoint, so a resumed fit continues them (wall time included)
    import torch
    saved = torch.load(run_dir / 'checkpoints' / 'last.ckpt', map_location='cpu', weights_only=False)['callbacks']
    state = saved['MetricsJSON']
    assert state['best'] == metrics['best'] and 0 < state['wall_s'] <= metrics['wall_s']
    resumed = MetricsJSON()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
