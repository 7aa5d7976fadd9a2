"""The analyses on real (nano) backbones: layer capture, SRF / mask extraction, context, CAM, model loading."""
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

from spanet_pl.analysis.cam import class_activation_maps
from spanet_pl.analysis.context import context_maps, stage_context
from spanet_pl.analysis.filters import spf_masks, srf_filters
from spanet_pl.analysis.fourier import layer_curves, relative_log_amplitude
from spanet_pl.analysis.layers import find_backbone, spectral_layers, stage_sizes
from spanet_pl.analysis.loading import find_runs, load_model, load_models
from spanet_pl.errors import MissingPathError, UserInputError
from spanet_pl.models import SPAM, ExSPAM
from spanet_pl.testing import seeded_input, synthetic_state_dict

from conftest import NANO_VARIANTS

REFERENCE = Path(__file__).parent / 'fixtures' / 'official_reference.pt'


@pytest.mark.parametrize('name', NANO_VARIANTS)
def test_layers_in_forward_order(name):
    model = timm.create_model(name).eval()
    layers = spectral_layers(model)
    depths = model.feature_info  # one entry per stage
    blocks = sum(len(stage.blocks) for stage in model.stages)
    assert [layer.kind for layer in layers][:2] == ['stem', 'block']
    assert len(layers) == 1 + (len(depths) - 1) + blocks
    assert [layer.index for layer in layers] == list(range(len(layers)))
    order = []
    hooks = [layer.module.register_forward_hook(lambda m, i, o, n=layer.name: order.append(n)) for layer in layers]
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    assert order == [layer.name for layer in layers]
    wrapped = timm.create_model(name, features_only=True)
    assert find_backbone(wrapped) is wrapped.model
    assert spectral_layers(wrapped)[0].name == 'model.stem'
    assert stage_sizes(model, torch.zeros(1, 3, 64, 64)) == [(16, 16), (8, 8), (4, 4), (2, 2)]
    odd = torch.zeros(1, 3, 97, 61)
    with torch.no_grad():
        maps = model.forward_intermediates(odd, intermediates_only=True)
    assert stage_sizes(model, odd) == [tuple(m.shape[-2:]) for m in maps]


