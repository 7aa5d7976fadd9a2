"""Contracts of the classification datamodules on a tiny real ImageFolder tree and on the embedded digits."""
import logging
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import datamodules.embedded as embedded
from datamodules import DigitsDataModule, ImageNetDataModule, RobustImageFolder
from datamodules._files import materialize_atomically

CLASSES = ('cat', 'dog', 'fox')
N_TRAIN, N_VAL = 4, 2


def _write_image(path: Path, seed: int, ext: str = 'JPEG') -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format='JPEG' if ext.upper() in ('JPEG', 'JPG') else ext.upper())
    return path


@pytest.fixture
def tree(tmp_path):
    """3 classes x (4 train, 2 val) 40x40 RGB images."""
    root = tmp_path / 'imagenet'
    seed = 0
    for split, count in (('train', N_TRAIN), ('val', N_VAL)):
        for name in CLASSES:
            for i in range(count):
                _write_image(root / split / name / f'{name}_{i}.JPEG', seed)
                seed += 1
    return root


def _dm(root, **kwargs):
    kwargs = {'batch_size': 4, 'num_workers': 0, 'img_size': 32, **kwargs}
    return ImageNetDataModule(str(root), **kwargs)


def test_setup_and_dataloaders(tree):
    dm = _dm(tree)
    assert dm.classes == list(CLASSES) and dm.num_classes == 3
    dm.setup('fit')
    assert dm.data_config['mean'] == IMAGENET_DEFAULT_MEAN and dm.data_config['std'] == IMAGENET_DEFAULT_STD
    assert dm.data_config['crop_pct'] == 0.875 and dm.data_config['interpolation'] == 'bicubic'

    train = list(dm.train_dataloader())
    assert len(train) == len(CLASSES) * N_TRAIN // 4
    for images, targets in train:
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
        assert targets.dtype == torch.int64 and 0 <= targets.min() and targets.max() < 3

    val_targets = []
    for images, targets in dm.val_dataloader():
        assert images.shape[1:] == (3, 32, 32)
        val_targets.append(targets)
    assert torch.cat(val_targets).tolist() == [c for c in range(3) for _ in range(N_VAL)]
    assert sum(len(t) for _, t in dm.test_dataloader()) == len(CLASSES) * N_VAL

    dm.setup('predict')
    assert dm.predict_paths == sorted(str(p) for p in (tree / 'val').rglob('*.JPEG'))
    indices = []
    for images, idx in dm.predict_dataloader():
        assert images.shape[1:] == (3, 32, 32) and idx.dtype == torch.int64
        indices += idx.tolist()
    assert indices == list(range(len(dm.predict_paths)))


def test_predict_root_is_recursive_and_sorted(tree, tmp_path):
    folder = tmp_path / 'to_predict'
    paths = [_write_image(folder / 'b.png', 1, 'png'), _write_image(folder / 'a' / 'z.JPEG', 2),
             _write_image(folder / 'a' / 'y.jpg', 3)]
    (folder / 'notes.txt').write_text('not an image')
    dm = _dm(tree, predict_root=str(folder), eval_batch_size=2)
    dm.setup('predict')
    assert dm.predict_paths == sorted(str(p) for p in paths)
    batches = list(dm.predict_dataloader())
    assert [len(idx) for _, idx in batches] == [2, 1]


def test_data_config_from_model(tree):
    model_config = {'mean': (0.1, 0.2, 0.3), 'std': (0.4, 0.5, 0.6), 'crop_pct': 0.95, 'interpolation': 'bilinear'}
    dm = _dm(tree, std=(0.5, 0.5, 0.5))
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(data_config=model_config), training=False)
    dm.setup('validate')
    # Explicit arguments win over the model's values, the model's over the defaults.
    assert dm.data_config == {'input_size': (3, 32, 32), 'mean': (0.1, 0.2, 0.3), 'std': (0.5, 0.5, 0.5),
                              'crop_pct': 0.95, 'interpolation': 'bilinear'}
    resize = dm.eval_transform.transforms[0]
    assert resize.size == int(32 / 0.95)
    images, _ = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 3, 32, 32)


