"""COCO loading: the embedded digit scenes in COCO format, targets and transforms, and every kind of bad input (one
line naming the file / record / value, or a logged skip of one sample)."""
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

from datamodules import COCODataModule, DigitScenesCOCODataModule, materialize_digit_scenes_coco
from datamodules.coco import read_coco
from datamodules.det_transforms import RandomSizeCrop, detection_train_transform
from spanet_pl.errors import MissingPathError, UserInputError

W, H = 40, 30


def coco_tree(root, annotations=None, images=None, categories=None, split_images=None, write_images=True):
    """A COCO-layout folder with the same JSON for train2017 and val2017. Default: three 40x30 images; image 1 holds
    a box of category 3 and a crowd region, image 2 a box of category 5, image 3 nothing."""
    images = images if images is not None else [
        {'id': i, 'file_name': f'{i:04d}.png', 'width': W, 'height': H} for i in (1, 2, 3)]
    annotations = annotations if annotations is not None else [
        {'id': 1, 'image_id': 1, 'category_id': 3, 'bbox': [2, 3, 10, 8], 'area': 80.0, 'iscrowd': 0,
         'segmentation': [[2, 3, 12, 3, 12, 11, 2, 11]]},
        {'id': 2, 'image_id': 1, 'category_id': 5, 'bbox': [20, 10, 10, 10], 'area': 100.0, 'iscrowd': 1,
         'segmentation': [[20, 10, 30, 10, 30, 20, 20, 20]]},
        {'id': 3, 'image_id': 2, 'category_id': 5, 'bbox': [15, 5, 20, 20], 'area': 400.0, 'iscrowd': 0,
         'segmentation': [[15, 5, 35, 5, 35, 25, 15, 25]]},
    ]
    categories = categories if categories is not None else [{'id': 3, 'name': 'cat'}, {'id': 5, 'name': 'dog'}]
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    for split in ('train2017', 'val2017'):
        (root / split).mkdir(exist_ok=True)
        if write_images:
            for image in images:
                pixels = np.full((image['height'], image['width'], 3), 40 * image['id'] % 255, dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / image['file_name'])
        data = {'images': images, 'annotations': annotations, 'categories': categories}
        (root / 'annotations' / f'instances_{split}.json').write_text(json.dumps(data))
    return root


