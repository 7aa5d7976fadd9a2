"""Contracts of the segmentation datamodules on a tiny real ADE20K tree and on the embedded digit scenes."""
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

import datamodules.scenes as scenes
from datamodules import ADE20K_CLASSES, ADE20KDataModule, DigitScenesDataModule, materialize_digit_scenes
from datamodules.seg_transforms import IGNORE_INDEX, SegRandomCrop, rescale_size
from spanet_pl.callbacks.segmentation import default_palette
from spanet_pl.errors import MissingPathError, UserInputError

from conftest import ADE_COLOURS as COLOURS, ADE_H as H, ADE_W as W, ade20k_scene as _scene
from conftest import ade20k_tree, write_ade20k_pair as _write_pair

CLASSES = 3


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors on a shared 2-core machine: extra intra-op threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tree(tmp_path):
    """``tmp_path/ADEChallengeData2016`` with 4 training and 2 validation 48x36 scenes (one validation one 36x48)."""
    ade20k_tree(tmp_path / 'ADEChallengeData2016')
    return tmp_path


def _dm(root, **kwargs):
    kwargs = {'batch_size': 2, 'num_workers': 0, 'num_classes': CLASSES, 'crop_size': (24, 24), 'scale': (W, H),
              **kwargs}
    return ADE20KDataModule(str(root), **kwargs)


def _expected_mask(labels: np.ndarray) -> np.ndarray:
    expected = labels.astype(np.int64) - 1
    expected[(labels == 0) | (labels == 255)] = IGNORE_INDEX
    return expected


def test_attributes_and_root_forms(tree):
    dm = _dm(tree)
    assert dm.root == tree / 'ADEChallengeData2016' and _dm(dm.root).root == dm.root
    assert dm.num_classes == CLASSES and dm.classes == ['class_0', 'class_1', 'class_2']
    assert dm.ignore_index == 255 and dm.batch_size == 2
    assert dm.palette == default_palette(CLASSES).tolist() and len(dm.palette) == CLASSES  # the overlays' colours
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in dm.palette) and [0, 0, 0] not in dm.palette
    assert len({tuple(c) for c in _dm(tree, num_classes=150).palette}) == 150
    assert _dm(tree, class_names=['a', 'b', 'c']).classes == ['a', 'b', 'c']
    assert len(ADE20K_CLASSES) == 150 and ADE20K_CLASSES[:3] == ('wall', 'building', 'sky')
    assert _dm(tree, num_classes=150).classes == list(ADE20K_CLASSES)


def test_train_batches(tree):
    dm = _dm(tree, ratio_range=(0.5, 2.0))
    dm.setup('fit')
    batches = list(dm.train_dataloader())
    assert len(batches) == 2
    for images, masks in batches:
        assert images.shape == (2, 3, 24, 24) and images.dtype == torch.float32
        assert masks.shape == (2, 24, 24) and masks.dtype == torch.int64
        assert set(masks.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}


def test_reduce_zero_label_is_exact(tree):
    # scale == image size: the evaluation resize is the identity, so the mask is the raw annotation reduced.
    dm = _dm(tree)
    dm.setup('validate')
    _, labels = _scene()
    image, mask = dm.val_dataset[0]
    assert image.shape == (3, H, W) and mask.dtype == torch.int64
    expected = _expected_mask(labels)
    assert torch.equal(mask, torch.from_numpy(expected))
    assert mask[0, 0] == 255 and mask[5, 0] == 0 and mask[10, 10] == 1 and mask[20, 30] == 2 and mask[-1, -1] == 255

    plain = _dm(tree, num_classes=4, reduce_zero_label=False)
    plain.setup('validate')
    assert torch.equal(plain.val_dataset[0][1], torch.from_numpy(labels.astype(np.int64)))


