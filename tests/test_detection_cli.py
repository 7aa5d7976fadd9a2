"""The detection job through the real CLI: every shipped recipe smoke-runs on a tiny COCO folder, the quick start fits,
logs COCO metrics and overlays, validates and predicts from its checkpoint; a few steps lower the loss on the
embedded scenes."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules import DigitScenesCOCODataModule, materialize_digit_scenes_coco
from spanet_pl.__main__ import main
from spanet_pl.tasks import DetectionModule

from test_detection_data import coco_tree

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / 'cli_configs' / 'detection'
RECIPES = sorted(p.name for p in CONFIGS.glob('*.yaml') if p.name != 'quickstart.yaml')


def run(args):
    try:
        return main(args)
    except SystemExit as exit_:
        return exit_.code


def _coco_64(root):
    """``coco_tree`` with 64x48 images (a full-size backbone needs at least stride 32 of input)."""
    images = [{'id': i, 'file_name': f'{i:04d}.png', 'width': 64, 'height': 48} for i in (1, 2, 3)]
    return coco_tree(root, images=images)


def test_every_recipe_parses_with_the_papers_settings():
    for recipe in RECIPES:
        config = yaml.safe_load((CONFIGS / recipe).read_text())
        model, trainer = config['model']['init_args'], config['trainer']
        assert config['data']['class_path'] == 'datamodules.COCODataModule'
        assert trainer['strategy'].startswith('ddp') and trainer['precision'] == 'bf16-mixed'
        if recipe.endswith('_1x.yaml'):  # SPANet: 12 epochs, steps at 8 and 11
            assert model['backbone'].startswith('spanet_') and model['milestones'] == [8, 11]
            assert trainer['max_epochs'] == 12 and model['layer_decay'] is None
        else:  # SPANetV2: 36 epochs, steps at 27 and 33, multi-scale + crop, layer decay, 16 images per step
            assert model['backbone'].startswith('spanetv2_s18') and model['milestones'] == [27, 33]
            assert trainer['max_epochs'] == 36 and model['layer_decay'] in (0.95, 0.7)
            assert config['data']['init_args']['crop_scales'] == [400, 500, 600]
            assert trainer['devices'] * config['data']['init_args']['batch_size'] * \
                trainer['accumulate_grad_batches'] == 16


@pytest.mark.slow
@pytest.mark.parametrize('recipe', RECIPES)
def test_every_recipe_smoke_runs_on_cpu(tmp_path, monkeypatch, recipe):
    """``--trainer.accelerator cpu --trainer.devices 1 --trainer.fast_dev_run 1`` on a tiny COCO folder with the
    recipe's own backbone, detector, heads, precision, optimizer and schedule; only the image scales shrink."""
    monkeypatch.chdir(tmp_path)
    root = _coco_64(tmp_path / 'coco')
    args = ['fit', '--config', str(CONFIGS / recipe), '--trainer.accelerator', 'cpu', '--trainer.devices', '1',
            '--trainer.fast_dev_run', '1', '--data.init_args.root', str(root), '--data.init_args.batch_size', '1',
            '--data.init_args.num_workers', '0', '--data.init_args.scales', '[64]',
            '--model.init_args.eval_min_size', '64', '--model.init_args.eval_max_size', '128',
            '--trainer.enable_progress_bar', 'false', '--trainer.enable_model_summary', 'false']
    if '_3x' in recipe:
        args += ['--data.init_args.crop_scales', '[56, 64]', '--data.init_args.crop_size', '[40, 56]']
    cli = run(args)
    assert not isinstance(cli, int), f'{recipe} exited with {cli}'
    assert cli.trainer.global_step == 1 and 'val/bbox_AP' in cli.trainer.callback_metrics
    assert ('val/segm_AP' in cli.trainer.callback_metrics) == ('mask' in recipe)
    assert cli.model.num_classes == 2  # linked from the data module
    assert not (tmp_path / 'metrics.json').exists()  # a smoke run writes no metrics in the working folder