def _remove(path: Path):
    for p in sorted(path.rglob('*'), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    path.rmdir()


@pytest.mark.parametrize('case, error, expected', [
    ('missing_root', FileNotFoundError, '{root} does not exist'),
    ('no_val', FileNotFoundError, '{root} has no val/ folder'),
    ('no_train', FileNotFoundError, '{root} has no train/ folder'),
    ('only_in_train', ValueError, 'only in train/: zebra'),
    ('only_in_val', ValueError, 'only in val/: dog'),
    ('empty_class', ValueError, 'class folder {root}/val/dog has no image file'),
    ('odd_batch_with_mixup', ValueError, 'batch_size=5 must be even'),
    ('bad_auto_augment', ValueError, "auto_augment='nonsense'"),
    ('bad_interpolation', ValueError, "unknown interpolation 'cubic' (did you mean 'bicubic'?)"),
    ('missing_predict_root', FileNotFoundError, 'predict_root {root}/nowhere does not exist'),
])
def test_bad_inputs_fail_in_init(tree, case, error, expected):
    kwargs = {}
    if case == 'missing_root':
        _remove(tree)
    elif case in ('no_val', 'no_train'):
        _remove(tree / case[3:])
    elif case == 'only_in_train':
        _write_image(tree / 'train' / 'zebra' / 'z.JPEG', 0)
    elif case == 'only_in_val':
        _remove(tree / 'train' / 'dog')
    elif case == 'empty_class':
        for p in (tree / 'val' / 'dog').iterdir():
            p.unlink()
        (tree / 'val' / 'dog' / 'readme.txt').write_text('no images here')
    elif case == 'odd_batch_with_mixup':
        kwargs['batch_size'] = 5
    elif case == 'bad_auto_augment':
        kwargs['auto_augment'] = 'nonsense'
    elif case == 'bad_interpolation':
        kwargs['interpolation'] = 'cubic'
    elif case == 'missing_predict_root':
        kwargs['predict_root'] = str(tree / 'nowhere')
    with pytest.raises(error, match=re.escape(expected.format(root=tree))):
        _dm(tree, **kwargs)


def test_corrupt_files_are_skipped_and_counted(tree, caplog):
    garbage = tree / 'train' / 'cat' / 'a_garbage.JPEG'
    garbage.write_bytes(os.urandom(300))
    truncated = tree / 'train' / 'dog' / 'a_truncated.JPEG'
    data = (tree / 'train' / 'dog' / 'dog_0.JPEG').read_bytes()
    truncated.write_bytes(data[:len(data) // 2])

    dm = _dm(tree, mixup_alpha=0.0, cutmix_alpha=0.0)
    dm.setup('fit')
    assert len(dm.train_dataset) == len(CLASSES) * N_TRAIN + 2
    with caplog.at_level(logging.WARNING, logger='datamodules'):
        for _ in range(2):
            batches = list(dm.train_dataloader())
            assert len(batches) == (len(CLASSES) * N_TRAIN + 2) // 4
            assert all(images.shape == (4, 3, 32, 32) and len(targets) == 4 for images, targets in batches)
    assert dm.train_dataset.num_skipped == 2
    assert set(dm.train_dataset.bad_files) == {str(garbage), str(truncated)}
    warned = [r.getMessage() for r in caplog.records if 'unreadable' in r.getMessage()]
    assert len(warned) == 2 and any(str(garbage) in m for m in warned) and any(str(truncated) in m for m in warned)


def test_too_many_consecutive_unreadable_files_raise(tree):
    for path in (tree / 'train').rglob('*.JPEG'):
        path.write_bytes(b'not a jpeg')
    dataset = RobustImageFolder(str(tree / 'train'), max_consecutive_failures=5)
    with pytest.raises(RuntimeError, match='5 consecutive images starting at .*cat_0.JPEG are unreadable'):
        dataset[0]


def test_mixup_gives_soft_targets_only_while_training(tree):
    dm = _dm(tree)
    batch = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))

    dm.trainer = SimpleNamespace(training=True)
    images, targets = dm.on_after_batch_transfer((batch[0].clone(), batch[1]), 0)
    assert images.shape == (4, 3, 32, 32)
    assert targets.shape == (4, 3) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(1), torch.ones(4))

    dm.trainer = SimpleNamespace(training=False)
    images, targets = dm.on_after_batch_transfer(batch, 0)
    assert targets is batch[1]

    no_mix = _dm(tree, mixup_alpha=0.0, cutmix_alpha=0.0, batch_size=3)
    no_mix.trainer = SimpleNamespace(training=True)
    assert no_mix.mixup_fn is None and no_mix.on_after_batch_transfer(batch, 0)[1] is batch[1]


class _TinyClassifier(LightningModule):
    """Stand-in for the model side: exposes ``data_config`` and checks the targets it is given."""

    def __init__(self):
        super().__init__()
        self.data_config = {'mean': (0.2, 0.2, 0.2), 'std': (0.3, 0.3, 0.3), 'crop_pct': 1.0,
                            'interpolation': 'bilinear'}
        self.head = torch.nn.Linear(3, len(CLASSES))

    def forward(self, x):
        return self.head(x.mean((2, 3)))

    def training_step(self, batch, batch_idx):
        images, targets = batch
        assert targets.shape == (4, len(CLASSES)) and targets.dtype == torch.float32
        return torch.sum(-targets * self(images).log_softmax(-1), -1).mean()

    def validation_step(self, batch, batch_idx):
        assert batch[1].dtype == torch.int64

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_with_a_real_trainer(tree):
    dm = _dm(tree)
    trainer = Trainer(accelerator='cpu', fast_dev_run=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_TinyClassifier(), datamodule=dm)
    assert dm.data_config['mean'] == (0.2, 0.2, 0.2) and dm.data_config['interpolation'] == 'bilinear'


