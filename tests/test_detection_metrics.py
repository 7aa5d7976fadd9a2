"""The detection task's COCO metrics against pycocotools' own COCOeval on a tiny hand-made case with a known AP."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datamodules.coco import COCODataModule
from spanet_pl.tasks import DetectionModule

# Two 64x48 images, one category; image 1 also holds a crowd region. Detections: both objects found exactly
# (scores 0.9 and 0.7), one false positive in between (0.8), one detection inside the crowd region (ignored).
# Ranked: TP, FP, TP -> precision 1 up to recall 0.5, then 2/3 up to recall 1; COCO's 101-point interpolation:
# AP = (51 * 1 + 50 * 2/3) / 101 at every IoU threshold (the boxes are exact).
KNOWN_AP = (51 + 50 * 2 / 3) / 101
GT_BOXES = {1: [[4, 6, 20, 16]], 2: [[30, 10, 24, 30]]}  # xywh
CROWD_BOX = [40, 30, 20, 14]
DETECTIONS = [(1, [4, 6, 20, 16], 0.9), (2, [2, 2, 10, 10], 0.8), (2, [30, 10, 24, 30], 0.7),
              (1, [41, 31, 18, 12], 0.95)]


def _box_mask(box, height=48, width=64):
    mask = np.zeros((height, width), dtype=np.uint8)
    x, y, w, h = box
    mask[y:y + h, x:x + w] = 1
    return mask


def _write_tiny_coco(root):
    from pycocotools import mask as mask_utils
    images, annotations = [], []
    for image_id in (1, 2):
        images.append({'id': image_id, 'file_name': f'{image_id}.png', 'width': 64, 'height': 48})
        for box in GT_BOXES[image_id]:
            rle = mask_utils.encode(np.asfortranarray(_box_mask(box)))
            annotations.append({'id': len(annotations) + 1, 'image_id': image_id, 'category_id': 7, 'iscrowd': 0,
                                'bbox': box, 'area': float(box[2] * box[3]),
                                'segmentation': {'size': rle['size'], 'counts': rle['counts'].decode()}})
    rle = mask_utils.encode(np.asfortranarray(_box_mask(CROWD_BOX)))
    annotations.append({'id': len(annotations) + 1, 'image_id': 1, 'category_id': 7, 'iscrowd': 1,
                        'bbox': CROWD_BOX, 'area': float(CROWD_BOX[2] * CROWD_BOX[3]),
                        'segmentation': {'size': rle['size'], 'counts': rle['counts'].decode()}})
    data = {'images': images, 'annotations': annotations, 'categories': [{'id': 7, 'name': 'thing'}]}
    (root / 'annotations').mkdir(parents=True)
    for split in ('train2017', 'val2017'):
        (root / split).mkdir()
        for image in images:
            Image.fromarray(np.zeros((48, 64, 3), dtype=np.uint8)).save(root / split / image['file_name'])
        (root / 'annotations' / f'instances_{split}.json').write_text(json.dumps(data))
    return root / 'annotations' / 'instances_val2017.json'


def _cocoeval(gt_file, iou_type):
    from pycocotools import mask as mask_utils
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        results = []
        for image_id, box, score in DETECTIONS:
            result = {'image_id': image_id, 'category_id': 7, 'score': score, 'bbox': box}
            if iou_type == 'segm':
                rle = mask_utils.encode(np.asfortranarray(_box_mask(box)))
                result['segmentation'] = {'size': rle['size'], 'counts': rle['counts'].decode()}
            results.append(result)
        evaluation = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats  # AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ...


def _predictions(image_id):
    boxes, scores = [], []
    for i, box, score in DETECTIONS:
        if i == image_id:
            x, y, w, h = box
            boxes.append([x, y, x + w, y + h])
            scores.append(score)
    masks = torch.stack([torch.from_numpy(_box_mask(b)).float()[None] for i, b, _ in DETECTIONS if i == image_id])
    return {'boxes': torch.tensor(boxes, dtype=torch.float32), 'scores': torch.tensor(scores),
            'labels': torch.ones(len(boxes), dtype=torch.int64), 'masks': masks}


@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_metrics_match_cocoeval_and_the_known_ap(tmp_path, iou_type):
    gt_file = _write_tiny_coco(tmp_path)
    stats = _cocoeval(gt_file, iou_type)
    assert stats[0] == pytest.approx(KNOWN_AP, abs=1e-6)  # the hand computation holds in COCOeval itself
    assert stats[1] == pytest.approx(KNOWN_AP, abs=1e-6)

    data = COCODataModule(str(tmp_path), batch_size=1, num_workers=0)
    data.setup('validate')
    module = DetectionModule('spanet_nano', num_classes=data.num_classes, detector='mask_rcnn', fpn_channels=16,
                             mask_head_channels=16, num_log_images=0)
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    module.log_dict = lambda values, **kwargs: logged.update({k: float(v) for k, v in values.items()})
    for index in range(len(data.val_dataset)):
        _, target = data.val_dataset[index]
        # the evaluation path of the task: its conversion of predictions and targets, then its metric
        module.val_metrics.update([module._for_metric(_predictions(int(target['image_id'])), score=True)],
                                  [module._for_metric(target)])
    module.on_validation_epoch_end()
    names = ['AP', 'AP50', 'AP75', 'APs', 'APm', 'APl']
    ours = [logged[f'val/{iou_type}_{name}'] for name in names]
    np.testing.assert_allclose(ours, stats[:6], atol=1e-6)
    assert logged[f'val/{iou_type}_AR100'] == pytest.approx(stats[8], abs=1e-6)
    assert ours[0] == pytest.approx(KNOWN_AP, abs=1e-6)
