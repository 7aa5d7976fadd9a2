"""Segmentation: heads on real nano pyramids, the LightningModule (loss, inference modes, schedule, pretrained
backbones) and the TensorBoard overlay callback, through a tiny real Trainer."""
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassJaccardIndex

from spanet_pl.callbacks import SegmentationImageLogger
from spanet_pl.callbacks.segmentation import SegmentationReport, colorize, default_palette, render_sample
from spanet_pl.errors import MissingPathError, UserInputError
from spanet_pl.models import ExSPAM, convert_official_state_dict, create_backbone, load_backbone_weights
from spanet_pl.models.heads import HEADS, FCNHead, SemanticFPNHead, resize_to_original
from spanet_pl.tasks import ClassificationModule, SegmentationModule
from spanet_pl.tasks.seg_inference import slide_inference
from spanet_pl.testing import synthetic_state_dict

REFERENCE = torch.load(Path(__file__).parent / 'fixtures' / 'official_reference.pt')
NUM_CLASSES = 5
PALETTE = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SMALL = {'fpn': {'fpn_channels': 32, 'head_channels': 16}, 'fcn': {'channels': 32}}  # CPU-sized heads


def scenes(count: int, size, seed: int):
    """Images whose class regions are visible (a brighter channel per class) with some ignored pixels."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, NUM_CLASSES, (count, size[0] // 8, size[1] // 8), generator=gen)
    masks = masks.repeat_interleave(8, 1).repeat_interleave(8, 2)
    images = 0.3 * torch.randn(count, 3, *size, generator=gen)
    for c in range(3):
        images[:, c] += (masks == c + 1).float()
    masks[:, :4, :4] = 255
    return images, masks


class SceneData(LightningDataModule):
    """In-memory stand-in for the ADE20K data module: same batch layout, palette, mean/std."""

    num_classes, palette, mean, std, ignore_index = NUM_CLASSES, PALETTE, MEAN, STD, 255

    def train_dataloader(self):
        return DataLoader(TensorDataset(*scenes(4, (32, 32), 0)), batch_size=2)

    def val_dataloader(self):  # batch 1 at "original size", as the ADE20K val loader
        return DataLoader(TensorDataset(*scenes(3, (40, 56), 1)), batch_size=1)


def tiny_trainer(tmp_path, **kwargs):
    kwargs = {'accelerator': 'cpu', 'devices': 1, 'max_steps': 2, 'limit_val_batches': 2, 'num_sanity_val_steps': 0,
              'enable_progress_bar': False, 'enable_model_summary': False, 'log_every_n_steps': 1,
              'logger': TensorBoardLogger(str(tmp_path), name='seg', default_hp_metric=False), **kwargs}
    return Trainer(**kwargs)


@pytest.fixture(scope='module')
def nano():
    torch.manual_seed(0)
    return SegmentationModule('spanet_nano', num_classes=NUM_CLASSES, head_kwargs=SMALL['fpn'], num_log_images=0).eval()


# --- heads -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('variant', ['spanet_nano', 'spanetv2_nano_hybrid'])
def test_heads_on_real_pyramids(variant):
    backbone = create_backbone(variant, features_only=True).eval()
    channels = backbone.feature_info.channels()
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 64, 96))
        assert [f.shape[1] for f in features] == channels
        assert SemanticFPNHead(channels, 7)(features).shape == (2, 7, 16, 24)
        assert FCNHead(channels, 7)(features).shape == (2, 7, 2, 3)
        assert FCNHead(channels, 7, in_index=[0, 1, 2, 3], concat_input=True)(features).shape == (2, 7, 16, 24)
        assert FCNHead(channels, 7, in_index=2, num_convs=0, norm='gn')(features).shape == (2, 7, 4, 6)


def test_fpn_head_odd_sizes_and_norms():
    features = [torch.randn(1, c, s, s) for c, s in ((8, 13), (16, 7), (24, 4), (32, 2))]
    for norm in ('bn', 'gn'):
        head = SemanticFPNHead([8, 16, 24, 32], 3, fpn_channels=32, head_channels=16, norm=norm).eval()
        assert head(features).shape == (1, 3, 13, 13)
    assert set(HEADS) == {'fcn', 'fpn', 'upernet'}
    with pytest.raises(UserInputError, match="unknown norm 'ln'"):
        FCNHead([8], 3, norm='ln')
    with pytest.raises(UserInputError, match='in_index 4 out of range'):
        FCNHead([8, 16, 24, 32], 3, in_index=4)


# --- module ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('head', ['fpn', 'fcn'])
def test_forward_full_resolution_every_parameter_learns(head):
    module = SegmentationModule('spanet_nano', num_classes=NUM_CLASSES, head=head, head_kwargs=SMALL[head],
                                num_log_images=0)
    images, masks = scenes(2, (40, 56), 0)
    logits = module(images)
    assert logits.shape == (2, NUM_CLASSES, 40, 56)
    module._loss(logits, masks).backward()
    assert [n for n, p in module.named_parameters() if p.grad is None] == []


def test_loss_ignores_255(nano):
    logits = torch.randn(2, NUM_CLASSES, 8, 8, requires_grad=True)
    masks = torch.randint(0, NUM_CLASSES, (2, 8, 8))
    masks[:, :3] = 255
    labelled = masks != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[labelled], masks[labelled])
    loss = nano._loss(logits, masks)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad[:, :, :3].abs().max() == 0
    everything_ignored = nano._loss(logits, torch.full_like(masks, 255))
    assert everything_ignored.item() == 0.0 and torch.isfinite(everything_ignored)


@pytest.mark.parametrize('crop', [(40, 56), (64, 64)])
def test_slide_equals_whole_in_one_window(nano, crop):
    images, masks = scenes(2, (40, 56), 3)
    with torch.no_grad():
        whole = nano.inference(images, 'whole')
        slide = slide_inference(nano, images, NUM_CLASSES, crop, (16, 16))
    assert torch.equal(whole, slide)
    ious = []
    for logits in (whole, slide):
        metric = MulticlassJaccardIndex(NUM_CLASSES, ignore_index=255)
        metric.update(logits.argmax(1), masks)
        ious.append(metric.compute())
    assert torch.equal(*ious)


def test_slide_covers_every_pixel_and_averages(nano):
    seen = []

    class Probe(nn.Module):  # logits = 1 everywhere: the average is 1 exactly where the count map is >= 1
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return torch.ones(x.shape[0], 2, *x.shape[-2:])

    out = slide_inference(Probe(), torch.zeros(1, 3, 70, 101), 2, (32, 48), (20, 30))
    assert out.shape == (1, 2, 70, 101) and torch.equal(out, torch.ones_like(out))
    assert set(seen) == {(32, 48)} and len(seen) == 3 * 3
    with torch.no_grad():
        logits = slide_inference(nano, torch.randn(1, 3, 72, 100), NUM_CLASSES, (48, 64), (32, 40))
    assert logits.shape == (1, NUM_CLASSES, 72, 100) and torch.isfinite(logits).all()


def test_validate_whole_and_slide_give_the_same_miou(tmp_path, nano):
    results = {}
    for mode in ('whole', 'slide'):
        nano.hparams.inference = mode
        nano.crop_size, nano.stride = (64, 64), (32, 32)  # every val image (40 x 56) fits one window
        results[mode] = tiny_trainer(tmp_path, logger=False).validate(nano, datamodule=SceneData(), verbose=False)[0]
    nano.hparams.inference = 'whole'
    assert results['whole'] == results['slide']
    assert set(results['whole']) >= {'val/mIoU', 'val/aAcc', 'val/mAcc', 'val/loss'}


def test_resize_to_original_crops_the_padding_and_resizes_each_image():
    logits = torch.randn(2, NUM_CLASSES, 8, 10)
    out = resize_to_original(logits, torch.tensor([[8, 10], [6, 4]]), torch.tensor([[16, 20], [3, 2]]))
    assert out.shape == (2, NUM_CLASSES, 16, 20)
    assert torch.equal(out[0], F.interpolate(logits[:1], size=(16, 20), mode='bilinear', align_corners=False)[0])
    assert torch.equal(out[1, :, :3, :2],
                       F.interpolate(logits[1:, :, :6, :4], size=(3, 2), mode='bilinear', align_corners=False)[0])
    assert (out[1, :, 3:] == 0).all() and (out[1, :, :, 2:] == 0).all()


class ResizedSceneData(SceneData):
    """Validation as ADE20KDataModule serves it after a resize: images at 2x, masks (and metrics) at the original size."""

    def val_dataloader(self):
        images, masks = scenes(3, (24, 32), 1)
        big = F.interpolate(images, scale_factor=2, mode='bilinear', align_corners=False)
        sized = {'size': torch.tensor([[24, 32]] * 3), 'input_size': torch.tensor([[48, 64]] * 3)}
        batches = [(big[i:i + 1], masks[i:i + 1], {k: v[i:i + 1] for k, v in sized.items()}) for i in range(3)]
        return DataLoader(batches, batch_size=None)  # already batched


def test_validation_at_the_original_size(tmp_path, nano):
    data = ResizedSceneData()
    result = tiny_trainer(tmp_path, logger=False, limit_val_batches=3).validate(nano, datamodule=data, verbose=False)[0]
    metric = MulticlassJaccardIndex(NUM_CLASSES, ignore_index=255)
    with torch.no_grad():
        for images, masks, _ in data.val_dataloader():
            logits = F.interpolate(nano(images), size=masks.shape[-2:], mode='bilinear', align_corners=False)
            metric.update(logits.argmax(1), masks)
    assert result['val/mIoU'] == pytest.approx(metric.compute().item(), abs=1e-6)

    class FakeTrainer:
        sanity_checking, is_global_zero, datamodule = False, True, data

    callback = SegmentationImageLogger(num_images=1)  # the picture is at the annotation's size
    batch = next(iter(data.val_dataloader()))
    callback.on_validation_batch_end(FakeTrainer, nano, {'preds': batch[1]}, batch, 0)
    assert [p.shape for p in callback.render(FakeTrainer, nano)] == [(3, 24, 3 * 32 + 8)]


@pytest.mark.parametrize('head', ['fpn', 'fcn'])
def test_fit_logs_overlays_and_follows_poly(tmp_path, head):
    module = SegmentationModule('spanet_nano', num_classes=NUM_CLASSES, head=head, head_kwargs=SMALL[head],
                                num_log_images=2,
                                warmup_steps=1, warmup_lr=1e-4, min_lr=1e-5,
                                optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05))
    trainer = tiny_trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=SceneData())
    assert 'val/mIoU' in trainer.callback_metrics and module.monitor == 'val/mIoU'
    assert any(isinstance(c, SegmentationImageLogger) for c in trainer.callbacks)
    # timm's PolyLRScheduler: 1 warmup step from warmup_lr, then lr(t) = min_lr + (lr - min_lr) (1 - (t - 1) / 2) ** 0.9
    # down to min_lr at t = 3 steps
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    lrs = [scheduler._get_lr(t)[0] for t in range(4)]
    assert lrs == pytest.approx([1e-4, 1e-3, 1e-5 + (1e-3 - 1e-5) * 0.5 ** 0.9, 1e-5])
    groups = trainer.optimizers[0].param_groups
    assert [g['weight_decay'] for g in groups] == [0.05, 0.0]
    assert [g['lr'] for g in groups] == pytest.approx([1e-5, 1e-5])
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={'images': 0}).Reload()
    tags = events.Tags()['images']
    assert sorted(tags) == ['val/overlay_0', 'val/overlay_1']
    image = events.Images('val/overlay_0')[-1]
    assert (image.height, image.width) == (40, 3 * 56 + 8)
    # the best checkpoint the Trainer wrote is a valid `pretrained` for the next run (backbone only)
    ckpt = next(Path(trainer.logger.log_dir).glob('checkpoints/*.ckpt'))
    other = SegmentationModule('spanet_nano', num_classes=3, head='fcn', pretrained=str(ckpt), num_log_images=0)
    for key, value in module.backbone.state_dict().items():
        assert torch.equal(other.backbone.state_dict()[key], value), key


# --- pretrained backbones ----------------------------------------------------------------------------------------

def test_pretrained_official_checkpoint(tmp_path):
    """Official SPANetV2 key names and shapes (tests/fixtures), whose channel order the loader must set."""
    ref = REFERENCE['v2_s18_pure_224']
    state = synthetic_state_dict(ref['shapes'], ref['seed'])
    torch.save({'model': state}, tmp_path / 'official.pth')
    module = SegmentationModule(ref['variant'], num_classes=NUM_CLASSES, pretrained=str(tmp_path / 'official.pth'),
                                head='fcn', head_kwargs=SMALL['fcn'], num_log_images=0)
    model = module.backbone.model
    assert {m.head_layout for m in model.modules() if isinstance(m, ExSPAM)} == {'interleave'}
    expected = convert_official_state_dict(state, model)
    assert sorted(set(expected) - set(model.state_dict())) == ['head.fc1.bias', 'head.fc1.weight', 'head.fc2.bias',
                                                                'head.fc2.weight', 'head.norm.bias',
                                                                'head.norm.weight', 'norm.bias', 'norm.weight']
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize('task', ['segmentation', 'classification'])
def test_checkpoint_keeps_the_exspam_channel_order(tmp_path, task):
    """A ver4-layout start sets head_layout='concat', which is no parameter: a reload without the file must keep it,
    for both tasks (it travels in the state dict)."""
    def build(**kwargs):
        if task == 'segmentation':
            return SegmentationModule('spanetv2_nano_pure', num_classes=NUM_CLASSES, head='fcn', num_log_images=0,
                                      **kwargs)
        return ClassificationModule('spanetv2_nano_pure', num_classes=NUM_CLASSES, **kwargs)

    module = build(backbone_kwargs={'head_layout': 'concat'})
    torch.save({'state_dict': module.state_dict()}, tmp_path / 'run.ckpt')
    reloaded = build()
    assert {m.head_layout for m in reloaded.modules() if isinstance(m, ExSPAM)} == {'interleave'}
    reloaded.load_state_dict(torch.load(tmp_path / 'run.ckpt', weights_only=True)['state_dict'])
    assert {m.head_layout for m in reloaded.modules() if isinstance(m, ExSPAM)} == {'concat'}
    # and as `pretrained` of the other task
    other = build(pretrained=str(tmp_path / 'run.ckpt'))
    assert {m.head_layout for m in other.modules() if isinstance(m, ExSPAM)} == {'concat'}


def test_pretrained_official_v1_layout():
    """Our nano renamed to the official SPANet layout (patch_embed / network.{i}, as the v1 fixture's keys)."""
    source = timm.create_model('spanet_nano').state_dict()
    official = {}
    for key, value in source.items():
        key = key.replace('stem.conv.', 'patch_embed.proj.')
        key = re.sub(r'^stages\.(\d+)\.blocks\.', lambda m: f'network.{2 * int(m.group(1))}.', key)
        key = re.sub(r'^stages\.(\d+)\.downsample\.conv\.', lambda m: f'network.{2 * int(m.group(1)) - 1}.proj.', key)
        official[key] = value
    assert {k.split('.')[0] for k in official} <= {k.split('.')[0] for k, _ in REFERENCE['v1_small_224']['shapes']}
    backbone = load_backbone_weights(create_backbone('spanet_nano', features_only=True), {'state_dict': official})
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, source[key]), key


