"""Detection models: FPN shapes for every family at odd input sizes, output norms, anchors, every detector in training
and evaluation, results in the original image's coordinates, backbone weights, layer-wise lr decay, bad arguments."""
import math
from types import SimpleNamespace

import pytest
import torch
from timm.layers import GroupNorm1
from timm.models.metaformer import LayerNorm2dNoBias

from spanet_pl.errors import UserInputError
from spanet_pl.models import create_backbone
from spanet_pl.models.detection import DETECTOR_LEVELS, BackboneFPN, anchor_sizes, build_detector
from spanet_pl.tasks import DetectionModule
from spanet_pl.tasks.detection import layer_decay_ids
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from conftest import NANO_VARIANTS


def stage_sizes(side: int):
    """Map sides after the stem (7x7, stride 4, padding 2) and each 3x3 stride-2 downsampling (padding 1)."""
    sizes = [(side + 2 * 2 - 7) // 4 + 1]
    for _ in range(3):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


@pytest.mark.parametrize('variant', NANO_VARIANTS)
@pytest.mark.parametrize('detector', ['retinanet', 'mask_rcnn'])
def test_fpn_shapes_at_odd_sizes(variant, detector):
    height, width = 97, 75
    levels = DETECTOR_LEVELS[detector]
    body = create_backbone(variant, features_only=True, out_indices=levels)
    extra = LastLevelP6P7(body.feature_info.channels()[-1], 32) if detector == 'retinanet' else LastLevelMaxPool()
    fpn = BackboneFPN(body, 32, extra)
    outputs = fpn(torch.randn(2, 3, height, width))
    expected = [(h, w) for i, (h, w) in enumerate(zip(stage_sizes(height), stage_sizes(width))) if i in levels]
    for _ in range(5 - len(expected)):  # P6 (P7) or the max-pooled level: both halve with ceil
        expected.append(tuple(math.ceil(s / 2) for s in expected[-1]))
    assert [tuple(v.shape[-2:]) for v in outputs.values()] == expected
    assert all(v.shape[:2] == (2, 32) for v in outputs.values())
    assert list(outputs) == (['0', '1', '2', 'p6', 'p7'] if detector == 'retinanet' else ['0', '1', '2', '3', 'pool'])
    assert fpn.strides == [4 * 2 ** i for i in levels]


def test_output_norms_follow_the_official_backbones():
    v1 = BackboneFPN(create_backbone('spanet_nano', features_only=True), 16)
    v2 = BackboneFPN(create_backbone('spanetv2_nano_pure', features_only=True), 16)
    plain = BackboneFPN(create_backbone('spanet_nano', features_only=True), 16, out_norm=False)
    assert all(isinstance(n, GroupNorm1) for n in v1.norms) and all(isinstance(n, LayerNorm2dNoBias) for n in v2.norms)
    assert all(isinstance(n, torch.nn.Identity) for n in plain.norms)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in v1.modules())  # nothing frozen


def test_anchor_sizes():
    assert anchor_sizes('retinanet', 32)[:2] == ((32, 40, 51), (64, 81, 102))  # 3 scales per octave from 32 at P3
    assert anchor_sizes('mask_rcnn', 32) == ((32,), (64,), (128,), (256,), (512,))


def _tiny_batch(height=64, width=80):
    torch.manual_seed(0)
    images = [torch.rand(3, height, width), torch.rand(3, width, height)]
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    masks[0, 8:30, 10:34] = 1
    masks[1, 30:60, 40:70] = 1
    targets = [{'boxes': torch.tensor([[10., 8., 34., 30.], [40., 30., 70., 60.]]), 'labels': torch.tensor([1, 3]),
                'masks': masks},
               {'boxes': torch.zeros(0, 4), 'labels': torch.zeros(0, dtype=torch.int64),
                'masks': torch.zeros(0, width, height, dtype=torch.uint8)}]  # a negative image (a crop without boxes)
    return images, targets


DETECTOR_CASES = [
    ('retinanet', 'spanet_nano', {}),
    ('faster_rcnn', 'spanetv2_nano_pure', {}),
    ('mask_rcnn', 'spanetv2_nano_hybrid', {}),
    ('cascade_mask_rcnn', 'spanetv2_nano_pure', {'box_head_convs': 4, 'box_loss': 'giou'}),
]


@pytest.mark.parametrize('detector, variant, kwargs', DETECTOR_CASES)
def test_every_detector_trains_and_detects_in_original_coordinates(detector, variant, kwargs):
    module = DetectionModule(variant, num_classes=3, detector=detector, fpn_channels=16, mask_head_channels=16,
                             anchor_size=16, eval_min_size=128, eval_max_size=256, num_log_images=0,
                             detector_kwargs=dict(kwargs, **({} if detector == 'retinanet' else
                                                             {'box_batch_size_per_image': 16})))
    images, targets = _tiny_batch()
    module.train()
    losses = module.detector(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss) and len(losses) >= 2
    loss.backward()
    # every parameter takes part (DDP needs no find_unused_parameters), the negative image included
    assert [n for n, p in module.named_parameters() if p.grad is None] == []
    module.eval()
    with torch.no_grad():
        detections = module(images)
    for image, found in zip(images, detections):
        height, width = image.shape[-2:]  # evaluated at short side 128, reported on the 64-pixel original
        assert found['boxes'].shape[1:] == (4,) and len(found['boxes']) == len(found['scores']) == len(found['labels'])
        if len(found['boxes']):
            assert found['boxes'][:, 2].max() <= width and found['boxes'][:, 3].max() <= height
            assert found['labels'].min() >= 1 and found['labels'].max() <= 3
        if detector in ('mask_rcnn', 'cascade_mask_rcnn'):
            assert found['masks'].shape[1:] == (1, height, width)


