"""Segmentation to the papers' settings: UperNet + auxiliary head, stage-wise lr decay under timm's poly schedule,
SyncBN only where it means something, multi-scale + flip evaluation and the per-class report."""
import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.classification import MulticlassJaccardIndex

from spanet_pl.callbacks.segmentation import SegmentationReport, confusion_image, per_class_scores
from spanet_pl.errors import UserInputError
from spanet_pl.models import create_backbone
from spanet_pl.models.heads import FCNHead, UperNetHead
from spanet_pl.tasks import SegmentationModule
from spanet_pl.tasks._common import stage_lr_decay_groups
from spanet_pl.tasks.seg_inference import aug_inference, aug_tag

from test_segmentation import NUM_CLASSES, SceneData, scenes

UPERNET = {'head': 'upernet', 'head_kwargs': {'channels': 16}, 'aux_weight': 0.4, 'aux_kwargs': {'channels': 8}}


def trainer(tmp_path, **kwargs):
    kwargs = {'accelerator': 'cpu', 'devices': 1, 'max_steps': 2, 'limit_val_batches': 2, 'num_sanity_val_steps': 0,
              'default_root_dir': str(tmp_path), 'enable_progress_bar': False, 'enable_model_summary': False, 'log_every_n_steps': 1,
              'logger': TensorBoardLogger(str(tmp_path), name='seg', default_hp_metric=False), **kwargs}
    return Trainer(**kwargs)


@pytest.fixture(scope='module')
def upernet():
    torch.manual_seed(0)
    return SegmentationModule('spanetv2_nano_pure', num_classes=NUM_CLASSES, num_log_images=0, **UPERNET).eval()


# --- UperNet and the auxiliary head --------------------------------------------------------------------------------

@pytest.mark.parametrize('variant', ['spanet_nano', 'spanetv2_nano_hybrid'])
def test_upernet_and_aux_shapes_at_several_sizes(variant):
    backbone = create_backbone(variant, features_only=True).eval()
    channels = backbone.feature_info.channels()
    head, aux = UperNetHead(channels, 7, channels=16).eval(), FCNHead(channels, 7, channels=8, in_index=2).eval()
    with torch.no_grad():
        for size in ((64, 96), (50, 70), (33, 33), (128, 128)):
            features = backbone(torch.randn(2, 3, *size))
            assert head(features).shape[-2:] == features[0].shape[-2:]  # stride 4, rounded as the backbone rounds
            assert aux(features).shape[-2:] == features[2].shape[-2:]  # stride 16
            assert head(features).shape[:2] == aux(features).shape[:2] == (2, 7)
    assert UperNetHead(channels, 3, norm='gn', pool_scales=(1, 3)).eval()(features).shape == (2, 3, 32, 32)
    with pytest.raises(UserInputError, match=r'pool_scales must be positive'):
        UperNetHead(channels, 3, pool_scales=(0, 2))


def test_aux_loss_is_weighted_and_every_parameter_learns(upernet):
    images, masks = scenes(2, (40, 56), 0)
    upernet.train()
    loss, parts = upernet.training_loss(images, masks)
    upernet.eval()
    assert set(parts) == {'decode', 'aux'}
    torch.testing.assert_close(loss, parts['decode'] + 0.4 * parts['aux'])
    upernet.zero_grad()
    loss.backward()
    assert [n for n, p in upernet.named_parameters() if p.grad is None] == []
    upernet.zero_grad()
    assert upernet(images).shape == (2, NUM_CLASSES, 40, 56)  # inference ignores the auxiliary head
    no_aux = SegmentationModule('spanet_nano', num_classes=NUM_CLASSES, head='upernet', num_log_images=0)
    assert no_aux.aux_head is None and set(no_aux.training_loss(images, masks)[1]) == {'decode'}


# --- optimizer groups, schedule, SyncBN ----------------------------------------------------------------------------

def test_stage_lr_decay_groups_follow_the_official_constructor(upernet):
    groups = stage_lr_decay_groups(upernet, 'backbone.model.', 0.9, 7)
    scale_of = {id(p): (g['lr_scale'], g.get('weight_decay')) for g in groups for p in g['params']}
    named = dict(upernet.named_parameters())
    assert len(scale_of) == len(named) == sum(len(g['params']) for g in groups)
    # SPANetV2-official stage_wise: scale = 0.9 ** (num_layers + 2 - 1 - id); stem/downsampling id 0, stage i id i+1
    expected = {'backbone.model.stem.conv.weight': 0.9 ** 8, 'backbone.model.stages.1.downsample.conv.weight': 0.9 ** 8,
                'backbone.model.stages.0.blocks.0.mlp.fc1.weight': 0.9 ** 7,
                'backbone.model.stages.2.blocks.0.mlp.fc1.weight': 0.9 ** 5,
                'backbone.model.stages.3.blocks.0.mlp.fc1.weight': 0.9 ** 4,
                'head.fuse.0.weight': 1.0, 'aux_head.convs.0.0.weight': 1.0}
    for name, scale in expected.items():
        assert scale_of[id(named[name])] == (pytest.approx(scale), None), name
    assert scale_of[id(named['head.fuse.1.bias'])] == (1.0, 0.0)
    assert scale_of[id(named['backbone.model.stem.conv.bias'])] == (pytest.approx(0.9 ** 8), 0.0)