def _quickstart_args(tmp_path, root, *extra):
    return ['--config', str(CONFIGS / 'quickstart.yaml'), '--data.init_args.root', str(root),
            '--data.init_args.num_workers', '0', '--trainer.logger.init_args.save_dir', str(tmp_path / 'logs'),
            '--trainer.enable_progress_bar', 'false', '--trainer.enable_model_summary', 'false', *extra]


@pytest.mark.slow
def test_quickstart_fit_validate_predict(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = materialize_digit_scenes_coco(str(tmp_path / 'scenes'), counts={'train': 16, 'val': 4})
    cli = run(['fit', *_quickstart_args(tmp_path, root, '--trainer.max_epochs', '1',
                                        '--trainer.log_every_n_steps', '1')])
    assert cli.trainer.global_step == 2 and cli.model.num_classes == 10
    version = tmp_path / 'logs' / 'det_quickstart' / 'version_0'
    metrics = json.loads((version / 'metrics.json').read_text())
    assert metrics['status'] == 'finished' and metrics['monitor'] == 'val/bbox_AP'
    events = EventAccumulator(str(version), size_guidance={'images': 4})
    events.Reload()
    scalars = set(events.Tags()['scalars'])
    for iou in ('bbox', 'segm'):
        assert {f'val/{iou}_{name}' for name in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')} <= scalars
    assert {'train/loss_classifier', 'train/loss_mask', 'train/loss_objectness'} <= scalars
    pictures = events.Tags()['images']
    assert pictures == [f'val/detections_{i}' for i in range(4)]
    width = events.Images(pictures[0])[-1].width
    assert width == 2 * 256 + 4  # ground truth | predictions, each 64 px enlarged to 256

    checkpoint = next((version / 'checkpoints').glob('best-*.ckpt'))
    cli = run(['validate', *_quickstart_args(tmp_path, root), '--ckpt_path', str(checkpoint)])
    assert 'val/segm_AP50' in cli.trainer.callback_metrics

    predict_root = tmp_path / 'mine'
    predict_root.mkdir()
    Image.fromarray(np.zeros((50, 70, 3), dtype=np.uint8)).save(predict_root / 'blank.png')
    out = tmp_path / 'found.jsonl'
    run(['predict', *_quickstart_args(tmp_path, root), '--ckpt_path', str(checkpoint),
         '--data.init_args.predict_root', str(predict_root), '--prediction_writer.output', str(out)])
    assert out.is_file()  # one JSON line per detection (an untrained model may find nothing on a blank image)
    for line in out.read_text().splitlines():
        record = json.loads(line)
        assert record['image'].endswith('blank.png') and record['segmentation']['size'] == [50, 70]


def test_a_few_steps_lower_the_loss_on_the_embedded_scenes(tmp_path):
    """The quick start's model and optimizer on the digit scenes: 8 steps over three batches of two lower the loss
    on the first batch (measured with the same proposal sampling: same seed before each measurement; it halves)."""
    config = yaml.safe_load((CONFIGS / 'quickstart.yaml').read_text())['model']['init_args']
    config.pop('optimizer')
    root = materialize_digit_scenes_coco(str(tmp_path / 'scenes'), counts={'train': 6, 'val': 2})
    data = DigitScenesCOCODataModule(root=str(root), batch_size=2, num_workers=0)
    data.setup('fit')
    torch.manual_seed(0)
    module = DetectionModule(**dict(config, num_classes=data.num_classes, num_log_images=0))
    batches = [data.collate_fn([data.train_dataset[i] for i in range(j, j + 2)]) for j in (0, 2, 4)]
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3, weight_decay=0.05)

    def loss_on_first():
        torch.manual_seed(1)
        with torch.no_grad():
            return float(sum(module.detector(*batches[0]).values()))

    module.train()
    before = loss_on_first()
    for step in range(8):
        losses = module.detector(*batches[step % 3])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    after = loss_on_first()
    assert after < 0.8 * before, (before, after)