@pytest.mark.parametrize('world, device, converted', [(1, 'cuda', False), (2, 'cpu', False), (2, 'cuda', True)])
def test_sync_batchnorm_only_distributed_on_gpus(world, device, converted):
    module = DetectionModule('spanet_nano', num_classes=2, detector='cascade_mask_rcnn', fpn_channels=16,
                             mask_head_channels=16, num_log_images=0, detector_kwargs={'box_head_convs': 1})
    module._trainer = SimpleNamespace(state=SimpleNamespace(fn='fit'), world_size=world,
                                      strategy=SimpleNamespace(root_device=torch.device(device)))
    module.configure_model()
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 3 and all(isinstance(m, torch.nn.SyncBatchNorm) == converted for m in norms)


def test_backbone_weights_load_into_the_detector(tmp_path):
    source = create_backbone('spanetv2_nano_pure', num_classes=7)
    path = tmp_path / 'classifier.pth'
    torch.save(source.state_dict(), path)
    module = DetectionModule('spanetv2_nano_pure', num_classes=2, detector='retinanet', fpn_channels=16,
                             pretrained=str(path), num_log_images=0)
    network = module.backbone.model
    torch.testing.assert_close(network.stem.conv.weight, source.stem.conv.weight)
    torch.testing.assert_close(network.stages[3].blocks[0].token_mixer.filter,
                               source.stages[3].blocks[0].token_mixer.filter)


def test_layer_decay_ids_follow_the_official_spanetv2_scheme():
    names = ['stem.conv.weight', 'stages.0.blocks.2.mlp.fc1.weight', 'stages.1.downsample.conv.weight',
             'stages.1.blocks.0.norm1.weight', 'stages.2.downsample.conv.weight', 'stages.2.blocks.0.mlp.fc1.weight',
             'stages.2.blocks.5.mlp.fc1.weight', 'stages.2.blocks.8.mlp.fc1.weight', 'stages.3.downsample.conv.weight',
             'stages.3.blocks.2.mlp.fc2.weight']
    ids = layer_decay_ids(names, [3, 3, 9, 3])  # S18: ids 0..6, as get_layer_id_for_spanetv2 with num_layers=6
    assert [ids[n] for n in names] == [0, 1, 2, 2, 3, 3, 4, 5, 6, 6] and ids[''] == 7


def test_layer_decay_scales_the_learning_rates():
    module = DetectionModule('spanetv2_nano_pure', num_classes=2, detector='retinanet', fpn_channels=16,
                             layer_decay=0.5, num_log_images=0,
                             optimizer=lambda groups: torch.optim.AdamW(groups, lr=1.0, weight_decay=0.05))
    optimizer = module._param_groups()
    optimizer = torch.optim.AdamW(optimizer, lr=1.0, weight_decay=0.05)
    for group in optimizer.param_groups:
        group['lr'] *= group['lr_scale']
    lr_of = {id(p): g['lr'] for g in optimizer.param_groups for p in g['params']}
    wd_of = {id(p): g['weight_decay'] for g in optimizer.param_groups for p in g['params']}
    network = module.backbone.model
    top = 3 + math.ceil(len(network.stages[2].blocks) / 3) + 1  # nano: stage 2 has two blocks -> ids 0..4, top 5
    assert lr_of[id(network.stem.conv.weight)] == 0.5 ** top
    assert lr_of[id(network.stages[3].blocks[0].mlp.fc1.weight)] == 0.5
    assert lr_of[id(module.detector.head.classification_head.cls_logits.weight)] == 1.0
    assert wd_of[id(network.stem.conv.bias)] == 0.0 and wd_of[id(network.stem.conv.weight)] == 0.05
    assert len({id(p) for p in module.parameters()}) == len(lr_of)  # every parameter exactly once


def test_bad_arguments_are_one_line():
    body = create_backbone('spanet_nano', features_only=True, out_indices=(1, 2, 3))
    with pytest.raises(UserInputError, match="detector_kwargs for 'retinanet': unknown box_score_thresh"):
        build_detector('retinanet', body, 3, detector_kwargs={'box_score_thresh': 0.5})
    with pytest.raises(UserInputError, match='min_size are set by the task'):
        build_detector('retinanet', body, 3, detector_kwargs={'min_size': 100})
    with pytest.raises(UserInputError, match=r'mask_rcnn reads backbone strides \[4, 8, 16, 32\]'):
        build_detector('mask_rcnn', body, 3)
    with pytest.raises(UserInputError, match="unknown detector 'yolo'"):
        DetectionModule('spanet_nano', detector='yolo')
    with pytest.raises(UserInputError, match='backbone_kwargs may not set out_indices'):
        DetectionModule('spanet_nano', backbone_kwargs={'out_indices': (0,)})
    with pytest.raises(UserInputError, match='cascade_mask_rcnn sets box_head per stage'):
        build_detector('cascade_mask_rcnn', create_backbone('spanet_nano', features_only=True), 3,
                       detector_kwargs={'box_head': None})