def test_fit_poly_with_warmup_and_stage_decay(tmp_path):
    module = SegmentationModule('spanetv2_nano_pure', num_classes=NUM_CLASSES, num_log_images=0, **UPERNET,
                                warmup_steps=1, warmup_lr=1e-6, poly_power=1.0, stage_lr_decay=0.9,
                                stage_lr_decay_layers=7,
                                optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05))
    fit = trainer(tmp_path, max_steps=3, limit_val_batches=0, logger=False)
    fit.fit(module, datamodule=SceneData())
    scheduler = fit.lr_scheduler_configs[0].scheduler
    assert [scheduler._get_lr(t)[0] for t in range(4)] == pytest.approx([1e-6, 1e-3, 0.5e-3, 0.0])
    assert all(isinstance(m, nn.BatchNorm2d) and not isinstance(m, nn.SyncBatchNorm)
               for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    # after the run (step 3 = the end of the poly): every group at lr_scale x 0; at step 1, lr_scale x peak
    scheduler.step_update(num_updates=1)
    lrs = {round(g['lr_scale'], 6): g['lr'] for g in fit.optimizers[0].param_groups}
    assert lrs == pytest.approx({round(0.9 ** k, 6): 1e-3 * 0.9 ** k for k in (0, 4, 5, 6, 7, 8)})


@pytest.mark.parametrize('world, device, converted', [(1, 'cuda', False), (2, 'cpu', False), (2, 'cuda', True)])
def test_sync_batchnorm_only_distributed_on_gpus(world, device, converted, caplog):
    module = SegmentationModule('spanet_nano', num_classes=NUM_CLASSES, num_log_images=0, **UPERNET)
    module._trainer = SimpleNamespace(state=SimpleNamespace(fn='fit'), world_size=world,
                                      strategy=SimpleNamespace(root_device=torch.device(device)))
    with caplog.at_level('INFO'):
        module.configure_model()
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) == converted for m in norms)
    lines = [r.getMessage() for r in caplog.records if 'BatchNorm' in r.getMessage()]
    assert len(lines) == 1 and ('shared by the 2 GPU' in lines[0] if converted else 'stays per process' in lines[0])


# --- multi-scale + flip --------------------------------------------------------------------------------------------

def test_aug_at_scale_one_without_flip_is_single_scale(upernet):
    images = scenes(2, (40, 56), 3)[0]
    with torch.no_grad():
        whole = upernet.inference(images)
        probs, plain = aug_inference(upernet.inference, images, [1.0], flip=False)
    assert torch.equal(plain, whole) and torch.equal(probs, whole.float().softmax(1))
    assert aug_tag([1.0], False) == 'ss' and aug_tag([0.5, 1.0], True) == 'ms+flip' and aug_tag([1.0], True) == 'flip'


def test_flip_averaging_of_a_flip_symmetric_model_is_a_no_op():
    conv = nn.Conv2d(3, NUM_CLASSES, 1)  # pixel-wise: mirroring the input mirrors the logits exactly
    images = torch.randn(2, 3, 20, 30)
    with torch.no_grad():
        single, _ = aug_inference(conv, images, [1.0], flip=False)
        flipped, plain = aug_inference(conv, images, [1.0], flip=True)
    assert torch.equal(flipped, single) and torch.equal(plain, conv(images))
    asymmetric = nn.Conv2d(3, NUM_CLASSES, 3, padding=1)
    with torch.no_grad():
        assert not torch.allclose(aug_inference(asymmetric, images, [1.0], True)[0],
                                  aug_inference(asymmetric, images, [1.0], False)[0])


def test_multi_scale_resizes_keeping_the_aspect_and_averages():
    seen = []

    def probe(x):  # constant logits: every pass gives the same probabilities
        seen.append(tuple(x.shape[-2:]))
        return torch.zeros(x.shape[0], 3, *x.shape[-2:])

    probs, plain = aug_inference(probe, torch.zeros(1, 3, 40, 60), [0.5, 0.75, 1.75], flip=True)
    assert seen == [(20, 30), (20, 30), (30, 45), (30, 45), (70, 105), (70, 105)] and plain is None
    assert probs.shape == (1, 3, 40, 60) and torch.allclose(probs, torch.full_like(probs, 1 / 3))