def _median_colours(image: torch.Tensor, mask: torch.Tensor):
    """Median colour of the interior of each class (pixels whose 3x3 neighbourhood has the same label: resizing
    and JPEG blur the edges)."""
    colours = {}
    for k in mask.unique().tolist():
        inside = -torch.nn.functional.max_pool2d(-(mask == k).float()[None], 3, stride=1, padding=1)[0] == 1
        if k != IGNORE_INDEX and inside.sum() >= 4:
            colours[k] = image[:, inside].median(dim=1).values
    return colours


def test_image_and_mask_stay_aligned(tree):
    dm = _dm(tree, ratio_range=(0.5, 2.0), hflip=1.0, photometric_distortion=False, mean=(0, 0, 0), std=(1, 1, 1))
    dm.setup('fit')
    seen = set()
    for trial in range(12):
        image, mask = dm.train_dataset[trial % 4]
        for k, colour in _median_colours(image, mask).items():
            expected = torch.tensor(COLOURS[k + 1], dtype=torch.float32) / 255
            assert torch.allclose(colour, expected, atol=0.12), (trial, k, colour, expected)
            seen.add(k)
        assert (mask[image.abs().sum(0) == 0] == IGNORE_INDEX).all()  # padding is ignored
    assert seen == {0, 1, 2}


def test_train_flip_and_padding(tree):
    # Ratio 0.5: the 48x36 scene becomes 24x18, so the 24x24 crop keeps the full width and pads 6 rows.
    dm = _dm(tree, ratio_range=(0.5, 0.5), hflip=1.0, photometric_distortion=False, mean=(0, 0, 0), std=(1, 1, 1))
    dm.setup('fit')
    image, mask = dm.train_dataset[0]
    padded = (image.abs().sum(0) == 0) & (mask == IGNORE_INDEX)
    assert padded.sum() == 6 * 24 and padded.all(dim=1).sum() == 6
    red, blue = (mask == 1).nonzero()[:, 1].float().mean(), (mask == 2).nonzero()[:, 1].float().mean()
    assert red > 12 > blue  # red was left of blue before the flip


def test_photometric_distortion_changes_only_the_image(tree):
    plain = _dm(tree, ratio_range=(1, 1), crop_size=(H, W), photometric_distortion=False, hflip=0.0)
    jitter = _dm(tree, ratio_range=(1, 1), crop_size=(H, W), photometric_distortion=True, hflip=0.0)
    plain.setup('fit')
    jitter.setup('fit')
    image, mask = plain.train_dataset[0]
    changed = 0
    for _ in range(5):
        other_image, other_mask = jitter.train_dataset[0]
        assert torch.equal(mask, other_mask)
        changed += not torch.allclose(image, other_image)
    assert changed


def test_val_short_side_512_keeps_aspect_masks_stay_original(tree):
    dm = _dm(tree, scale=(2048, 512))
    dm.setup('validate')
    shapes = []
    for images, masks, sized in dm.val_dataloader():
        assert images.dtype == torch.float32 and masks.dtype == torch.int64 and images.shape[:2] == (1, 3)
        assert sized['input_size'].tolist() == [list(images.shape[2:])] and sized['size'].tolist() == [
            list(masks.shape[1:])]
        shapes.append((tuple(images.shape[2:]), tuple(masks.shape[1:])))
    # 48x36 → 683x512 and its transpose; the masks are the annotations as read (reduced), at 48x36
    assert shapes == [((512, 683), (H, W)), ((683, 512), (W, H))]
    assert rescale_size((H, W), (2048, 512)) == (512, 683)
    assert sum(1 for _ in dm.test_dataloader()) == 2
    _, masks, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(masks[0], torch.from_numpy(_expected_mask(_scene()[1])))


