"""Contracts over every registered variant, plus each ablation switch."""
import pytest
import timm
import torch

from spanet_pl.models import OFFICIAL_VARIANTS, SPAM, VARIANTS, ExSPAM, MixAttention, Attention, create_backbone
from spanet_pl.models.exspam import LearnableSigmoid

from conftest import NANO_VARIANTS

# Trainable parameter counts measured from the official code.
OFFICIAL_PARAMS = {
    'spanet_small': 28_605_096, 'spanet_medium': 41_686_952, 'spanet_mediumX': 54_768_808,
    'spanet_base': 75_856_168, 'spanet_baseX': 99_718_312,
    'spanetv2_s18_pure': 29_162_892, 'spanetv2_s18_hybrid': 26_991_948,
    'spanetv2_s36_pure': 44_098_608, 'spanetv2_s36_hybrid': 40_669_104,
    'spanetv2_m36_pure': 62_934_832, 'spanetv2_m36_hybrid': 58_334_896,
    'spanetv2_b36_pure': 109_557_808, 'spanetv2_b36_hybrid': 101_802_544,
}


# building the larger variants, even on the meta device, takes seconds: `make test-fast` counts the small ones
FAST_PARAMS = ('spanet_small', 'spanetv2_s18_pure', 'spanetv2_s18_hybrid')


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_variant_lists():
    assert set(OFFICIAL_VARIANTS) == set(OFFICIAL_PARAMS)
    assert set(NANO_VARIANTS) == set(VARIANTS) - set(OFFICIAL_VARIANTS)
    assert set(VARIANTS) <= set(timm.list_models('spanet*'))


@pytest.mark.parametrize('name', [pytest.param(name, marks=() if name in FAST_PARAMS else pytest.mark.slow)
                                  for name in sorted(OFFICIAL_PARAMS)])
