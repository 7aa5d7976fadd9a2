"""Official checkpoint layouts load strictly and reproduce the official code's logits.

tests/fixtures/official_reference.pt holds, for each case, the official model's state-dict key names and shapes and
its logits on seeded weights and inputs (recorded by tools/make_official_reference.py from the official sources).
"""
from pathlib import Path

import pytest
import timm
import torch

from spanet_pl.models import ExSPAM, detect_layout, load_official_checkpoint
from spanet_pl.testing import seeded_input, synthetic_state_dict

REFERENCE = torch.load(Path(__file__).parent / 'fixtures' / 'official_reference.pt')


def official_state_dict(case: str):
    ref = REFERENCE[case]
    return synthetic_state_dict(ref['shapes'], ref['seed'])


# one comparison with the official logits stays in `make test-fast` (hybrid, ver4's channel order, not 224)
FAST_CASE = 'ver4_s18_hybrid_288'


# grad: the training path (ExSPAM's per-head convs, the custom autograd functions) instead of the inference one
@pytest.mark.parametrize('grad', [False, True])
@pytest.mark.parametrize('case', [pytest.param(case, marks=() if case == FAST_CASE else pytest.mark.slow)
                                  for case in sorted(REFERENCE)])
def test_logits_equal_official(case, grad):
    ref = REFERENCE[case]
    model = timm.create_model(ref['variant']).eval()
    load_official_checkpoint(model, official_state_dict(case))
    with torch.set_grad_enabled(grad):
        logits = model(seeded_input(2, (ref['size'], ref['size']), ref['seed'])).detach()
    torch.testing.assert_close(logits, ref['logits'], atol=1e-4, rtol=0)
    expected_layout = {'v1': None, 'v2': 'interleave', 'v2_ver4': 'concat'}[ref['layout']]
    assert {m.head_layout for m in model.modules() if isinstance(m, ExSPAM)} <= {expected_layout}


def test_layout_detection():
    assert detect_layout(official_state_dict('v1_small_224')) == 'v1'
    assert detect_layout(official_state_dict('v2_s18_pure_224')) == 'v2'
    assert detect_layout(official_state_dict('ver4_s18_pure_224')) == 'v2_ver4'
    assert detect_layout(timm.create_model('spanet_nano').state_dict()) == 'ours'
    with pytest.raises(ValueError, match='unrecognised checkpoint layout'):
        detect_layout({'foo.weight': torch.zeros(1)})


@pytest.mark.slow
def test_v2_channel_order_matters():
    """Loading the same tensors as the other layout gives other logits: the loader's choice is load-bearing."""
    ref = REFERENCE['v2_s18_pure_224']
    model = timm.create_model('spanetv2_s18_pure').eval()
    load_official_checkpoint(model, official_state_dict('v2_s18_pure_224'))
    for m in model.modules():
        if isinstance(m, ExSPAM):
            m.head_layout = 'concat'
    with torch.no_grad():
        logits = model(seeded_input(2, (224, 224), ref['seed']))
    assert (logits - ref['logits']).abs().max() > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize('wrapper', [None, 'model', 'state_dict'])
def test_wrapped_and_file_sources(tmp_path, wrapper):
    state = official_state_dict('v1_small_224')
    state = {f'module.{k}': v for k, v in state.items()} if wrapper == 'state_dict' else state
    path = tmp_path / 'ckpt.pth'
    torch.save({wrapper: state} if wrapper else state, path)
    model = load_official_checkpoint(timm.create_model('spanet_small'), path)
    torch.testing.assert_close(model.head.weight, state[('module.' if wrapper == 'state_dict' else '') + 'head.weight'])


