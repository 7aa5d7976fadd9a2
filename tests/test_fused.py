"""The eager-mode fusions and custom backward passes compute what the plain expressions compute, gradients included."""
import contextlib

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from timm.models.metaformer import StarReLU as TimmStarReLU

from spanet_pl.models import ExSPAM
from timm.layers import Mlp

from spanet_pl.models.fused import StarMlp, StarReLU, _StarMlpFunction, _StarReLUFunction, scale_add, use_fused
from spanet_pl.models.dft import matmul_dft
from spanet_pl.models.spectral import spectral_filter


def test_star_relu_gradcheck_float64():
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    x.data[x.data.abs() < 1e-3] = 0.5  # keep away from ReLU's kink, where finite differences disagree
    scale = torch.tensor([0.8], dtype=torch.float64, requires_grad=True)
    bias = torch.tensor([-0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_StarReLUFunction.apply, (x, scale, bias))


def _output_and_grads(module: torch.nn.Module, x: torch.Tensor) -> list:
    """[output, input gradient, each parameter's gradient (None when frozen)] after backward of cos(output)."""
    xr = x.clone().requires_grad_()
    out = module(xr)
    out.backward(torch.cos(out))
    return [out, xr.grad] + [p.grad for p in module.parameters()]


def test_star_relu_matches_timm_values_and_gradients():
    ours, timm_act = StarReLU(), TimmStarReLU()
    timm_act.load_state_dict(ours.state_dict())
    x = torch.randn(4, 7, 6, 8)
    results = [_output_and_grads(act, x) for act in (ours, timm_act)]
    assert len(results[0]) == 4  # output, input, scale and bias gradients
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_scale_add():
    x, y, s = torch.randn(2, 5, 5, 8), torch.randn(2, 5, 5, 8), torch.randn(8)
    torch.testing.assert_close(scale_add(x, s, y), x * s + y)


# the CPU's two forms of the filter: DFT matrices (the default on small maps, dft.py) and FFTs
FORMS = {'dft': contextlib.nullcontext, 'fft': lambda: matmul_dft(False)}


@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('size', [(6, 6), (5, 7), (4, 5)])  # even and odd widths (Nyquist bin or none)
def test_spectral_filter_gradcheck_float64(size, channels_last, form):
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, size[0], size[1] // 2 + 1, dtype=torch.float64, requires_grad=True)
    if channels_last:
        x, w = x.detach().permute(0, 2, 3, 1).requires_grad_(), w.detach().permute(1, 2, 0).requires_grad_()
    with FORMS[form]():
        assert torch.autograd.gradcheck(lambda a, b: spectral_filter(a, b, channels_last=channels_last), (x, w))


@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('channels_last', [False, True])
def test_spectral_filter_equals_textbook_expression(channels_last, form):
    """Values and gradients equal the plain rfft2 / irfft2 over the layout's spatial dims; channels-last output is
    channels-last in memory too (the layers after it read it without copies)."""
    x = torch.randn(3, 4, 9, 10)
    w = torch.rand(4, 9, 6)
    if channels_last:
        x, w = x.permute(0, 2, 3, 1), w.permute(1, 2, 0)
    dims = (1, 2) if channels_last else (-2, -1)
    results = []
    for ours in (True, False):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        if ours:
            with FORMS[form]():
                out = spectral_filter(xr, wr, channels_last=channels_last)
            assert out.is_contiguous()
        else:
            out = torch.fft.irfft2(torch.fft.rfft2(xr, dim=dims, norm='ortho') * wr, s=[x.shape[d] for d in dims],
                                   dim=dims, norm='ortho')
        out.backward(torch.sin(out))
        results.append((out, xr.grad, wr.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_plain_expressions_under_fx_and_torchscript():
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.act = StarReLU()

        def forward(self, x):
            seen.append(use_fused())
            return self.act(x)

    assert use_fused()
    graph = torch.fx.symbolic_trace(Probe())
    assert seen == [False] and 'apply' not in graph.code
    scripted = torch.jit.script(StarReLU())
    torch.testing.assert_close(scripted(torch.ones(2)), StarReLU()(torch.ones(2)))


@pytest.mark.parametrize('head_layout', ['interleave', 'concat'])
@pytest.mark.parametrize('size', [(8, 8), (7, 10)])
def test_exspam_training_path_equals_inference_path(head_layout, size):
    """Grad enabled, ExSPAM runs one conv per head at its own kernel size; without grad, one zero-padded conv over
    all heads. Same values, and the per-head path's gradients equal autograd's through the padded path."""
    torch.manual_seed(0)
    mixer = ExSPAM(16, filter_size=(6, 6), head_layout=head_layout, bias=True).double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    with torch.no_grad():
        fast = mixer(x)
    torch.testing.assert_close(mixer(x), fast)

    def padded_path(inp):  # the inference path's weights, differentiable
        dw_weight, dw_bias, ctx_weight, ctx_bias, srf = mixer._derived(*size)
        ctx = F.conv2d(F.linear(inp, ctx_weight, ctx_bias).permute(0, 3, 1, 2), dw_weight, dw_bias,
                       padding=dw_weight.shape[-1] // 2, groups=16)
        ctx = spectral_filter(ctx.permute(0, 2, 3, 1), srf, channels_last=True)
        ctx = mixer.proj(ctx.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return mixer.proj_out(mixer.query(inp) * ctx)

    grads = []
    for fn in (mixer, padded_path):
        mixer.zero_grad()
        xr = x.clone().requires_grad_()
        out = fn(xr)
        out.backward(torch.cos(out))
        grads.append([xr.grad] + [p.grad for p in mixer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('frozen', [False, True])
def test_star_mlp_equals_module_by_module(frozen):
    """The fused MLP gives timm's Mlp + StarReLU values and gradients (input, both weights, scale, bias); frozen
    weights (fine-tuning a head on a fixed backbone) get none and the input still gets its gradient."""
    torch.manual_seed(0)
    fused = StarMlp(8, 24)
    with torch.no_grad():
        fused.act.scale.fill_(0.7)
        fused.act.bias.fill_(-0.2)
    plain = Mlp(8, 24, act_layer=TimmStarReLU, bias=False)
    plain.load_state_dict(fused.state_dict())
    for module in (fused, plain):
        module.requires_grad_(not frozen)
    x = torch.randn(2, 5, 6, 8)
    results = [_output_and_grads(module, x) for module in (fused, plain)]
    assert (results[0][2] is None) == frozen
    for a, b in zip(*results):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b)


def test_star_mlp_gradcheck_float64():
    mlp = StarMlp(3, 5).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    w = [mlp.fc1.weight, mlp.fc2.weight, mlp.act.scale, mlp.act.bias]
    assert torch.autograd.gradcheck(lambda *a: _StarMlpFunction.apply(*a), (x, *w))


def test_star_mlp_plain_path_with_dropout_and_under_script():
    mlp = StarMlp(4, 8, drop=0.5)
    x = torch.randn(16, 4)
    assert not torch.equal(mlp.train()(x), mlp(x))  # dropout ran: the module-by-module path
    torch.testing.assert_close(torch.jit.script(mlp.eval())(x), mlp(x))
