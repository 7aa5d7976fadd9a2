"""DepthwiseConv2d (models/depthwise.py): the weight gradient as a forward convolution, and 1 x k kernels' backward
over the map's rows; heads_conv, ExSPAM's heads in one call. A known answer (all-ones planes: each tap's gradient
counts the positions it overlaps), equality with nn.Conv2d in values and every gradient on the strided maps ExSPAM
feeds it and on SPANet's channels-last maps, fp64 gradcheck, the rules that pick the paths, and whole models."""
import pytest
import timm
import torch
import torch.nn as nn

import spanet_pl  # noqa: F401  (registers the variants with timm)
from layer_checks import forward_backward
from spanet_pl.models import depthwise
from spanet_pl.models import exspam
from spanet_pl.models.depthwise import (DepthwiseConv2d, _DepthwiseConvFunction, _HeadsConvFunction, _RowConvFunction,
                                        forward_weight_grad, heads_conv)

FAST = _DepthwiseConvFunction.__name__ + 'Backward'
ROWS = _RowConvFunction.__name__ + 'Backward'
HEADS = _HeadsConvFunction.__name__ + 'Backward'


def _grad_fn_name(conv: nn.Module, x: torch.Tensor) -> str:
    return type(conv(x).grad_fn).__name__


def test_known_answer_all_ones_counts_the_overlap_of_each_tap():
    batch, height, width, k = 2, 6, 5, 7
    conv = DepthwiseConv2d(3, k)
    x = torch.ones(batch, 3, height, width)
    out = conv(x)
    assert type(out.grad_fn).__name__ == FAST
    out.backward(torch.ones_like(out))
    p = k // 2
    offsets = torch.arange(k) - p
    overlap = (height - offsets.abs()).clamp(min=0)[:, None] * (width - offsets.abs()).clamp(min=0)[None, :]
    torch.testing.assert_close(conv.weight.grad, (batch * overlap).float().expand(3, 1, k, k))
    torch.testing.assert_close(conv.bias.grad, torch.full((3,), float(batch * height * width)))


@pytest.mark.parametrize('k, size', [(5, (14, 14)), (7, (9, 12)), (9, (7, 7)), (9, (3, 4)), (7, (40, 36))])
def test_values_and_gradients_equal_nn_conv2d_on_strided_channels_last_slices(k, size):
    """The input is a channel slice of channels-last memory and the output gradient a slice with a channel stride
    (ExSPAM's heads on both sides). In float64, so that the summation order's rounding stays far below the tolerance."""
    ours, ref = DepthwiseConv2d(4, k).double(), nn.Conv2d(4, 4, k, padding=k // 2, groups=4).double()
    ref.load_state_dict(ours.state_dict())
    base = torch.randn(3, *size, 8, dtype=torch.float64)
    grad = torch.randn(3, *size, 4, 2, dtype=torch.float64)[..., 0].permute(0, 3, 1, 2)
    results = []
    for conv in (ours, ref):
        x = base.permute(0, 3, 1, 2)[:, 2:6].detach().requires_grad_()
        out = conv(x)
        out.backward(grad)
        results.append((out, x.grad, conv.weight.grad, conv.bias.grad))
    assert type(ours(base.permute(0, 3, 1, 2)[:, :4]).grad_fn).__name__ == FAST
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_gradcheck_float64():
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _DepthwiseConvFunction.apply(x, w, b, (2, 2)), (x, w, b))


def test_rule_large_kernels_and_small_maps_take_the_forward_conv():
    assert forward_weight_grad((9, 9), 56, 56) and forward_weight_grad((7, 7), 56, 56)
    assert forward_weight_grad((5, 5), 28, 28) and not forward_weight_grad((5, 5), 56, 56)
    assert not forward_weight_grad((3, 3), 7, 7)


def test_plain_conv_where_the_fast_path_does_not_apply():
    conv = DepthwiseConv2d(2, 9)
    x = torch.randn(1, 2, 8, 8)
    assert _grad_fn_name(conv, x) == FAST
    assert _grad_fn_name(DepthwiseConv2d(2, 3), x) != FAST  # 3x3: PyTorch's kernel is faster
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert _grad_fn_name(conv, x) != FAST
    conv.weight.requires_grad_(False)
    assert _grad_fn_name(conv, x) != FAST
    with torch.no_grad():
        assert conv(x).grad_fn is None


def test_even_kernel_is_refused():
    with pytest.raises(ValueError, match='odd'):
        DepthwiseConv2d(2, 4)


@pytest.mark.parametrize('name, fast_convs', [('spanetv2_nano_pure', 5 * 3), ('spanetv2_nano_hybrid', 2 * 3 + 2)])
def test_model_gradients_equal_the_plain_conv_path(name, fast_convs, monkeypatch):
    """A whole SPANetV2 (ExSPAM heads, MixAttention's 7x7; depths 1-1-2-1, so 5 ExSPAM blocks in the pure variant,
    2 ExSPAM + 2 MixAttention in the hybrid): every parameter's gradient with the forward-conv weight gradient equals
    PyTorch's kernel's."""
    calls = []
    weight_grad = depthwise._weight_grad
    monkeypatch.setattr(depthwise, '_weight_grad', lambda *args: calls.append(1) or weight_grad(*args))
    _assert_model_gradients_equal_without_the_routes(name, monkeypatch)
    assert len(calls) == fast_convs  # three heads of 5x5 and up per ExSPAM block, one 7x7 per MixAttention block