@pytest.mark.slow
def test_timm_pretrained_file_goes_through_the_converter(tmp_path):
    path = tmp_path / 'v2.pth'
    torch.save(official_state_dict('ver4_s18_pure_224'), path)
    model = timm.create_model('spanetv2_s18_pure', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    ref = REFERENCE['ver4_s18_pure_224']
    with torch.no_grad():
        logits = model.eval()(seeded_input(2, (224, 224), ref['seed']))
    torch.testing.assert_close(logits, ref['logits'], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_ver4_slope_loads_into_learnable_srf():
    state = official_state_dict('ver4_s18_pure_224')
    model = load_official_checkpoint(timm.create_model('spanetv2_s18_pure', srf_act='learnable_sigmoid'), state)
    mixer = model.stages[0].blocks[0].token_mixer
    assert torch.equal(mixer.srf_act.alpha, state['stages.0.0.token_mixer.scale.alpha'])


@pytest.mark.slow
def test_another_variant_names_the_mismatched_keys():
    model = timm.create_model('spanetv2_s18_hybrid')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r'another variant.*missing: stages\.2\.blocks\.0\.token_mixer\.qkv\.weight'
                                         r'.*unexpected: stages\.2\.blocks\.0\.token_mixer\.query\.0\.weight'):
        load_official_checkpoint(model, official_state_dict('v2_s18_pure_224'))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded
    assert {m.head_layout for m in model.modules() if isinstance(m, ExSPAM)} == {'interleave'}
    with pytest.raises(ValueError, match=r'shape mismatch: stem\.conv\.weight \(64, 3, 7, 7\) vs model \(96, 3, 7, 7\)'):
        load_official_checkpoint(timm.create_model('spanet_base'), official_state_dict('v1_small_224'))


@pytest.mark.slow
def test_family_mismatch_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match='official SPANet layout .* model is a SPANetV2'):
        load_official_checkpoint(timm.create_model('spanetv2_s18_pure'), official_state_dict('v1_small_224'))
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_official_checkpoint(timm.create_model('spanet_nano'), tmp_path / 'nope.pth')


def test_own_state_dict_round_trip():
    a, b = timm.create_model('spanetv2_nano_hybrid'), timm.create_model('spanetv2_nano_hybrid')
    load_official_checkpoint(b, a.state_dict())
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_official_harness_imports_with_shims_and_restores_timm(tmp_path):
    """The one harness (benchmark, tools, tests): an official-style file importing the old timm paths loads, its
    @register_model is a no-op, and timm is left as it was."""
    import sys
    import timm.models.registry
    from spanet_pl.testing import OFFICIAL_FILES, build_official, official_module, official_weights
    path = tmp_path / OFFICIAL_FILES['v2']
    path.parent.mkdir(parents=True)
    path.write_text(
        'import torch.nn as nn\n'
        'from timm.models.layers.helpers import to_2tuple\n'
        'from timm.models.registry import register_model\n'
        '@register_model\n'
        'def official_fake_net():\n'
        '    print("official code prints")\n'
        '    return nn.Conv2d(3, 4, to_2tuple(3)[0])\n')
    register = timm.models.registry.register_model
    model = build_official('v2', 'official_fake_net', tmp_path)
    assert isinstance(model, torch.nn.Conv2d) and not model.training
    assert timm.models.registry.register_model is register and 'timm.models.layers.helpers' not in sys.modules
    assert 'official_fake_net' not in timm.list_models() and official_module('v2', str(tmp_path)) is not None
    weights = official_weights(model, 'v2', seed=0)
    assert weights.keys() == model.state_dict().keys() and not torch.equal(weights['weight'], model.weight)
    with pytest.raises(FileNotFoundError, match='spanetv2_ver4.py'):
        official_module('v2_ver4', str(tmp_path))


# Live comparison with the official code at more input sizes than the fixture holds, where local clones are given:
# SPANET_OFFICIAL_V1=PATH/SPANet-official SPANET_OFFICIAL_V2=PATH/SPANetV2-official pytest -m slow -k live
LIVE_CASES = [('v1', 'spanet_small', 224), ('v2', 'spanetv2_s18_pure', 160), ('v2', 'spanetv2_s18_hybrid', 256),
              ('v2_ver4', 'spanetv2_s18_pure', 320), ('v2_ver4', 'spanetv2_s18_hybrid', 192)]


@pytest.mark.slow
@pytest.mark.parametrize('layout,variant,size', LIVE_CASES)
def test_logits_equal_live_official(layout, variant, size):
    import os
    from spanet_pl.testing import build_official, official_weights
    root = os.environ.get('SPANET_OFFICIAL_V1' if layout == 'v1' else 'SPANET_OFFICIAL_V2')
    if not root:
        pytest.skip('no SPANET_OFFICIAL_V1 / SPANET_OFFICIAL_V2 clone given')
    official = build_official(layout, variant, root)
    official.load_state_dict(official_weights(official, layout, seed=1))
    model = load_official_checkpoint(timm.create_model(variant).eval(), official.state_dict())
    x = seeded_input(2, (size, size), seed=1)
    with torch.no_grad():
        reference = official(x)
        torch.testing.assert_close(model(x), reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(model(x).detach(), reference, atol=1e-4, rtol=0)  # the training path
