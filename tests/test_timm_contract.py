"""timm's whole model contract, as timm's own test-suite checks its models: head and pooling, pretrained_cfg,
TorchScript, torch.fx (forward and backward, timm's FX feature extraction), forward_intermediates and pruning,
features_only with every feature class, gradient checkpointing. Fast on the nano variants; one slow test over all."""
import io

import pytest
import timm
import torch
from timm.models import get_graph_node_names
from timm.models._features_fx import create_feature_extractor

from spanet_pl.errors import UserInputError
from spanet_pl.models import VARIANTS

from conftest import NANO_VARIANTS

CFG_KEYS = ('input_size', 'pool_size', 'first_conv', 'classifier', 'mean', 'std', 'crop_pct', 'interpolation',
            'license', 'paper_ids', 'origin_url')


def check_head_and_cfg(name: str, size: int = 224):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    assert all(cfg.get(key) is not None for key in CFG_KEYS), {k: cfg.get(k) for k in CFG_KEYS}
    state = model.state_dict()
    assert f'{cfg["classifier"]}.weight' in state and f'{cfg["first_conv"]}.weight' in state
    assert model.head_hidden_size > 0 and model.num_features > 0
    x = torch.randn(1, 3, size, size)
    pool = tuple(s * size // 224 for s in cfg['pool_size'])
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (1, model.num_features, *pool)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre_logits)
        model.reset_classifier(0, '')
        assert model(x).shape == (1, model.num_features, *pool)
        unpooled = timm.create_model(name, num_classes=0, global_pool='').eval()
        assert unpooled(x).shape == (1, unpooled.num_features, *pool)


def check_torchscript(name: str, size: int):
    model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)


def check_fx(name: str, size: int):
    """Symbolic tracing, forward and backward, and timm's FX feature extraction."""
    model = timm.create_model(name, num_classes=5).eval()
    graph = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), atol=1e-5, rtol=1e-5)
    graph.train()
    graph(x).logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    train_nodes, eval_nodes = get_graph_node_names(model)
    extractor = create_feature_extractor(model, return_nodes={train_nodes[-1]: 'out'})  # timm's leaf settings
    with torch.no_grad():
        torch.testing.assert_close(extractor(x)['out'], model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('name', NANO_VARIANTS)
def test_head_pool_choices_and_cfg(name):
    check_head_and_cfg(name, size=64)
    x = torch.randn(2, 3, 64, 64)
    for pool in ('avg', 'max', 'avgmax'):
        model = timm.create_model(name, num_classes=0, global_pool=pool).eval()
        assert model(x).shape == (2, model.num_features)
        model.reset_classifier(7, pool)
        assert model(x).shape == (2, 7)
    with pytest.raises(UserInputError, match='global_pool'):
        timm.create_model(name, global_pool='catavgmax')
    with pytest.raises(UserInputError, match='num_classes=0'):
        timm.create_model(name, num_classes=5, global_pool='')


@pytest.mark.parametrize('name', NANO_VARIANTS)
def test_torchscript(name):
    check_torchscript(name, size=96)  # not 224: the SRF is resized inside the scripted graph


@pytest.mark.parametrize('name', NANO_VARIANTS)
def test_fx_trace_forward_backward_and_feature_extraction(name):
    check_fx(name, size=64)


@pytest.mark.parametrize('name', NANO_VARIANTS)
def test_features_only_every_feature_class(name):
    x = torch.randn(2, 3, 96, 64)
    outputs = {}
    for feature_cls in ('getter', 'hook', 'fx'):
        torch.manual_seed(0)
        model = timm.create_model(name, features_only=True, out_indices=(0, 2), feature_cls=feature_cls).eval()
        assert model.feature_info.channels() == [info['num_chs'] for info in model.feature_info.get_dicts()]
        with torch.no_grad():
            outputs[feature_cls] = model(x)
        assert [f.shape[1] for f in outputs[feature_cls]] == model.feature_info.channels()
        assert [(f.shape[2], f.shape[3]) for f in outputs[feature_cls]] == [(24, 16), (6, 4)]
    for feature_cls in ('hook', 'fx'):
        for got, expected in zip(outputs[feature_cls], outputs['getter']):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('name', NANO_VARIANTS)
def test_forward_intermediates_options_and_pruning(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, every = model.forward_intermediates(x)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[0, 2], stop_early=True, intermediates_only=True)
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [f.shape[1] for f in every] == [info['num_chs'] for info in model.feature_info]
        for got, index in zip(last_two, (2, 3)):
            torch.testing.assert_close(got, every[index])
        for got, index in zip(picked, (0, 2)):
            torch.testing.assert_close(got, every[index])
        torch.testing.assert_close(normed[0], model._feature_map(model.stages(model.stem(x)), final=True))
        with pytest.raises(ValueError, match='NCHW'):
            model.forward_intermediates(x, output_fmt='NHWC')
        kept = model.prune_intermediate_layers([1])
        assert kept == [1] and len(model.stages) == 2
        pruned = model.forward_intermediates(x, indices=kept, intermediates_only=True)
        torch.testing.assert_close(pruned[0], every[1])


@pytest.mark.parametrize('name', NANO_VARIANTS)
def test_gradient_checkpointing_same_gradients(name):
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=4)
        model.set_grad_checkpointing(checkpointing)
        model(x).logsumexp(1).sum().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys() and all(g is not None for g in grads[1].values())
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('name', VARIANTS)
def test_whole_contract_every_variant(name):
    check_head_and_cfg(name)
    check_torchscript(name, size=64)
    check_fx(name, size=64)
    model = timm.create_model(name, features_only=True, feature_cls='fx', out_indices=(1, 3)).eval()
    with torch.no_grad():
        assert [f.shape[1] for f in model(torch.randn(1, 3, 64, 64))] == model.feature_info.channels()