def test_eval_batches_pad_to_the_largest(tree):
    dm = _dm(tree, eval_batch_size=2)  # scale (W, H): no resize, a plain pair of padded tensors
    dm.setup('validate')
    (images, masks), = list(dm.val_dataloader())
    assert images.shape == (2, 3, W, W) and masks.shape == (2, W, W)
    assert (masks[0, H:] == IGNORE_INDEX).all() and (images[0, :, H:] == 0).all()
    assert (masks[1, :, H:] == IGNORE_INDEX).all() and (images[1, :, :, H:] == 0).all()

    dm = _dm(tree, eval_batch_size=2, scale=(2 * W, 2 * H))  # resized images, original masks: padded apart
    dm.setup('validate')
    (images, masks, sized), = list(dm.val_dataloader())
    assert images.shape == (2, 3, 2 * W, 2 * W) and masks.shape == (2, W, W)
    assert sized['input_size'].tolist() == [[2 * H, 2 * W], [2 * W, 2 * H]]
    assert sized['size'].tolist() == [[H, W], [W, H]]


def test_predict(tree):
    dm = _dm(tree, eval_batch_size=2, scale=(W // 2, H // 2))  # both validation images at half size, one batch
    dm.setup('predict')
    assert dm.predict_paths == sorted(str(p) for p in (tree / 'ADEChallengeData2016/images/validation').iterdir())
    (images, meta), = list(dm.predict_dataloader())
    assert images.dtype == torch.float32 and images.shape == (2, 3, W // 2, W // 2)  # padded to the larger one
    assert meta['index'].tolist() == [0, 1]
    assert meta['size'].tolist() == [[H, W], [W, H]]  # the second image is the transposed scene
    assert meta['input_size'].tolist() == [[H // 2, W // 2], [W // 2, H // 2]]


def test_predict_root(tree, tmp_path):
    folder = tmp_path / 'mine'
    for path in (folder / 'b.png', folder / 'sub' / 'a.jpg'):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_scene()[0]).save(path)
    (folder / 'notes.txt').write_text('not an image')
    dm = _dm(tree, predict_root=str(folder))
    dm.setup('predict')
    assert dm.predict_paths == [str(folder / 'b.png'), str(folder / 'sub' / 'a.jpg')]
    with pytest.raises(MissingPathError, match=r'predict_root .*nowhere does not exist'):
        _dm(tree, predict_root=str(tmp_path / 'nowhere'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(UserInputError, match=r'predict_root .*empty holds no image file'):
        _dm(tree, predict_root=str(tmp_path / 'empty')).setup('predict')


def test_cat_max_ratio_redraws_crops():
    # 80 of 100 columns are class 0: most 20-wide crops hold class 0 only.
    mask = torch.zeros(40, 100, dtype=torch.uint8)
    mask[:, 80:] = torch.arange(20, dtype=torch.uint8) % 2 + 1
    image = tv_tensors.Image(torch.zeros(3, 40, 100, dtype=torch.uint8))

    def balanced_rate(ratio):
        crop = SegRandomCrop((40, 20), cat_max_ratio=ratio)
        hits = 0
        for _ in range(100):
            _, out = crop(image, tv_tensors.Mask(mask))
            counts = torch.bincount(out.flatten().long(), minlength=3)
            hits += counts.max() / counts.sum() < 0.75
        return hits

    assert balanced_rate(1.0) < 40 < 60 < balanced_rate(0.75)


# ---- bad input -------------------------------------------------------------------------------------------------


def test_missing_root_and_split_folders(tree, tmp_path):
    with pytest.raises(MissingPathError, match='does not exist'):
        _dm(tmp_path / 'nowhere')
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(MissingPathError, match=r'images/training'):
        _dm(empty)
    for sub in ('annotations/validation', 'images/validation'):
        os.rename(tree / 'ADEChallengeData2016' / sub, tmp_path / 'moved')
        with pytest.raises(MissingPathError, match=sub):
            _dm(tree)
        os.rename(tmp_path / 'moved', tree / 'ADEChallengeData2016' / sub)
    _dm(tree)


def test_images_without_annotation_are_listed(tree):
    base = tree / 'ADEChallengeData2016'
    image, _ = _scene()
    for i in range(7):
        _write_pair(base, 'training', f'orphan_{i}', image=image)
    with pytest.raises(UserInputError, match=r'7 of 11 images .* no annotation') as info:
        _dm(tree)
    message = str(info.value)
    assert 'orphan_0.jpg, orphan_1.jpg' in message and '(+2 more)' in message and 'orphan_6' not in message
    assert '\n' not in message


def test_size_mismatch_is_a_user_error(tree):
    annotation = tree / 'ADEChallengeData2016/annotations/training/ADE_train_00000002.png'
    Image.open(annotation).resize((W // 2, H // 2)).save(annotation)
    dm = _dm(tree)
    dm.setup('fit')
    dm.train_dataset[1]
    with pytest.raises(UserInputError, match=r'ADE_train_00000002.png is 24x18 but its image .*ADE_train_00000002.jpg '
                                             r'is 48x36'):
        dm.train_dataset[2]


def test_label_values_out_of_range(tree):
    _, labels = _scene()
    labels[5, 5], labels[6, 6] = 7, 200
    Image.fromarray(labels, mode='L').save(tree / 'ADEChallengeData2016/annotations/validation/ADE_val_00000000.png')
    dm = _dm(tree)
    dm.setup('validate')
    with pytest.raises(UserInputError, match=r'ADE_val_00000000.png has label values 7, 200 outside num_classes=3'):
        dm.val_dataset[0]
    # 3 is the last class with reduce_zero_label, and out of range without it.
    plain = _dm(tree, reduce_zero_label=False)
    plain.setup('validate')
    with pytest.raises(UserInputError, match=r'values 3, 7, 200 outside .* expected 0..2 or 255'):
        plain.val_dataset[0]
    with pytest.raises(UserInputError, match=r'ADE_val_00000001.png has label values 3 outside'):
        plain.val_dataset[1]


def test_colour_annotation_is_rejected(tree):
    path = tree / 'ADEChallengeData2016/annotations/training/ADE_train_00000000.png'
    Image.open(path).convert('RGB').save(path)
    dm = _dm(tree)
    dm.setup('fit')
    with pytest.raises(UserInputError, match='mode RGB'):
        dm.train_dataset[0]


def test_corrupt_image_is_logged_and_skipped(tree, caplog):
    (tree / 'ADEChallengeData2016/images/training/ADE_train_00000001.jpg').write_bytes(b'not a jpeg')
    dm = _dm(tree)
    dm.setup('fit')
    with caplog.at_level(logging.WARNING, logger='datamodules.imagenet'):
        image, mask = dm.train_dataset[1]
    assert image.shape == (3, 24, 24) and dm.train_dataset.num_skipped == 1
    assert 'ADE_train_00000001.jpg' in caplog.text

    (tree / 'ADEChallengeData2016/annotations/training/ADE_train_00000002.png').write_bytes(b'\x89PNG truncated')
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='datamodules.imagenet'):
        dm.train_dataset[2]
    assert dm.train_dataset.num_skipped == 2 and 'annotation' in caplog.text and 'ADE_train_00000002.png' in caplog.text


@pytest.mark.parametrize('kwargs, match', [
    ({'crop_size': (0, 24)}, 'crop_size'),
    ({'ratio_range': (2.0, 0.5)}, 'ratio_range'),
    ({'num_classes': 255}, 'num_classes'),
    ({'hflip': 1.5}, 'hflip'),
    ({'eval_batch_size': 0}, 'eval_batch_size'),
    ({'class_names': ['a', 'b']}, 'class_names has 2 names'),
])
def test_bad_arguments(tree, kwargs, match):
    with pytest.raises(UserInputError, match=match):
        _dm(tree, **kwargs)


def test_batch_larger_than_training_set(tree):
    dm = _dm(tree, batch_size=5)
    with pytest.raises(UserInputError, match='fewer than batch_size=5'):
        dm.setup('fit')


# ---- digit scenes ----------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def scenes_root(tmp_path_factory):
    return materialize_digit_scenes(str(tmp_path_factory.mktemp('data') / 'digit_scenes'))


def test_digit_scenes_layout(scenes_root):
    base = scenes_root / 'ADEChallengeData2016'
    for kind, ext in (('images', '.jpg'), ('annotations', '.png')):
        for split, count in (('training', 600), ('validation', 120)):
            names = sorted(os.listdir(base / kind / split))
            assert len(names) == count and all(n.endswith(ext) for n in names)
    image = Image.open(base / 'images/training/ADE_train_00000001.jpg')
    annotation = Image.open(base / 'annotations/training/ADE_train_00000001.png')
    assert image.size == annotation.size == (64, 64) and image.mode == 'RGB' and annotation.mode == 'L'
    manifest = json.loads((scenes_root / 'digit_scenes_manifest.json').read_text())
    assert manifest['counts'] == {'train': 600, 'val': 120} and manifest['classes'][0] == 'background'
    for split in ('train', 'val'):
        values = {int(v) for v in manifest['annotation_pixels'][split]}
        assert values == set(range(12))  # unlabelled, background and every digit
    values = set()
    for name in sorted(os.listdir(base / 'annotations/validation'))[:20]:
        values |= set(np.unique(np.asarray(Image.open(base / 'annotations/validation' / name))).tolist())
    assert values <= set(range(12)) and {0, 1} <= values


def test_digit_scenes_are_deterministic_and_reused(scenes_root, tmp_path):
    manifest = scenes_root / 'digit_scenes_manifest.json'
    first = scenes_root / 'ADEChallengeData2016/annotations/training/ADE_train_00000001.png'
    stamps = manifest.stat().st_mtime_ns, first.stat().st_mtime_ns
    assert materialize_digit_scenes(str(scenes_root)) == scenes_root
    assert (manifest.stat().st_mtime_ns, first.stat().st_mtime_ns) == stamps

    scenes._write_scenes(tmp_path, {'train': 3, 'val': 1})
    for rel in ('annotations/training/ADE_train_00000003.png', 'images/training/ADE_train_00000003.jpg',
                'annotations/validation/ADE_val_00000001.png'):
        ours, theirs = (np.asarray(Image.open(root / 'ADEChallengeData2016' / rel)) for root in (tmp_path,
                                                                                                scenes_root))
        assert np.array_equal(ours, theirs), rel


def test_digit_pools_are_disjoint():
    _, _, pools = scenes.digits_split()
    assert not set(pools['train']) & set(pools['val']) and len(pools['train']) + len(pools['val']) == 1797


def test_digit_scenes_datamodule(scenes_root, monkeypatch):
    monkeypatch.setenv('SPANET_PL_DATA', str(scenes_root.parent))
    dm = DigitScenesDataModule(num_workers=0)  # default root: the tree written above, not rewritten
    assert isinstance(dm, ADE20KDataModule) and dm.root == scenes_root / 'ADEChallengeData2016'
    assert dm.num_classes == 11 and dm.classes == ['background'] + [str(d) for d in range(10)]
    assert len(dm.palette) == 11 and dm.batch_size == 16 and dm.ignore_index == 255
    assert (dm.eval_batch_size, dm.crop_size, dm.ratio_range, dm.cat_max_ratio, dm.hflip) == (16, (64, 64),
                                                                                              (0.75, 1.5), 1.0, 0.0)
    dm.setup('fit')
    assert len(dm.train_dataset) == 600 and len(dm.val_dataset) == 120
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 64, 64) and images.dtype == torch.float32
    assert masks.shape == (16, 64, 64) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) <= set(range(11)) | {IGNORE_INDEX}
    images, masks = next(iter(dm.val_dataloader()))
    assert images.shape == (16, 3, 64, 64) and masks.shape == (16, 64, 64)
    assert (masks == 0).float().mean() > 0.6 and ((masks > 0) & (masks < 11)).any()