@pytest.mark.parametrize('variant', ['spanet_nano', 'spanetv2_nano_hybrid'])
def test_pretrained_classification_checkpoint_and_plain_state_dict(tmp_path, variant):
    classifier = ClassificationModule(variant, num_classes=10)
    torch.save({'state_dict': classifier.state_dict(), 'epoch': 3}, tmp_path / 'cls.ckpt')
    torch.save(classifier.backbone.state_dict(), tmp_path / 'plain.pth')
    source = classifier.backbone.state_dict()
    for name in ('cls.ckpt', 'plain.pth'):
        module = SegmentationModule(variant, num_classes=NUM_CLASSES, pretrained=str(tmp_path / name),
                                    num_log_images=0)
        ours = module.backbone.model.state_dict()
        assert len(ours) == len(source) - sum(k.startswith(('head.', 'norm.')) for k in source)
        for key, value in ours.items():
            assert torch.equal(value, source[key]), key


def test_pretrained_bad_files(tmp_path):
    with pytest.raises(MissingPathError, match='does not exist'):
        SegmentationModule(pretrained=str(tmp_path / 'nope.ckpt'))
    (tmp_path / 'garbage.ckpt').write_text('not a checkpoint')
    with pytest.raises(UserInputError, match='could not be read'):
        SegmentationModule(pretrained=str(tmp_path / 'garbage.ckpt'))
    torch.save({'state_dict': {'foo.weight': torch.zeros(2)}}, tmp_path / 'foreign.ckpt')
    with pytest.raises(UserInputError, match='unrecognised checkpoint layout'):
        SegmentationModule(pretrained=str(tmp_path / 'foreign.ckpt'))
    other = timm.create_model('spanetv2_nano_pure').state_dict()
    with pytest.raises(UserInputError, match=r'does not fit this SPANetV2 .*missing: stages\.2\.blocks\.0\.'):
        load_backbone_weights(create_backbone('spanetv2_nano_hybrid', features_only=True), other)
    nano = timm.create_model('spanet_nano').state_dict()
    del nano['stages.3.blocks.0.mlp.fc1.weight']
    with pytest.raises(UserInputError, match=r'missing: stages\.3\.blocks\.0\.mlp\.fc1\.weight'):
        load_backbone_weights(create_backbone('spanet_nano', features_only=True), nano)
    official_v1 = synthetic_state_dict(REFERENCE['v1_small_224']['shapes'])
    with pytest.raises(UserInputError, match='official SPANet layout'):
        load_backbone_weights(create_backbone('spanetv2_nano_pure', features_only=True), official_v1)