def test_digit_scenes_in_coco_format(tmp_path):
    root = materialize_digit_scenes_coco(str(tmp_path / 'scenes'), counts={'train': 6, 'val': 3})
    coco = read_coco(root / 'annotations' / 'instances_val2017.json')
    assert len(coco.imgs) == 3 and sorted(coco.cats) == list(range(1, 11))
    assert all(3 <= len(coco.imgToAnns[i]) <= 4 for i in coco.imgs)
    for ann in coco.anns.values():  # box and area are the mask's
        mask = coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        assert ann['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann['area'] == mask.sum()
    image = Image.open(root / 'val2017' / coco.imgs[1]['file_name'])
    assert image.size == (64, 64) and image.mode == 'RGB'
    # written once: a second call finds the manifest and leaves the files alone
    stamp = (root / 'annotations' / 'instances_val2017.json').stat().st_mtime_ns
    materialize_digit_scenes_coco(str(tmp_path / 'scenes'), counts={'train': 6, 'val': 3})
    assert (root / 'annotations' / 'instances_val2017.json').stat().st_mtime_ns == stamp

    data = DigitScenesCOCODataModule(root=str(root), batch_size=2, num_workers=0)
    assert data.num_classes == 10 and data.classes == [str(d) for d in range(10)]
    data.setup('fit')
    images, targets = next(iter(data.train_dataloader()))
    assert len(images) == 2 and images[0].shape == (3, 64, 64) and images[0].dtype == torch.float32
    assert targets[0]['masks'].shape[1:] == (64, 64) and targets[0]['labels'].min() >= 1


def test_targets_crowd_and_empty_images(tmp_path):
    data = COCODataModule(str(coco_tree(tmp_path)), batch_size=1, num_workers=0, scales=[], hflip=0.0)
    assert data.num_classes == 2 and data.classes == ['cat', 'dog']
    data.setup('fit')
    # training: the crowd region is dropped, image 3 (no annotation) is left out, as COCO training does
    assert data.train_dataset.image_ids == [1, 2]
    image, target = data.train_dataset[0]
    assert image.shape == (3, H, W) and float(image.max()) <= 1
    torch.testing.assert_close(target['boxes'], torch.tensor([[2., 3., 12., 11.]]))
    assert target['labels'].tolist() == [1] and target['masks'].shape == (1, H, W)
    assert int(target['masks'].sum()) == 80  # the polygon 2..12 x 3..11, rasterised by pycocotools
    # evaluation: every image, crowd regions flagged, the annotation's area as COCOeval reads it
    assert data.val_dataset.image_ids == [1, 2, 3]
    _, target = data.val_dataset[0]
    assert target['iscrowd'].tolist() == [0, 1] and target['labels'].tolist() == [1, 2]
    assert target['area'].tolist() == [80.0, 100.0]
    _, empty = data.val_dataset[2]
    assert empty['boxes'].shape == (0, 4) and empty['masks'].shape == (0, H, W)


def test_train_transforms_move_boxes_and_masks_together():
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.zeros(3, 100, 200, dtype=torch.uint8))
    mask = torch.zeros(1, 100, 200, dtype=torch.uint8)
    mask[0, 10:30, 20:60] = 1
    target = {'boxes': tv_tensors.BoundingBoxes([[20., 10., 60., 30.]], format='XYXY',
                                                  canvas_size=(100, 200)),
              'labels': torch.tensor([1]), 'masks': tv_tensors.Mask(mask)}
    flip = detection_train_transform(scales=[50], max_size=1000, hflip=1.0)
    out_image, out = flip(image, target)
    assert out_image.shape == (3, 50, 100) and out_image.dtype == torch.float32
    torch.testing.assert_close(out['boxes'].as_subclass(torch.Tensor), torch.tensor([[70., 5., 90., 15.]]))
    ys, xs = torch.nonzero(out['masks'][0], as_tuple=True)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (70, 90, 5, 15)
    # the 3x crop branch: every output box lies inside the image and keeps its mask; empty ones are removed
    crop = detection_train_transform(scales=[64], max_size=1000, hflip=0.0, crop_scales=[80], crop_size=(40, 60))
    for _ in range(20):
        out_image, out = crop(image, target)
        height, width = out_image.shape[-2:]
        assert min(height, width) == 64
        assert len(out['boxes']) == len(out['labels']) == len(out['masks'])
        if len(out['boxes']):
            box = out['boxes'][0]
            assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
    sizes = {tuple(RandomSizeCrop((40, 60))(image).shape[-2:]) for _ in range(30)}
    assert all(40 <= h <= 60 and 40 <= w <= 60 for h, w in sizes) and len(sizes) > 5


def _json(root):
    return root / 'annotations' / 'instances_val2017.json'


def _edit(root, change):
    data = json.loads(_json(root).read_text())
    change(data)
    _json(root).write_text(json.dumps(data))


@pytest.mark.parametrize('change, message', [
    (lambda d: d.pop('annotations'), "the key 'annotations' is missing"),
    (lambda d: d['images'][1].pop('width'), "images[1] has no 'width'"),
    (lambda d: d['annotations'][2].update(category_id=99), 'annotations[2] (id 3) has unknown category_id 99'),
    (lambda d: d['annotations'][0].update(image_id=42), 'annotations[0] (id 1) refers to image_id 42'),
    (lambda d: d['annotations'][0].update(bbox=[1, 2, 3]), 'annotations[0] (id 1) has bbox [1, 2, 3]'),
])
def test_bad_json_is_one_line_naming_file_record_and_value(tmp_path, change, message):
    root = coco_tree(tmp_path)
    _edit(root, change)
    with pytest.raises(UserInputError) as error:
        COCODataModule(str(root), num_workers=0)
    text = str(error.value)
    assert message in text and str(_json(root)) in text and '\n' not in text


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(MissingPathError, match='does not exist'):
        COCODataModule(str(tmp_path / 'nowhere'))
    root = coco_tree(tmp_path / 'coco')
    _json(root).unlink()
    with pytest.raises(MissingPathError, match='instances_val2017.json does not exist'):
        COCODataModule(str(root))
    coco_tree(root)
    _json(root).write_text('{"images": [')
    with pytest.raises(UserInputError, match=r'instances_val2017.json: malformed JSON \(Expecting value'):
        COCODataModule(str(root))


