"""The segmentation job through the real CLI on a tiny ADE20K-layout tree: fit with both heads, validate in whole and
sliding-window mode, predict masks at the original image size, every shipped recipe on the CPU, bad input."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from spanet_pl.__main__ import main
from spanet_pl.cli import model_flags

from conftest import ADE_H as H, ADE_W as W, ade20k_scene, ade20k_tree, cli_trainer_config, write_ade20k_pair

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted(p.name for p in (REPO / 'cli_configs' / 'segmentation').glob('*.yaml') if p.name != 'quickstart.yaml')
HEAD_KWARGS = {'fpn': {'fpn_channels': 32, 'head_channels': 16}, 'fcn': {'channels': 32, 'in_index': [0, 1, 2, 3]}}


@pytest.fixture
def ade_tree(tmp_path):
    """``tmp_path/data/ADEChallengeData2016``: 4 training 48x36 scenes, 2 validation ones (the second transposed)."""
    return ade20k_tree(tmp_path / 'data' / 'ADEChallengeData2016')


def write_config(tmp_path, root, head='fpn') -> str:
    config = {
        'seed_everything': 0,
        'trainer': cli_trainer_config(tmp_path / 'logs', 'seg'),
        'model': {'class_path': 'spanet_pl.tasks.SegmentationModule',
                  'init_args': {'backbone': 'spanet_nano', 'head': head, 'head_kwargs': HEAD_KWARGS[head],
                                'num_log_images': 2, 'window': 128, 'window_stride': 64,
                                'optimizer': {'class_path': 'torch.optim.AdamW', 'init_args': {'lr': 1e-3}}}},
        'data': {'class_path': 'datamodules.ADE20KDataModule',
                 'init_args': {'root': str(root), 'num_classes': 3, 'batch_size': 2, 'num_workers': 0,
                               'crop_size': [48, 48], 'scale': [2 * W, 2 * H], 'ratio_range': [0.75, 1.25]}},
    }
    path = tmp_path / 'config.yaml'
    path.write_text(yaml.safe_dump(config))
    return str(path)


def run(args):
    try:
        return main(args)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.slow
@pytest.mark.parametrize('head', ['fpn', 'fcn'])
def test_fit_validate_whole_and_slide_predict(tmp_path, ade_tree, head):
    config = write_config(tmp_path, ade_tree, head)
    cli = run(['fit', '--config', config])
    assert cli.trainer.global_step == 2 * 2  # 4 scenes / batch 2, two epochs
    assert cli.model.num_classes == 3  # linked from the data module
    assert cli.model.head.classifier[-1].out_channels == 3
    version = tmp_path / 'logs' / 'seg' / 'version_0'
    best = next((version / 'checkpoints').glob('best-*.ckpt'))
    assert (version / 'checkpoints' / 'last.ckpt').is_file()
    events = EventAccumulator(str(version), size_guidance={'images': 0, 'scalars': 0}).Reload()
    assert {'val/mIoU', 'val/aAcc', 'val/mAcc', 'train/loss_step'} <= set(events.Tags()['scalars'])
    assert sorted(events.Tags()['images']) == ['val/overlay_0', 'val/overlay_1']
    overlay = events.Images('val/overlay_0')[-1]  # evaluated at 2x, shown at the annotation's size
    assert (overlay.height, overlay.width) == (H, 3 * W + 8)

    results = {}
    for mode in ('whole', 'slide'):  # both validation images (96x72, 72x96 at scale 2x) fit in one 128x128 window
        cli = run(['validate', '--config', config, '--ckpt_path', str(best), '--model.init_args.inference', mode])
        assert cli.model.hparams.inference == mode  # the typed flag, not the checkpoint's 'whole'
        results[mode] = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert results['whole'] == results['slide']
    assert {'val/mIoU', 'val/aAcc', 'val/mAcc', 'val/loss'} <= set(results['whole'])
    assert 0.0 <= results['whole']['val/mIoU'] <= 1.0

    # predict at half size in one padded batch: the masks come back at each image's original size
    out = tmp_path / 'masks'
    assert run(['predict', '--config', config, '--ckpt_path', str(best), '--prediction_writer.output', str(out),
                '--data.init_args.scale', f'[{W // 2}, {H // 2}]', '--data.init_args.eval_batch_size', '2'])
    masks = {p.name: Image.open(p) for p in sorted(out.iterdir())}
    assert list(masks) == ['ADE_val_00000000.png', 'ADE_val_00000001.png']
    assert masks['ADE_val_00000000.png'].size == (W, H) and masks['ADE_val_00000001.png'].size == (H, W)
    for mask in masks.values():
        assert mask.mode == 'P' and set(np.unique(np.asarray(mask)).tolist()) <= {0, 1, 2}


def test_test_reports_ms_flip_beside_single_scale_and_the_per_class_table(tmp_path, ade_tree):
    """The papers' evaluation through the CLI as the README runs it (``test --ckpt_path ... --model.init_args.test_scales
    ... --model.init_args.test_flip true``): the typed flags win over the checkpoint's hyper-parameters (which Lightning
    parses over the config), the ms+flip metrics come beside the single-scale ones, ``test_per_class.csv`` has both
    column sets, and both confusion-matrix images are logged."""
    config = write_config(tmp_path, ade_tree)
    plain = run(['test', '--config', config, '--model.init_args.num_log_images', '0'])
    checkpoint = tmp_path / 'plain.ckpt'
    plain.trainer.save_checkpoint(checkpoint)  # its hyper-parameters: no test_scales, no test_flip
    assert plain.model.hparams.test_scales is None and not plain.model.hparams.test_flip
    cli = run(['test', '--config', config, '--ckpt_path', str(checkpoint), '--model.init_args.test_scales', '[0.5, 1.0]',
               '--model.init_args.test_flip=true', '--model.init_args.num_log_images', '0'])
    assert not isinstance(cli, int), f'test exited with {cli}'
    assert cli.model.hparams.test_scales == [0.5, 1.0] and cli.model.hparams.test_flip
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert {'test/mIoU', 'test/aAcc', 'test/mAcc', 'test/mIoU_ms+flip', 'test/aAcc_ms+flip'} <= set(metrics)
    assert metrics['test/mIoU'] == pytest.approx(float(plain.trainer.callback_metrics['test/mIoU']))  # same weights
    assert model_flags(['test', '--model.init_args.a', '1', '--modelx', '2', '--model.b=3', '--model', 'm.yaml',
                        '--data.init_args.c', '4']) == ['--model.init_args.a', '1', '--model.b=3', '--model', 'm.yaml']
    version = tmp_path / 'logs' / 'seg' / 'version_1'
    rows = [line.split(',') for line in (version / 'test_per_class.csv').read_text().splitlines()]
    assert rows[0] == ['index', 'class', 'pixels', 'IoU', 'Acc', 'IoU_ms+flip', 'Acc_ms+flip']
    assert [r[1] for r in rows[1:]] == ['class_0', 'class_1', 'class_2', 'mean']
    assert float(rows[-1][3]) == pytest.approx(metrics['test/mIoU'], abs=1e-4)
    assert float(rows[-1][5]) == pytest.approx(metrics['test/mIoU_ms+flip'], abs=1e-4)
    assert int(rows[-1][2]) == 2 * (H * W - 3 * W - 1)  # both images at their original size less the ignored pixels
    events = EventAccumulator(str(version), size_guidance={'images': 0}).Reload()
    assert sorted(events.Tags()['images']) == ['test/confusion_matrix', 'test/confusion_matrix_ms+flip']
    picture = events.Images('test/confusion_matrix')[-1]
    assert picture.height == picture.width > 0


def expect_error(tmp_path, capsys, config, pattern):
    assert run(['fit', '--config', config]) == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith('spanet_pl: error:')]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert 'Traceback' not in err
    return lines[0]


def test_missing_split_folder(tmp_path, capsys, ade_tree):
    for f in (ade_tree / 'annotations' / 'validation').iterdir():
        f.unlink()
    (ade_tree / 'annotations' / 'validation').rmdir()
    expect_error(tmp_path, capsys, write_config(tmp_path, ade_tree), r'has no annotations/validation/ folder')
    assert not (tmp_path / 'logs').exists(), 'a failed start must not write a log folder'


def test_image_without_annotation(tmp_path, capsys, ade_tree):
    (ade_tree / 'annotations' / 'training' / 'ADE_train_00000002.png').unlink()
    expect_error(tmp_path, capsys, write_config(tmp_path, ade_tree),
                 r'1 of 4 images .* no annotation.*ADE_train_00000002')
    assert not (tmp_path / 'logs').exists()


@pytest.mark.slow
def test_label_out_of_range_names_the_file(tmp_path, capsys, ade_tree):
    image, labels = ade20k_scene()
    labels[10, 10] = 9  # class 8 after reduce_zero_label, but the data module has 3 classes
    write_ade20k_pair(ade_tree, 'training', 'ADE_train_00000001', image=image, labels=labels)
    expect_error(tmp_path, capsys, write_config(tmp_path, ade_tree),
                 r'annotations/training/ADE_train_00000001\.png has label values 9 outside num_classes=3')


@pytest.mark.parametrize('key, value, choices', [('head', 'fpnn', "'fcn', 'fpn', 'upernet'"),
                                                 ('inference', 'sliding', "'whole', 'slide'")])
def test_closed_choices_are_checked_by_the_parser(tmp_path, capsys, ade_tree, key, value, choices):
    """Literal[...] arguments: LightningCLI rejects a value outside them before anything is built or written."""
    assert run(['fit', '--config', write_config(tmp_path, ade_tree), f'--model.init_args.{key}', value]) == 2
    err = capsys.readouterr().err
    assert f'Expected a typing.Literal[{choices}]. Got value: {value}' in err
    assert not (tmp_path / 'logs').exists()


@pytest.mark.slow
@pytest.mark.parametrize('recipe', RECIPES)
def test_every_recipe_smoke_runs_on_cpu(tmp_path, monkeypatch, ade_tree, recipe):
    """The check before a cluster job: ``--trainer.accelerator cpu --trainer.devices 1 --trainer.fast_dev_run 2`` on an
    ADE20K-layout folder, with the recipe's own backbone, head(s), precision, schedule and inference mode; only the
    crops, batch and window shrink so that a full-size backbone takes seconds. BatchNorm stays plain (no SyncBN on
    one CPU process), and the run leaves nothing in the working directory's checkpoints/."""
    monkeypatch.chdir(tmp_path)
    cli = run(['fit', '--config', str(REPO / 'cli_configs' / 'segmentation' / recipe), '--trainer.accelerator', 'cpu',
               '--trainer.devices', '1', '--trainer.fast_dev_run', '2', '--data.init_args.root', str(ade_tree),
               '--data.init_args.crop_size', '[64, 64]', '--data.init_args.scale', '[128, 64]',
               '--data.init_args.batch_size', '2', '--data.init_args.num_workers', '0',
               '--model.init_args.window', '64', '--model.init_args.window_stride', '43',
               '--trainer.enable_progress_bar', 'false', '--trainer.enable_model_summary', 'false'])
    assert not isinstance(cli, int), f'{recipe} exited with {cli}'
    assert cli.trainer.global_step == 2 and 'val/mIoU' in cli.trainer.callback_metrics
    norms = [m for m in cli.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert not (tmp_path / 'checkpoints').exists()