# --- bad configuration and data ----------------------------------------------------------------------------------

def test_bad_configuration():
    with pytest.raises(UserInputError, match=r"unknown segmentation head 'fpnn' \(did you mean 'fpn'\?\); "
                                             r"valid names: fcn, fpn, upernet"):
        SegmentationModule(head='fpnn')
    with pytest.raises(UserInputError, match='head_kwargs for .fcn.'):
        SegmentationModule(head='fcn', head_kwargs={'fpn_channels': 64})
    with pytest.raises(UserInputError,
                       match=r"unknown inference mode 'sliding' \(did you mean 'slide'\?\); valid names: whole, slide"):
        SegmentationModule(inference='sliding')
    with pytest.raises(UserInputError, match='window_stride <= window'):
        SegmentationModule(window=256, window_stride=(341, 341))
    with pytest.raises(UserInputError, match='backbone_kwargs may not set features_only'):
        SegmentationModule(backbone_kwargs={'features_only': False})
    with pytest.raises(UserInputError, match='ignore_index outside'):
        SegmentationModule(num_classes=300, ignore_index=255)
    with pytest.raises(UserInputError, match='unknown SPANet variant'):
        SegmentationModule(backbone='spanet_nanoo')


def test_bad_batches(nano):
    images, masks = scenes(2, (32, 32), 0)
    with pytest.raises(UserInputError, match=r'mask labels \[5, 150\] are outside 0\.\.4'):
        nano.training_step((images, torch.where(masks == 1, 150, torch.where(masks == 2, 5, masks))), 0)
    with pytest.raises(UserInputError, match='of the same size'):
        nano.training_step((images, masks[:, :16]), 0)
    with pytest.raises(UserInputError, match='integer class indices'):
        nano.training_step((images, masks.float()), 0)