def _assert_model_gradients_equal_without_the_routes(name: str, monkeypatch) -> None:
    """fp64 parameter gradients of model ``name`` (64 px, batch 2) with DepthwiseConv2d's routes and heads_conv, then
    without (ExSPAM's heads one by one through PyTorch's kernels)."""
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    grads = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(DepthwiseConv2d, '_backward_route', lambda self, x: None)
            monkeypatch.setattr(exspam, 'cpu_training', lambda x, weights: False)
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=4).double()
        model(x).logsumexp(1).sum().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize('k, size, channels_last', [(7, (14, 14), True), (3, (5, 9), True), (7, (6, 11), False),
                                                    (9, (4, 3), True)])
def test_row_kernel_values_and_gradients_equal_nn_conv2d(k, size, channels_last):
    """1 x k kernels take the rows route; channels-last maps are read in place, others through a copy."""
    ours, ref = DepthwiseConv2d(5, (1, k)).double(), nn.Conv2d(5, 5, (1, k), padding=(0, k // 2), groups=5).double()
    base = torch.randn(3, 5, *size, dtype=torch.float64)
    if channels_last:
        base = base.contiguous(memory_format=torch.channels_last)
    results = forward_backward(ours, ref, base, torch.randn(3, 5, *size, dtype=torch.float64))
    assert type(ours(base).grad_fn).__name__ == ROWS
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    if channels_last:  # the input's gradient comes back in the input's memory layout
        assert results[0][1].is_contiguous(memory_format=torch.channels_last)


def test_row_kernel_gradcheck_and_routes():
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 1, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _RowConvFunction.apply(x, w, b, 2), (x, w, b))
    x = torch.randn(1, 2, 8, 8)
    assert _grad_fn_name(DepthwiseConv2d(2, (1, 7)), x) == ROWS
    assert _grad_fn_name(DepthwiseConv2d(2, (7, 1)), x) not in (ROWS, FAST)  # column kernels: PyTorch's kernel
    assert _grad_fn_name(DepthwiseConv2d(2, (1, 1)), x) not in (ROWS, FAST)


def test_spanet_gradients_equal_with_and_without_the_rows_route(monkeypatch):
    """A whole SPANet nano (one 1 x 7 context conv per block, 5 blocks): parameter gradients equal in fp64."""
    calls = []
    rows = depthwise._rows
    monkeypatch.setattr(depthwise, '_rows', lambda t: calls.append(1) or rows(t))
    _assert_model_gradients_equal_without_the_routes('spanet_nano', monkeypatch)
    assert len(calls) == 2 * 5  # the gradient's and the input's rows, once per block


def _per_head(x: torch.Tensor, convs, interleave: bool) -> torch.Tensor:
    """The reference for heads_conv: each head's channels gathered, its own nn.Conv2d, the outputs put back."""
    heads = len(convs)
    planes = x.unflatten(1, [-1, heads] if interleave else [heads, -1])
    outs = [conv(planes[:, :, i] if interleave else planes[:, i]) for i, conv in enumerate(convs)]
    return torch.stack(outs, 2 if interleave else 1).flatten(1, 2)


@pytest.mark.parametrize('kernels, size, interleave, bias', [
    ((3, 5, 7, 9), (14, 14), True, True), ((3, 5, 7, 9), (40, 36), True, True), ((3, 5, 7, 9), (9, 12), False, True),
    ((7, 7, 7, 7), (6, 5), True, False), ((1, 3), (8, 8), False, True)])
def test_heads_conv_values_and_gradients_equal_one_conv_per_head(kernels, size, interleave, bias):
    """Interleaved and side-by-side heads, kernel sets with equal and different sizes (per-head gradients through the
    forward-conv route and through PyTorch's kernel: 5x5 on a 40 x 36 map, 3x3), with and without bias; fp64."""
    heads, group = len(kernels), 3
    convs = nn.ModuleList([DepthwiseConv2d(group, k, bias=bias) for k in kernels]).double()
    refs = nn.ModuleList([nn.Conv2d(group, group, k, padding=k // 2, groups=group, bias=bias) for k in kernels])
    refs = refs.double()
    refs.load_state_dict(convs.state_dict())
    base = torch.randn(2, heads * group, *size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(base)
    results = []
    for layers, run in ((convs, lambda x: heads_conv(x, convs, interleave)), (refs, lambda x: _per_head(x, refs,
                                                                                                      interleave))):
        x = base.detach().clone().requires_grad_()
        out = run(x)
        out.backward(grad)
        results.append([out, x.grad] + [p.grad for p in layers.parameters()])
    assert type(heads_conv(base, convs, interleave).grad_fn).__name__ == HEADS
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_heads_conv_gradcheck_float64():
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    params = [torch.randn(2, 1, k, k, dtype=torch.float64, requires_grad=True) for k in (3, 5)]
    params += [torch.randn(2, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    for interleave in (True, False):
        assert torch.autograd.gradcheck(lambda x, *p: _HeadsConvFunction.apply(x, interleave, *p), (x, *params))


def test_exspam_trains_through_heads_conv_only_in_eager_cpu_fp32():
    mixer = exspam.ExSPAM(16, filter_size=6)
    x = torch.randn(2, 6, 6, 16)
    names = []
    for mode in ('train', 'autocast', 'frozen'):
        for p in mixer.parameters():
            p.requires_grad_(mode != 'frozen')
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=mode == 'autocast'):
            ctx = mixer._context(x.requires_grad_(mode == 'frozen'))
        names.append(_grad_fns(ctx))
    assert HEADS in names[0] and HEADS not in names[1] and HEADS not in names[2]
    with torch.no_grad():  # inference: the cached derived weights, one plain conv
        assert mixer._context(x).grad_fn is None


def _grad_fns(t: torch.Tensor) -> set:
    """The names of the nodes of t's autograd graph."""
    seen, todo = {}, [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = type(node).__name__
        todo.extend(next_fn for next_fn, _ in node.next_functions)
    return set(seen.values())