@pytest.mark.parametrize('name', NANO_VARIANTS)
def test_layer_curves_match_the_hooked_maps(name):
    model = timm.create_model(name).eval()
    images = seeded_input(4, (64, 64))
    curves = layer_curves(model, images.split(2))
    assert [c.size for c in curves[:2]] == [16, 16]
    assert all(len(c.curve) == c.size - c.size // 2 and c.curve[0] == 0 for c in curves)
    assert curves[-1].depth == pytest.approx((len(curves) - 1) / len(curves))
    captured = {}
    last = spectral_layers(model)[-1]
    hook = last.module.register_forward_hook(lambda m, i, o: captured.setdefault('map', o))
    with torch.no_grad():
        model(images)
    hook.remove()
    expected = relative_log_amplitude(captured['map'], channels_last=last.channels_last)
    torch.testing.assert_close(curves[-1].curve.float(), expected.float(), atol=1e-4, rtol=0)


def test_hooks_leave_outputs_unchanged():
    model = timm.create_model('spanetv2_nano_pure').eval()
    images = seeded_input(2, (64, 64))
    with torch.no_grad():
        before = model(images)
    layer_curves(model, [images])
    context_maps(model, images)
    with torch.no_grad():
        after = model(images)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert all(not m._forward_hooks for m in model.modules())


def test_spam_modulation_is_the_forward():
    mixer = SPAM(24, lambdas=(0.7, 0.8, 0.9)).eval()
    x = torch.randn(2, 24, 14, 14)
    features, context = mixer.modulation(x)
    torch.testing.assert_close(mixer.proj_out(features * context), mixer(x))


def test_spf_masks_and_srf_filters():
    probe = torch.zeros(1, 3, 64, 64)
    v1 = timm.create_model('spanet_nano')
    masks = spf_masks(v1, probe)
    assert len(masks) == 4 * 3 and {m.spectrum.shape for m in masks if m.stage == 0} == {(16, 16)}
    assert srf_filters(v1, probe) == [] and spf_masks(timm.create_model('spanet_nano', spectral_filter=False),
                                                         probe) == []
    v2 = timm.create_model('spanetv2_nano_pure')
    with torch.no_grad():
        for m in v2.modules():
            if isinstance(m, ExSPAM):
                m.filter.zero_()
    filters = srf_filters(v2, probe)
    assert len(filters) == 5 * 4  # five ExSPAM blocks, four heads
    assert all(torch.equal(f.spectrum, torch.full_like(f.spectrum, 0.5)) for f in filters)  # sigmoid(0)
    hybrid = srf_filters(timm.create_model('spanetv2_nano_hybrid'), probe)
    assert {f.stage for f in hybrid} == {0, 1}  # attention stages have none


def test_srf_at_the_stored_size_is_the_stored_filter():
    model = timm.create_model('spanetv2_nano_pure', img_size=64)
    mixer = model.stages[0].blocks[0].token_mixer
    filters = srf_filters(model, torch.zeros(1, 3, 64, 64))
    head0 = torch.sigmoid(mixer.filter.detach()).chunk(4)[0].mean(0)  # (16, 9) stored half spectrum, head 0
    assert filters[0].spectrum.shape == (16, 16)
    torch.testing.assert_close(filters[0].spectrum[8, 8:], head0[0, :8])  # DC row, non-negative frequencies


@pytest.mark.parametrize('name', NANO_VARIANTS)
def test_context_maps(name):
    model = timm.create_model(name).eval()
    maps = context_maps(model, seeded_input(3, (64, 64)))
    stages = stage_context(maps)
    expected = {0, 1} if name.endswith('hybrid') else {0, 1, 2, 3}
    assert set(stages) == expected
    assert stages[0].shape == (3, 16, 16) and all((m.maps >= 0).all() for m in maps)
    with pytest.raises(UserInputError, match='no modulating'):
        context_maps(timm.create_model('spanetv2_nano_pure', token_mixers='attention'), seeded_input(1, (64, 64)))
    with pytest.raises(UserInputError, match='no SPANet'):
        context_maps(nn.Sequential(nn.Identity()), torch.zeros(1))


class QuadrantModel(nn.Module):
    """Logit 0 sums the target layer's activations in the top-left quadrant; activations: channel q is the input's
    mean intensity inside quadrant q only, so only channel 0 can raise logit 0."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(4, 4, 1, groups=4, bias=False)  # identity, but with a parameter for grad-cam
        nn.init.ones_(self.features.weight)

    def forward(self, x):
        b, _, h, w = x.shape
        quadrants = torch.zeros(4, h, w)
        quadrants[0, :h // 2, :w // 2] = 1
        quadrants[1, :h // 2, w // 2:] = 1
        quadrants[2, h // 2:, :w // 2] = 1
        quadrants[3, h // 2:, w // 2:] = 1
        acts = self.features(x.mean(dim=1, keepdim=True) * quadrants)
        top_left = acts[:, :, :h // 2, :w // 2].sum(dim=(1, 2, 3))
        return torch.stack([top_left, 0.1 * acts.sum(dim=(1, 2, 3))], dim=1)


@pytest.mark.parametrize('method', ['scorecam', 'hirescam', 'layercam'])
def test_cam_maximum_in_the_quadrant_the_logit_reads(method):
    model = QuadrantModel()
    images = torch.ones(2, 3, 16, 16) + 0.1 * torch.rand(2, 3, 16, 16)
    result = class_activation_maps(model, images, method, target_layer=model.features, classes=[0, 0])
    assert result.cams.shape == (2, 16, 16)
    for cam in result.cams:
        y, x = divmod(int(cam.argmax()), 16)
        assert y < 8 and x < 8, (method, y, x)
        assert cam[:8, :8].mean() > cam[8:, 8:].mean()


def test_cam_on_a_spanetv2():
    model = timm.create_model('spanetv2_nano_pure', num_classes=5).eval()
    result = class_activation_maps(model, seeded_input(2, (64, 64)), 'gradcam')
    assert result.cams.shape == (2, 64, 64) and result.classes.shape == (2,)
    assert 0 <= result.cams.min() and result.cams.max() <= 1
    with pytest.raises(UserInputError, match='unknown CAM method'):
        class_activation_maps(model, seeded_input(1, (64, 64)), 'magic')


def test_load_variant_names_are_reproducible():
    first, second = load_model('spanet_nano')[0], load_model('spanet_nano')[0]
    assert first.label == 'spanet_nano (random init)' and first.classifier
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(UserInputError, match='neither a variant'):
        load_model('spanet_nanoo')
    with pytest.raises(MissingPathError):
        load_model('missing/run.ckpt')


@pytest.mark.slow
def test_load_official_checkpoint_recognises_the_variant(tmp_path):
    ref = torch.load(REFERENCE)['v2_s18_pure_224']
    path = tmp_path / 'official.pth'
    torch.save({'model': synthetic_state_dict(ref['shapes'], ref['seed'])}, path)
    loaded = load_model(str(path))[0]
    assert loaded.variant == 'spanetv2_s18_pure' and loaded.label == 'official'
    with torch.no_grad():
        logits = loaded.model(seeded_input(2, (224, 224), ref['seed']))
    torch.testing.assert_close(logits, ref['logits'], atol=1e-4, rtol=0)
    named = load_model(f'spanetv2_s18_pure={path}', label='S18')[0]
    assert named.label == 'S18' and named.variant == 'spanetv2_s18_pure'


@pytest.mark.slow
def test_load_plain_state_dict_and_mismatch(tmp_path):
    model = timm.create_model('spanet_nano', num_classes=7)
    torch.save(model.state_dict(), tmp_path / 'nano.pt')
    loaded = load_model(str(tmp_path / 'nano.pt'))[0]
    assert loaded.variant == 'spanet_nano' and loaded.model.num_classes == 7
    ablated = timm.create_model('spanetv2_nano_pure', kernel_sizes=(3, 3, 3, 3))
    torch.save(ablated.state_dict(), tmp_path / 'ablated.pt')
    with pytest.raises(UserInputError, match='fits no variant'):
        load_model(str(tmp_path / 'ablated.pt'))


def test_find_runs_and_unique_labels(tmp_path):
    for cell in ('a=1', 'a=2'):
        folder = tmp_path / 'grid' / cell / 'checkpoints'
        folder.mkdir(parents=True)
        (folder / 'last.ckpt').write_bytes(b'')
    (tmp_path / 'grid' / 'a=1' / 'checkpoints' / 'best-epoch001-step4.ckpt').write_bytes(b'')
    runs = find_runs(tmp_path / 'grid')
    assert [(label, path.name) for label, path in runs] == [('grid/a=1', 'best-epoch001-step4.ckpt'),
                                                            ('grid/a=2', 'last.ckpt')]
    models = load_models(['spanet_nano', 'spanet_nano'])
    assert [m.label for m in models] == ['spanet_nano (random init)', 'spanet_nano (random init) (2)']
    with pytest.raises(UserInputError, match='one label per model'):
        load_models(['spanet_nano'], ['a', 'b'])


def test_seeds_of_a_cell_are_averaged():
    from spanet_pl.analysis.fourier import mean_over_seeds, seed_cell
    images = seeded_input(2, (32, 32))
    runs = []
    for seed in range(3):
        torch.manual_seed(seed)
        runs.append((f'spectral_filter=true/seed={seed}', layer_curves(timm.create_model('spanet_nano').eval(), [images])))
    runs.append(('baseline', runs[0][1]))
    assert seed_cell('grid/a=1/seed=12') == 'grid/a=1' and seed_cell('a/seed=x') == 'a/seed=x'
    cells = mean_over_seeds(runs)
    assert [label for label, _, _ in cells] == ['spectral_filter=true (mean of 3 seeds)', 'baseline']
    label, mean, spread = cells[0]
    highs = torch.tensor([run[1][-1].high for run in runs[:3]])
    assert mean[-1].high == pytest.approx(float(highs.mean())) and spread[-1] == pytest.approx(float(highs.std()))
    assert cells[1][2] == [0.0] * len(runs[0][1])