def test_boxes_outside_the_image_are_clipped_or_skipped(tmp_path, caplog):
    annotations = [
        {'id': 1, 'image_id': 1, 'category_id': 3, 'bbox': [-5, 20, 15, 20], 'area': 1.0},  # clipped to [0, 20, 10, 30]
        {'id': 2, 'image_id': 1, 'category_id': 3, 'bbox': [50, 5, 10, 10], 'area': 1.0},  # outside: skipped
        {'id': 3, 'image_id': 2, 'category_id': 5, 'bbox': [5, 5, 0, 10], 'area': 1.0},  # empty: skipped
    ]
    data = COCODataModule(str(coco_tree(tmp_path, annotations=annotations)), num_workers=0, batch_size=1,
                          scales=[], hflip=0.0)
    with caplog.at_level(logging.WARNING):
        data.setup('fit')
    text = caplog.text
    assert 'skipped 2 annotations whose box is empty or outside its image' in text
    assert 'id 2 bbox [50, 5, 10, 10]' in text
    assert 'clipped 1 boxes' in text
    assert data.train_dataset.image_ids == [1]  # image 2 lost its only box
    _, target = data.train_dataset[0]
    torch.testing.assert_close(target['boxes'], torch.tensor([[0., 20., 10., 30.]]))
    # no segmentation: the (clipped) box is the mask
    assert int(target['masks'].sum()) == 100


def test_unreadable_or_missized_images_are_logged_and_skipped(tmp_path, caplog):
    root = coco_tree(tmp_path)
    (root / 'train2017' / '0001.png').unlink()
    Image.fromarray(np.zeros((H + 1, W, 3), dtype=np.uint8)).save(root / 'val2017' / '0002.png')
    data = COCODataModule(str(root), num_workers=0, batch_size=1, scales=[], hflip=0.0)
    data.setup('fit')
    with caplog.at_level(logging.WARNING):
        _, target = data.train_dataset[0]  # image 1 is gone: image 2 is served instead
        assert int(target['image_id']) == 2
        _, target = data.val_dataset[1]  # image 2 has another size than its record: image 3 instead
        assert int(target['image_id']) == 3
    assert '0001.png' in caplog.text and 'FileNotFoundError' in caplog.text
    assert 'image is 40x31 but its record says 40x30' in caplog.text


def test_too_few_training_images_and_category_mismatch(tmp_path):
    root = coco_tree(tmp_path)
    with pytest.raises(UserInputError, match='has 2 annotated images, fewer than batch_size=4'):
        COCODataModule(str(root), batch_size=4, num_workers=0).setup('fit')
    data = json.loads((root / 'annotations' / 'instances_train2017.json').read_text())
    data['categories'][0]['name'] = 'lion'
    (root / 'annotations' / 'instances_train2017.json').write_text(json.dumps(data))
    with pytest.raises(UserInputError, match='have different categories'):
        COCODataModule(str(root), batch_size=1, num_workers=0).setup('fit')


def test_rle_masks_decode(tmp_path):
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[4:9, 6:16] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    annotations = [{'id': 1, 'image_id': 1, 'category_id': 3, 'bbox': [6, 4, 10, 5], 'area': 50.0, 'iscrowd': 0,
                    'segmentation': {'size': [H, W], 'counts': rle['counts'].decode()}}]
    data = COCODataModule(str(coco_tree(tmp_path, annotations=annotations)), num_workers=0, batch_size=1,
                          scales=[], hflip=0.0)
    data.setup('fit')
    _, target = data.train_dataset[0]
    np.testing.assert_array_equal(target['masks'][0].numpy(), mask)
