"""``python -m spanet_pl.analysis`` end to end, and the spectral TensorBoard callbacks in real fits."""
import csv
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from spanet_pl.__main__ import main as cli_main
from spanet_pl.analysis.__main__ import main

from conftest import ade20k_tree, cli_trainer_config, colour_image_tree

SPECTRAL_CALLBACKS = [
    {'class_path': 'spanet_pl.callbacks.FourierSpectrumLogger', 'init_args': {'every_n_epochs': 1, 'num_images': 4}},
    {'class_path': 'spanet_pl.callbacks.SpectralFilterLogger', 'init_args': {'every_n_epochs': 1}},
]


def rows(path: Path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def fit(config: dict, folder: Path) -> Path:
    path = folder / 'config.yaml'
    path.write_text(yaml.safe_dump(config))
    cli_main(['fit', '--config', str(path)])
    return next(folder.glob('logs/*/version_0'))


@pytest.fixture(scope='module')
def classification_run(tmp_path_factory):
    """A two-epoch spanetv2_nano_pure fit on a tiny colour ImageFolder tree at 32 px, with the spectral callbacks."""
    folder = tmp_path_factory.mktemp('cls')
    root = colour_image_tree(folder / 'data', ('blue', 'green', 'red'), (8, 4))
    trainer = cli_trainer_config(folder / 'logs', 'cls', callbacks=SPECTRAL_CALLBACKS)
    config = {
        'seed_everything': 0, 'trainer': trainer,
        'model': {'class_path': 'spanet_pl.tasks.ClassificationModule',
                  'init_args': {'backbone': 'spanetv2_nano_pure', 'backbone_kwargs': {'img_size': 32},
                                'warmup_epochs': 0.5,
                                'optimizer': {'class_path': 'torch.optim.AdamW', 'init_args': {'lr': 2e-3}}}},
        'data': {'class_path': 'datamodules.ImageNetDataModule',
                 'init_args': {'root': str(root), 'batch_size': 4, 'num_workers': 0, 'img_size': 32,
                               'auto_augment': None, 're_prob': 0.0, 'mixup_alpha': 0.0, 'cutmix_alpha': 0.0}},
    }
    return fit(config, folder), root


@pytest.fixture(scope='module')
def segmentation_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp('seg')
    root = ade20k_tree(folder / 'data' / 'ADEChallengeData2016')
    trainer = cli_trainer_config(folder / 'logs', 'seg', max_epochs=1, callbacks=SPECTRAL_CALLBACKS)
    config = {
        'seed_everything': 0, 'trainer': trainer,
        'model': {'class_path': 'spanet_pl.tasks.SegmentationModule',
                  'init_args': {'backbone': 'spanet_nano', 'head': 'fpn', 'num_log_images': 1,
                                'head_kwargs': {'fpn_channels': 16, 'head_channels': 16},
                                'optimizer': {'class_path': 'torch.optim.AdamW', 'init_args': {'lr': 1e-3}}}},
        'data': {'class_path': 'datamodules.ADE20KDataModule',
                 'init_args': {'root': str(root), 'num_classes': 3, 'batch_size': 2, 'num_workers': 0,
                               'crop_size': [48, 48], 'scale': [96, 72]}},
    }
    return fit(config, folder)


@pytest.mark.slow
def test_tensorboard_tags_of_the_spectral_callbacks(classification_run, segmentation_run):
    # 32-px classification images: stages 1-2 have maps of at least 3x3, stages 3-4 not; the validation scenes are
    # rescaled to 96x72 and squared to their short side, 72: all four stages
    for run, stages in ((classification_run[0], {1, 2}), (segmentation_run, {1, 2, 3, 4})):
        events = EventAccumulator(str(run), size_guidance={'images': 0, 'scalars': 0}).Reload()
        assert {'spectral/fourier', 'spectral/filters'} <= set(events.Tags()['images'])
        scalars = {t for t in events.Tags()['scalars'] if t.startswith('spectral/')}
        assert scalars == {f'spectral/dlogamp_hf/stage{s}' for s in stages}
        for tag in scalars:
            assert all(e.value < 0 for e in events.Scalars(tag))  # high frequencies below DC
    assert len(EventAccumulator(str(classification_run[0])).Reload().Scalars('spectral/dlogamp_hf/stage1')) == 2


@pytest.mark.slow
def test_every_subcommand_on_a_run_checkpoint(classification_run, tmp_path, capsys):
    run, root = classification_run
    ckpt = str(next((run / 'checkpoints').glob('best-*.ckpt')))
    out = tmp_path / 'out'
    assert main(['fourier', '--model', ckpt, '--model', 'spanetv2_nano_pure', '--num-images', '6',
                 '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'input size 32x32 (the training size of cls/version_0' in printed
    assert f'6 images from ImageNet validation images under {root}' in printed  # the run's own data module
    table = rows(out / 'fourier.csv')
    assert {r['model'] for r in table} == {'cls/version_0', 'spanetv2_nano_pure (random init)'}
    assert {r['size'] for r in table if r['kind'] == 'stem'} == {'8'}
    assert (out / 'fourier_curves.png').stat().st_size > 10_000
    assert main(['filters', '--model', ckpt, '--out', str(out)]) == 0
    assert {r['kind'] for r in rows(out / 'filters_radial.csv')} == {'srf'}
    assert main(['context', '--model', ckpt, '--num-images', '2', '--out', str(out)]) == 0
    assert {r['stage'] for r in rows(out / 'context.csv')} == {'1', '2', '3', '4'}
    assert main(['cam', '--model', ckpt, '--num-images', '2', '--method', 'gradcam', '--out', str(out)]) == 0
    cams = rows(out / 'cam.csv')
    assert len(cams) == 2 and all(r['top1_name'] in ('blue', 'green', 'red') for r in cams)
    assert sorted(p.name for p in out.glob('cam_*.png')) == ['cam_cls_version_0_00.png', 'cam_cls_version_0_01.png']
    assert not list(out.glob('.partial-*'))


@pytest.mark.slow
def test_segmentation_checkpoint_and_run_folder(segmentation_run, tmp_path):
    out = tmp_path / 'out'
    assert main(['fourier', '--model', str(segmentation_run.parent), '--num-images', '2', '--out', str(out)]) == 0
    assert {r['model'] for r in rows(out / 'fourier.csv')} == {'seg/version_0'}  # a folder of runs: <folder>/<run>
    assert main(['fourier', '--model', str(segmentation_run), '--num-images', '2', '--out', str(out)]) == 0
    assert {r['model'] for r in rows(out / 'fourier.csv')} == {'seg/version_0'}
    ckpt = str(segmentation_run / 'checkpoints' / 'last.ckpt')
    assert main(['cam', '--model', ckpt, '--out', str(out / 'cam')]) == 2  # no classifier
    assert not list((out / 'cam').glob('*.png'))


@pytest.mark.slow
def test_bare_variants_on_image_files(tmp_path):
    images = colour_image_tree(tmp_path / 'images', ('red', 'blue'), (2, 1))
    out = tmp_path / 'out'
    common = ['--images', str(images / 'train'), '--img-size', '32', '--out', str(out)]
    assert main(['fourier', '--model', 'spanet_nano', '--model', 'spanetv2_nano_hybrid', '--label', 'v1',
                 '--label', 'v2', *common]) == 0
    table = rows(out / 'fourier.csv')
    assert {r['model'] for r in table} == {'v1', 'v2'}
    assert all(float(r['dlogamp']) == 0 for r in table if r['freq_index'] == '0')
    assert main(['filters', '--model', 'spanet_nano', '--img-size', '32', '--out', str(out)]) == 0
    masks = rows(out / 'filters_radial.csv')
    assert {r['label'] for r in masks} == {'λ=0.70', 'λ=0.80', 'λ=0.90'}
    assert main(['context', '--model', 'spanet_nano', '--num-images', '1', *common]) == 0
    assert main(['cam', '--model', 'spanet_nano', '--num-images', '1', '--method', 'gradcam', *common]) == 0
    assert {p.name for p in out.iterdir()} >= {'fourier_curves.png', 'fourier_high_frequency.png', 'filters_radial.png',
                                                'filters_spanet_nano_random_init.png', 'context_spanet_nano_random_init.png',
                                                'cam.png', 'cam.csv', 'context.csv', 'filters_spectra.csv'}


def test_graph_command(tmp_path, capsys):
    out = tmp_path / 'graph'
    assert main(['graph', '--size', '8', '--kernels', '1', '3', '5', '--out', str(out)]) == 0
    assert 'max |Δ| =' in capsys.readouterr().out
    diagonal = {(r['graph'], r['freq_pi']): float(r['response']) for r in rows(out / 'graph_diagonal.csv')}
    assert diagonal[('k=3', '1')] == pytest.approx(1 / 9) and diagonal[('full', '1')] == pytest.approx(0, abs=1e-12)
    assert len(rows(out / 'graph_response.csv')) == 4 * 64
    assert main(['graph', '--size', '6', '--boundary', 'open', '--kernels', '3', '--out', str(out / 'open')]) == 0


def test_bad_input_writes_nothing(tmp_path, capsys):
    out = tmp_path / 'out'
    assert main(['fourier', '--model', 'spanet_nanoo', '--out', str(out)]) == 2
    assert "spanet_pl.analysis: error: --model 'spanet_nanoo' is neither a variant" in capsys.readouterr().err
    assert main(['graph', '--size', '4', '--kernels', '7', '--out', str(out)]) == 2
    assert 'larger than the 4x4 token grid' in capsys.readouterr().err
    assert main(['fourier', '--model', 'spanet_nano', '--data', 'imagenet', '--out', str(out)]) == 2
    assert '--data imagenet needs --data-root' in capsys.readouterr().err
    assert list(out.iterdir()) == []