def test_digits_materialise_once_and_split_stratified(tmp_path, monkeypatch):
    monkeypatch.setenv('SPANET_PL_DATA', str(tmp_path / 'cache'))
    dm = DigitsDataModule(num_workers=0)
    root = tmp_path / 'cache' / 'digits'
    assert dm.root == root and dm.classes == [str(d) for d in range(10)] and dm.num_classes == 10
    files = {split: sorted((root / split).rglob('*.png')) for split in ('train', 'val')}
    assert len(files['train']) + len(files['val']) == 1797
    assert not {p.stem for p in files['train']} & {p.stem for p in files['val']}
    per_class = {split: np.bincount([int(p.parent.name) for p in paths], minlength=10)
                 for split, paths in files.items()}
    fraction = per_class['val'] / (per_class['train'] + per_class['val'])
    assert np.all(np.abs(fraction - 0.2) < 0.01)
    with Image.open(files['val'][0]) as image:
        assert image.size == (32, 32) and image.getextrema()[1] > 128
    assert not [p for p in tmp_path.joinpath('cache').iterdir() if p.name.startswith('.')]

    manifest = root / embedded.DIGITS_MANIFEST
    stamp = (manifest.stat().st_mtime_ns, files['val'][0].stat().st_mtime_ns)

    def no_rewrite(folder):
        raise AssertionError('the digits were written a second time')

    monkeypatch.setattr(embedded, '_write_digits', no_rewrite)
    again = DigitsDataModule(num_workers=0)
    assert again.classes == dm.classes
    assert (manifest.stat().st_mtime_ns, files['val'][0].stat().st_mtime_ns) == stamp

    again.setup('fit')
    images, targets = next(iter(again.train_dataloader()))
    assert images.shape == (64, 3, 32, 32) and targets.dtype == torch.int64
    assert -1.0 <= images.min() and images.max() <= 1.0


def test_digits_defaults_are_the_imagenet_arguments_with_other_values(tmp_path):
    """DigitsDataModule takes exactly ImageNetDataModule's arguments (the signature LightningCLI reads), with the
    digits' defaults; an argument given still wins."""
    import inspect
    ours, parent = (inspect.signature(cls.__init__).parameters for cls in (DigitsDataModule, ImageNetDataModule))
    assert list(ours) == list(parent)
    changed = {name: p.default for name, p in ours.items() if p.default != parent[name].default}
    assert changed == {'root': None, 'batch_size': 64, 'num_workers': 2, 'img_size': 32, 'crop_pct': 1.0,
                       'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5), 'auto_augment': None, 're_prob': 0.0,
                       'hflip': 0.0, 'scale': (0.7, 1.0), 'color_jitter': 0.0, 'mixup_alpha': 0.0,
                       'cutmix_alpha': 0.0, 'label_smoothing': 0.0}
    dm = DigitsDataModule(str(tmp_path / 'digits'), 8, num_workers=0, hflip=0.5)
    assert (dm.root, dm.batch_size, dm.hflip, dm.img_size) == (tmp_path / 'digits', 8, 0.5, 32)
    with pytest.raises(TypeError, match='not_an_argument'):
        DigitsDataModule(not_an_argument=1)


def test_materialize_rebuilds_incomplete_tree_and_spares_foreign_folders(tmp_path):
    calls = []

    def write(folder):
        calls.append(folder)
        _write_image(folder / 'train' / 'x' / 'a.png', 0, 'png')
        return {'n': 1}

    root = tmp_path / 'data'
    (root / 'train').mkdir(parents=True)  # an interrupted, non-atomic write: no manifest
    assert materialize_atomically(root, write, 'manifest.json', 1, ('train', 'val')) == {'n': 1, 'version': 1}
    assert (root / 'train' / 'x' / 'a.png').is_file() and len(calls) == 1
    materialize_atomically(root, write, 'manifest.json', 1, ('train', 'val'))
    assert len(calls) == 1
    materialize_atomically(root, write, 'manifest.json', 2, ('train', 'val'))
    assert len(calls) == 2

    foreign = tmp_path / 'mine'
    foreign.mkdir()
    (foreign / 'thesis.tex').write_text('keep me')
    with pytest.raises(FileExistsError, match=re.escape(f'{foreign} exists but is not a complete data cache')):
        materialize_atomically(foreign, write, 'manifest.json', 1, ('train', 'val'))
    assert (foreign / 'thesis.tex').is_file()


def test_materialize_keeps_the_tree_of_a_process_that_finished_first(tmp_path):
    root = tmp_path / 'data'

    def slow_write(folder):
        # Another rank completes root while this one is still writing.
        materialize_atomically(root, lambda f: {'by': 'other'}, 'manifest.json', 1, ('train', 'val'))
        (folder / 'train').mkdir()
        return {'by': 'me'}

    assert materialize_atomically(root, slow_write, 'manifest.json', 1, ('train', 'val'))['by'] == 'other'
    assert [p.name for p in tmp_path.iterdir()] == ['data']
