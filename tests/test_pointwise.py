"""Channel products as oneDNN 1x1 convolutions (models/pointwise.py): known answers, equality with F.linear in values
and gradients, gradcheck, the rule that picks the path, and whole SPANetV2 models taking it in training."""
import pytest
import timm
import torch
import torch.nn.functional as F

import spanet_pl  # noqa: F401  (registers the variants with timm)
from layer_checks import forward_backward
from spanet_pl.models import pointwise
from spanet_pl.models.pointwise import (MIN_ROWS, PointwiseConv2d, PointwiseLinear, _PointwiseLinearFunction, conv_rule,
                                       linear)

FAST = _PointwiseLinearFunction.__name__ + 'Backward'


def _map(rows: int, channels: int, **kwargs) -> torch.Tensor:
    """A (2, rows // 2, 1, channels) channels-last map with ``rows`` rows."""
    return torch.randn(2, rows // 2, 1, channels, **kwargs)


def test_known_answers_identity_and_row_sums():
    x = _map(MIN_ROWS, 8)
    assert conv_rule(x, torch.eye(8))
    torch.testing.assert_close(linear(x, torch.eye(8)), x, atol=0, rtol=0)
    sums = linear(x, torch.ones(3, 8), torch.tensor([0., 1., 2.]))
    torch.testing.assert_close(sums, x.sum(-1, keepdim=True) + torch.tensor([0., 1., 2.]))


@pytest.mark.parametrize('k, n, bias', [(64, 256, False), (256, 64, True), (40, 40, True)])
def test_values_and_gradients_equal_f_linear_on_permuted_views(k, n, bias):
    """x is a channels-last view of NCHW-ordered memory's permute (ExSPAM's projection input) and the output gradient a
    strided slice: the rows are gathered, not assumed contiguous."""
    weight = torch.randn(n, k) / k ** 0.5
    b = torch.randn(n) if bias else None
    base = torch.randn(2, k, 24, 32)
    grad = torch.randn(2, 24, 32, 2 * n)[..., ::2]
    results = []
    for fn in (linear, F.linear):
        x = base.permute(0, 2, 3, 1).detach().requires_grad_()
        w = weight.clone().requires_grad_()
        bb = None if b is None else b.clone().requires_grad_()
        out = fn(x, w, bb)
        out.backward(grad)
        results.append((out, x.grad, w.grad) + (() if bb is None else (bb.grad,)))
        if fn is linear:
            assert type(out.grad_fn).__name__ == FAST
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)


def test_gradcheck_float64():
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_PointwiseLinearFunction.apply, (x, w, b))


def test_output_is_a_contiguous_buffer_of_its_own():
    """StarMlp's backward works in place in the product it gets: the result must be a fresh row-major buffer."""
    x = _map(MIN_ROWS, 16)
    out = pointwise.product(x, torch.randn(32, 16))
    assert out.is_contiguous() and out.shape == (2, MIN_ROWS // 2, 1, 32)
    assert out.untyped_storage().nbytes() == out.numel() * out.element_size()


def test_rule_cpu_fp32_eager_with_enough_rows_only():
    w = torch.randn(8, 8)
    assert conv_rule(_map(MIN_ROWS, 8), w)
    assert not conv_rule(_map(MIN_ROWS - 2, 8), w)
    assert not conv_rule(_map(MIN_ROWS, 8, dtype=torch.float64), w.double())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not conv_rule(_map(MIN_ROWS, 8), w)
    old = pointwise.enable(False)
    try:
        assert not conv_rule(_map(MIN_ROWS, 8), w)
    finally:
        pointwise.enable(old)
    layer = PointwiseLinear(8, 4)
    x = _map(MIN_ROWS, 8, requires_grad=True)
    assert type(layer(x).grad_fn).__name__ == FAST
    assert type(layer(x[:, :4]).grad_fn).__name__ != FAST  # F.linear below MIN_ROWS rows
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('variant', ['spanetv2_nano_pure', 'spanetv2_nano_hybrid'])
def test_whole_model_gradients_equal_with_and_without_the_path(variant):
    """A nano SPANetV2 at 64 px, batch 4: the stage-0 maps have 4 * 16 * 16 = 1024 rows, so ExSPAM's query, context,
    reduction and output products and the stage-0 MLP take the path; the parameter gradients equal those of the
    F.linear path."""
    torch.manual_seed(0)
    model = timm.create_model(variant, num_classes=10, img_size=64).train()
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    calls = []
    grads = []
    for on in (True, False):
        old = pointwise.enable(on)
        conv_product = pointwise._conv_product
        pointwise._conv_product = lambda *a, **k: calls.append(on) or conv_product(*a, **k)
        try:
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
        finally:
            pointwise._conv_product, _ = conv_product, pointwise.enable(old)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    # stage 0 (one block): query, context, reduction, output projection and fc1, fc2 forward; their data gradients
    assert calls == [True] * 12
    for name, ref in grads[1].items():
        torch.testing.assert_close(grads[0][name], ref, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize('rows', [MIN_ROWS // 2, MIN_ROWS])
def test_pointwise_conv2d_equals_nn_conv2d(rows):
    """Few pixels: a matrix product over the channels-last view; many: oneDNN's convolution. Values and gradients
    equal nn.Conv2d's, and the output keeps channels-last memory."""
    base = torch.randn(2, 24, rows // 32, 16).contiguous(memory_format=torch.channels_last)
    results = forward_backward(PointwiseConv2d(24, 40), torch.nn.Conv2d(24, 40, 1), base,
                               torch.randn(2, 40, rows // 32, 16))
    few = rows < MIN_ROWS
    assert (type(results[0][0].grad_fn).__name__ == 'PermuteBackward0') == few
    assert results[0][0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_spanet_gradients_equal_with_and_without_the_matrix_products():
    """spanet_nano at 64 px, batch 2: every map has fewer than MIN_ROWS pixels, so SPAM's and the MLP's 1x1 layers
    (4 per block, 5 blocks) run as matrix products; the parameter gradients equal oneDNN's convolutions'."""
    torch.manual_seed(0)
    model = timm.create_model('spanet_nano', num_classes=4).train()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2,))
    grads, products = [], []
    for m in model.modules():
        if type(m) is PointwiseConv2d:  # a matrix product's output is the permuted view of F.linear's
            m.register_forward_hook(lambda m, i, out: products.append(type(out.grad_fn).__name__ == 'PermuteBackward0'))
    for on in (True, False):
        old = pointwise.enable(on)
        try:
            model.zero_grad()
            out = model(x)
            F.cross_entropy(out, y).backward()
        finally:
            pointwise.enable(old)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert products == [True] * (4 * 5) + [False] * (4 * 5)
    for name, ref in grads[1].items():
        torch.testing.assert_close(grads[0][name], ref, atol=1e-5, rtol=1e-4, msg=name)