def test_validate_reports_aug_beside_single_scale_and_fit_does_not(tmp_path):
    results = {}
    for name, kwargs in (('ss', {'test_scales': [1.0]}), ('ms+flip', {'test_scales': [0.75, 1.0], 'test_flip': True})):
        torch.manual_seed(0)
        module = SegmentationModule('spanet_nano', num_classes=NUM_CLASSES, num_log_images=0,
                                    head_kwargs={'fpn_channels': 16, 'head_channels': 8}, **kwargs)
        results[name] = trainer(tmp_path, logger=False).validate(module, datamodule=SceneData(), verbose=False)[0]
    ss = results['ss']
    assert {k: v for k, v in ss.items() if k.endswith('_ss')} == {f'{k}_ss': v for k, v in ss.items()
                                                                 if k in ('val/mIoU', 'val/aAcc', 'val/mAcc')}
    assert {'val/mIoU', 'val/mIoU_ms+flip', 'val/aAcc_ms+flip', 'val/mAcc_ms+flip'} <= set(results['ms+flip'])
    assert results['ms+flip']['val/mIoU'] == ss['val/mIoU']  # same seed, same weights: the single-scale pass
    module = SegmentationModule('spanet_nano', num_classes=NUM_CLASSES, num_log_images=0,
                                head_kwargs={'fpn_channels': 16, 'head_channels': 8}, test_scales=[0.75, 1.0])
    fit = trainer(tmp_path, logger=False)
    fit.fit(module, datamodule=SceneData())
    assert 'val/mIoU' in fit.callback_metrics and not any('ms+flip' in k for k in fit.callback_metrics)


# --- per-class report ----------------------------------------------------------------------------------------------

def test_per_class_scores_against_hand_counts():
    confusion = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # class 2 in neither ground truth nor predictions
    scores = per_class_scores(confusion)
    assert scores['IoU'][:2].tolist() == pytest.approx([3 / 4, 2 / 3]) and scores['IoU'][2].isnan()
    assert scores['Acc'][:2].tolist() == pytest.approx([3 / 4, 1.0]) and scores['Acc'][2].isnan()
    picture = confusion_image(confusion, side=30)
    assert picture.shape == (3, 30, 30) and picture.dtype == torch.uint8


def test_validate_writes_the_per_class_csv_and_tensorboard(tmp_path):
    torch.manual_seed(0)
    module = SegmentationModule('spanet_nano', num_classes=NUM_CLASSES, num_log_images=0, test_flip=True,
                                head_kwargs={'fpn_channels': 16, 'head_channels': 8})
    data = SceneData()
    data.classes = ['bg', 'red', 'green', 'blue', 'other']
    run = trainer(tmp_path, limit_val_batches=3)
    result = run.validate(module, datamodule=data, verbose=False)[0]
    with open(Path(run.log_dir) / 'val_per_class.csv') as f:
        rows = list(csv.reader(f))
    assert rows[0] == ['index', 'class', 'pixels', 'IoU', 'Acc', 'IoU_flip', 'Acc_flip']
    assert [r[1] for r in rows[1:]] == data.classes + ['mean']
    # the per-class IoUs are torchmetrics' over the same predictions, their mean the logged mIoU
    metric = MulticlassJaccardIndex(NUM_CLASSES, ignore_index=255, average='none')
    module.eval()  # validate() gives the module back in train mode
    with torch.no_grad():
        for images, masks in data.val_dataloader():
            metric.update(module(images).argmax(1), masks)
    assert [float(r[3]) for r in rows[1:-1]] == pytest.approx(metric.compute().tolist(), abs=1e-4)
    assert float(rows[-1][3]) == pytest.approx(result['val/mIoU'], abs=1e-4)
    assert float(rows[-1][5]) == pytest.approx(result['val/mIoU_flip'], abs=1e-4)
    assert sum(int(r[2]) for r in rows[1:-1]) == int(rows[-1][2]) == 3 * (40 * 56 - 16)  # 16 ignored per image
    events = EventAccumulator(run.log_dir, size_guidance={'images': 0, 'tensors': 0}).Reload()
    assert sorted(events.Tags()['images']) == ['val/confusion_matrix', 'val/confusion_matrix_flip']
    assert any('val/per_class' in tag for tag in events.Tags()['tensors'])
    header, table = SegmentationReport.table({'': torch.eye(2, dtype=torch.long)})
    assert header == ['index', 'class', 'pixels', 'IoU', 'Acc'] and table[-1] == ['', 'mean', '2', '1.0000', '1.0000']


def test_bad_settings_are_one_line_errors():
    with pytest.raises(UserInputError, match=r'test_scales must be a non-empty list of positive resize ratios, '
                                             r'got \[0\.5, 0\]'):
        SegmentationModule(test_scales=[0.5, 0])
    with pytest.raises(UserInputError, match=r'stage_lr_decay=0'):
        SegmentationModule(stage_lr_decay=0)
    with pytest.raises(UserInputError, match=r"aux_kwargs for 'fcn' \(FCNHead\): .*pool_scales"):
        SegmentationModule(aux_weight=0.4, aux_kwargs={'pool_scales': [1]})
    with pytest.raises(UserInputError, match=r"head_kwargs for 'upernet' \(UperNetHead\)"):
        SegmentationModule(head='upernet', head_kwargs={'fpn_channels': 8})