def test_trainable_params_equal_official(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert trainable(model) == OFFICIAL_PARAMS[name]
    assert all(p.requires_grad for p in model.parameters())  # no frozen "parameters" (v1's masks are not stored)


@pytest.mark.parametrize('name', NANO_VARIANTS)
@pytest.mark.parametrize('size', [(224, 224), (256, 320), (512, 512)])
def test_forward_backward_any_size(name, size):
    model = timm.create_model(name, num_classes=10)
    x = torch.randn(2, 3, *size)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f'parameters without a finite gradient: {no_grad}'
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize('name', NANO_VARIANTS)
@pytest.mark.parametrize('train', [False, True])
def test_other_sizes_change_no_state(name, train):
    model = timm.create_model(name, num_classes=5).train(train)
    x = torch.randn(1, 3, 224, 224)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        first = model.eval()(x)
        model.train(train)
        for size in ((288, 288), (200, 320), (97, 131)):
            model(torch.randn(1, 3, *size))
        after = model.eval()(x)
    state = model.state_dict()
    assert state.keys() == before.keys()
    assert all(torch.equal(state[k], before[k]) for k in before)
    torch.testing.assert_close(after, first, rtol=0, atol=0)


def test_exspam_inference_cache_follows_parameter_changes():
    model = timm.create_model('spanetv2_nano_pure', num_classes=3).eval()
    x = torch.randn(1, 3, 160, 160)  # not the stored SRF size: exercises the resize path
    with torch.no_grad():
        first = model(x)
        assert torch.equal(model(x), first)
        mixer = model.stages[0].blocks[0].token_mixer
        mixer.filter.add_(1.0)
        changed = model(x)
    assert not torch.allclose(changed, first)
    with torch.enable_grad():
        torch.testing.assert_close(model(x), changed)


def test_timm_create_model_kwargs_and_cfg():
    model = timm.create_model('spanet_small', num_classes=7, drop_path_rate=0.3)
    assert model.get_classifier().out_features == 7
    rates = [b.drop_path.drop_prob for s in model.stages for b in s.blocks if hasattr(b.drop_path, 'drop_prob')]
    assert max(rates) == pytest.approx(0.3)
    cfg = model.pretrained_cfg
    assert cfg['crop_pct'] == 0.9 and cfg['interpolation'] == 'bicubic'
    assert tuple(cfg['mean']) == pytest.approx((0.485, 0.456, 0.406))
    assert timm.create_model('spanet_base', pretrained=False).pretrained_cfg['crop_pct'] == 0.95
    assert timm.create_model('spanetv2_nano_pure').pretrained_cfg['crop_pct'] == 1.0
    with pytest.raises(TypeError, match='not_an_arg'):
        timm.create_model('spanet_nano', not_an_arg=1)


@pytest.mark.parametrize('name', NANO_VARIANTS)
def test_features_only_pyramid(name):
    model = timm.create_model(name, features_only=True)
    x = torch.randn(1, 3, 256, 192)
    feats = model(x)
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert [tuple(f.shape[-2:]) for f in feats] == [(64, 48), (32, 24), (16, 12), (8, 6)]
    picked = timm.create_model(name, features_only=True, out_indices=(1, 3))(x)
    assert len(picked) == 2 and picked[1].shape[1] == feats[3].shape[1]


@pytest.mark.parametrize('name', NANO_VARIANTS)
def test_forward_intermediates_match_forward_features(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        final, inters = model.forward_intermediates(x)
        features = model.forward_features(x)
        logits = model(x)
        assert torch.equal(model.forward_head(final), logits)
    torch.testing.assert_close(final, features)
    assert len(inters) == 4
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (1, model.num_features)


def test_reset_classifier_and_grad_checkpointing():
    model = timm.create_model('spanetv2_nano_hybrid')
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 256)
    model.reset_classifier(4)
    model.set_grad_checkpointing(True)
    out = model(torch.randn(2, 3, 64, 64))
    out.sum().backward()
    assert out.shape == (2, 4) and model.stem.conv.weight.grad is not None


# ---- ablation switches ---------------------------------------------------------------------------------------

def mixers(model, cls):
    return [m for m in model.modules() if isinstance(m, cls)]


def test_v1_spectral_filter_off_runs_and_changes_output():
    on = timm.create_model('spanet_nano', num_classes=3).eval()
    off = timm.create_model('spanet_nano', num_classes=3, spectral_filter=False).eval()
    off.load_state_dict(on.state_dict())  # same parameters: the masks are not parameters
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.isfinite(off(x)).all()
        assert not torch.allclose(on(x), off(x))
    assert all(not m.use_filter for m in mixers(off, SPAM))


def test_v1_lambdas_radius_and_kernel_size():
    model = timm.create_model('spanet_nano', lambdas=[0.5, 0.9], radii=[4, 3, 2, 1], kernel_size=5)
    spams = mixers(model, SPAM)
    assert all(len(m.pws) == 2 and m.lambdas == (0.5, 0.9) for m in spams)
    assert [m.radius for m in spams] == [4, 3, 2, 2, 1]
    assert spams[0].conv[0].kernel_size == (1, 5) and spams[0].conv[1].kernel_size == (5, 1)
    masks = spams[0].masks(16, 16)
    assert masks.shape == (24, 16, 9)
    assert masks[0, 0, 0] == pytest.approx(0.5) and masks[-1, 0, 0] == pytest.approx(0.9)
    assert (masks[0] > 0.5).sum() == 0 and masks[0, 0, 5] == pytest.approx(0.5)  # radius 4: low band λ=0.5
    per_stage = timm.create_model('spanet_nano', kernel_size=[3, 5, 7, 9])
    assert [m.conv[0].kernel_size[1] for m in mixers(per_stage, SPAM)] == [3, 5, 7, 7, 9]
    with pytest.raises(ValueError, match='radii needs one value per stage'):
        timm.create_model('spanet_nano', radii=[1, 2])


def test_v2_spectral_filter_off_drops_the_srf():
    on = timm.create_model('spanetv2_nano_pure')
    off = timm.create_model('spanetv2_nano_pure', spectral_filter=False)
    srf_params = sum(m.filter.numel() for m in mixers(on, ExSPAM))
    assert trainable(on) - trainable(off) == srf_params
    assert all(m.filter is None for m in mixers(off, ExSPAM))
    out = off(torch.randn(1, 3, 64, 64))
    out.sum().backward()
    assert torch.isfinite(out).all()


def test_v2_kernel_sizes_per_head():
    model = timm.create_model('spanetv2_nano_pure', kernel_sizes=[7, 7, 7, 7])
    assert all([c.kernel_size for c in m.local_convs] == [(7, 7)] * 4 for m in mixers(model, ExSPAM))
    two_heads = timm.create_model('spanetv2_nano_pure', kernel_sizes=[3, 9])
    assert all(m.num_heads == 2 for m in mixers(two_heads, ExSPAM))
    assert two_heads(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(ValueError, match=r'kernel_sizes \[3, 5, 7\] gives 3 heads, which must divide dim 32'):
        timm.create_model('spanetv2_nano_pure', kernel_sizes=[3, 5, 7])
    with pytest.raises(ValueError, match='positive odd'):
        timm.create_model('spanetv2_nano_pure', kernel_sizes=[3, 4, 5, 7])


def test_v2_kernel_sizes_change_the_receptive_field():
    """A delta at the centre of a head's channel spreads exactly as far as that head's kernel reaches."""
    mixer = ExSPAM(8, kernel_sizes=(3, 9), filter_size=16, spectral_filter=False, head_layout='concat')
    x = torch.zeros(1, 8, 17, 17)
    x[..., 8, 8] = 1
    with torch.no_grad():
        for conv in mixer.local_convs:
            conv.weight.fill_(1.0)
            conv.bias.zero_()
        dw, b, *_ = mixer._derived(17, 17)
        out = torch.nn.functional.conv2d(x, dw, b, padding=dw.shape[-1] // 2, groups=8)
    assert (out[0, 0] != 0).sum() == 9 and (out[0, 7] != 0).sum() == 81


def test_v2_srf_activation():
    model = timm.create_model('spanetv2_nano_pure', srf_act='learnable_sigmoid')
    acts = [m.srf_act for m in mixers(model, ExSPAM)]
    assert all(isinstance(a, LearnableSigmoid) for a in acts)
    assert trainable(model) - trainable(timm.create_model('spanetv2_nano_pure')) == len(acts)
    mixer = mixers(model, ExSPAM)[0]
    base = mixer.srf(56, 56).detach().clone()
    with torch.no_grad():
        mixer.srf_act.alpha.fill_(3.0)
    assert not torch.allclose(mixer.srf(56, 56), base)
    with pytest.raises(ValueError, match=r"unknown ExSPAM srf_act 'relu'; valid names: sigmoid, learnable_sigmoid"):
        timm.create_model('spanetv2_nano_pure', srf_act='relu')


def test_v2_token_mixers_pure_hybrid_and_custom():
    pure = timm.create_model('spanetv2_nano_pure')
    hybrid = timm.create_model('spanetv2_nano_hybrid')
    assert [type(s.blocks[0].token_mixer) for s in pure.stages] == [ExSPAM] * 4
    assert [type(s.blocks[0].token_mixer) for s in hybrid.stages] == [ExSPAM, ExSPAM, MixAttention, Attention]
    custom = timm.create_model('spanetv2_nano_pure', token_mixers=['exspam', 'attention', 'attention', 'attention'])
    assert [type(s.blocks[0].token_mixer) for s in custom.stages] == [ExSPAM, Attention, Attention, Attention]
    with pytest.raises(ValueError, match="unknown token mixer 'conv'; valid names: exspam, mixattention, attention"):
        timm.create_model('spanetv2_nano_pure', token_mixers='conv')


def test_v2_head_layout_changes_the_function_not_the_parameters():
    a = timm.create_model('spanetv2_nano_pure').eval()
    b = timm.create_model('spanetv2_nano_pure', head_layout='concat').eval()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.endswith('._extra_state')})
    assert {m.head_layout for m in mixers(b, ExSPAM)} == {'concat'}  # no layout in the state dict: b keeps its own
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def test_v2_head_layout_travels_in_the_state_dict():
    """The channel order is state: a state dict reloads alone, as a 0-d tensor (EMA copies and safetensors need
    tensors only); a bad code is one clear line."""
    a = timm.create_model('spanetv2_nano_hybrid', head_layout='concat').eval()
    state = a.state_dict()
    codes = {k: v for k, v in state.items() if k.endswith('._extra_state')}
    assert len(codes) == len(mixers(a, ExSPAM)) and all(v.ndim == 0 and v.item() == 1 for v in codes.values())
    b = timm.create_model('spanetv2_nano_hybrid').eval()
    b.load_state_dict(state)
    assert {m.head_layout for m in mixers(b, ExSPAM)} == {'concat'}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r'head_layout code 7 in the state dict is not one of 0\.\.1'):
        b.load_state_dict({**state, next(iter(codes)): torch.tensor(7)})


# ---- bad input -----------------------------------------------------------------------------------------------

def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown SPANet variant 'spanet_smal' \(did you mean 'spanet_small'\?\)"
                                         r".*spanetv2_b36_hybrid"):
        create_backbone('spanet_smal')


@pytest.mark.parametrize('name', NANO_VARIANTS)
def test_wrong_channel_count(name):
    model = create_backbone(name)
    with pytest.raises(ValueError, match=r'expects images shaped \(B, 3, H, W\).*got \(1, 4, 64, 64\)'):
        model(torch.randn(1, 4, 64, 64))
    assert create_backbone(name, in_chans=1)(torch.randn(1, 1, 64, 64)).shape == (1, 1000)


def test_bad_spam_arguments():
    with pytest.raises(ValueError, match='kernel_size must be a positive odd'):
        SPAM(24, kernel_size=4)
    with pytest.raises(ValueError, match='radius must be positive'):
        SPAM(24, radius=0)


@pytest.mark.parametrize('variant', NANO_VARIANTS)
def test_train_after_inference_mode_at_the_same_size(variant):
    model = create_backbone(variant, num_classes=3)
    x = torch.randn(2, 3, 40, 40)
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