# --- overlay callback --------------------------------------------------------------------------------------------

def test_render_sample_colours_and_layout():
    palette = torch.tensor(PALETTE, dtype=torch.uint8)
    image = torch.full((3, 6, 5), 0.5)  # de-normalised: 0.5 * std + mean = 0.625 -> 159
    target = torch.tensor([[1, 255], [3, 4]]).repeat_interleave(3, 0).repeat_interleave(3, 1)[:, :5]
    pred = torch.zeros(6, 5, dtype=torch.long)
    picture = render_sample(image, target, pred, palette, MEAN, STD)
    assert picture.shape == (3, 6, 3 * 5 + 8) and picture.dtype == torch.uint8
    assert (picture[:, :, :5] == 159).all() and (picture[:, :, 5:9] == 255).all()
    gt = picture[:, :, 9:14]
    assert gt[:, 0, 0].tolist() == PALETTE[1] and gt[:, 0, 4].tolist() == [0, 0, 0]  # 255 -> black
    assert gt[:, 5, 0].tolist() == PALETTE[3] and gt[:, 5, 4].tolist() == PALETTE[4]
    assert (picture[:, :, 18:] == 0).all()
    assert colorize(torch.tensor([[7]]), palette).tolist() == [[[0]], [[0]], [[0]]]  # outside the palette
    voc = default_palette(150)  # the PASCAL VOC colour map without black, which is left for ignored pixels
    assert voc[0].tolist() == [128, 0, 0] and voc[1].tolist() == [0, 128, 0] and len(set(map(tuple, voc.tolist()))) == 150
    assert [0, 0, 0] not in voc.tolist()


def test_overlay_callback_keeps_a_fixed_handful(nano):
    class FakeTrainer:
        sanity_checking, is_global_zero, datamodule = False, True, SceneData()

    callback = SegmentationImageLogger(num_images=3)
    callback.on_validation_epoch_start(FakeTrainer, nano)
    for i in range(3):
        images, masks = scenes(2, (16, 24), i)
        callback.on_validation_batch_end(FakeTrainer, nano, {'preds': masks.clamp(max=4)}, (images, masks), i)
    assert len(callback.samples) == 3
    assert torch.equal(callback.samples[2][1], scenes(2, (16, 24), 1)[1][0])
    pictures = callback.render(FakeTrainer, nano)
    assert [p.shape for p in pictures] == [(3, 16, 3 * 24 + 8)] * 3
    assert [type(c) for c in SegmentationModule(num_log_images=0).configure_callbacks()] == [SegmentationReport]
    assert [c.num_images for c in SegmentationModule(num_log_images=2).configure_callbacks()[:1]] == [2]
