import pytest
import torch

from spanet_pl.models.spectral import (
    DEFAULT_LAMBDAS, chunk_sizes, circular_mask, resize_filter, signed_frequencies, spam_masks, spectral_filter,
)


def official_style_mask(size: int, radius: float, lam: float) -> torch.Tensor:
    """The paper's mask written as the official code builds it: on the fftshift-ed full spectrum."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing='ij')
    dist = torch.sqrt((rows - size // 2) ** 2 + (cols - size // 2) ** 2)
    lam_t = torch.tensor(lam)
    mask = (dist < radius).float() * lam_t + (dist > radius).float() * (1 - lam_t)
    mask[(dist == radius)] = 1 / 3
    return mask


def test_default_lambdas_are_the_official_float32_arange():
    assert len(DEFAULT_LAMBDAS) == 3
    assert DEFAULT_LAMBDAS == tuple(torch.arange(0.7, 0.9, 0.1).tolist())
    assert DEFAULT_LAMBDAS[0] == pytest.approx(0.7) and DEFAULT_LAMBDAS[2] == pytest.approx(0.9, abs=1e-6)


def test_chunk_sizes_follow_torch_chunk_and_reject_short_splits():
    assert chunk_sizes(64, 3) == (22, 22, 20)
    assert chunk_sizes(512, 3) == (171, 171, 170)
    with pytest.raises(ValueError, match='6 channels cannot be split into 4'):
        chunk_sizes(6, 4)


def test_signed_frequencies():
    assert signed_frequencies(6).tolist() == [0, 1, 2, -3, -2, -1]
    assert signed_frequencies(7).tolist() == [0, 1, 2, 3, -3, -2, -1]


@pytest.mark.parametrize('size,radius', [(56, 2), (28, 2), (14, 1), (7, 1)])
def test_half_spectrum_filter_equals_official_full_spectrum_filter(size, radius):
    lam = DEFAULT_LAMBDAS[1]
    x = torch.randn(2, 3, size, size)
    full = official_style_mask(size, radius, lam)
    spec = torch.fft.fftshift(torch.fft.fft2(x, norm='ortho'), dim=(-2, -1)) * full
    expected = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1)), norm='ortho').real
    half = circular_mask(size, size, radius, lam)
    assert half.shape == (size, size // 2 + 1)
    torch.testing.assert_close(spectral_filter(x, half.expand(3, -1, -1)), expected, atol=1e-5, rtol=1e-5)


def test_mask_values_and_ring():
    mask = circular_mask(14, 14, 1, 0.7)
    assert mask[0, 0] == pytest.approx(0.7)              # DC is low-pass
    assert mask[1, 0] == pytest.approx(1 / 3)            # on the circle
    assert mask[5, 5] == pytest.approx(0.3)              # high frequency
    assert ((mask - 1 / 3).abs() < 1e-6).sum() == 3      # (±1, 0) and (0, 1) on the half spectrum


def test_mask_at_other_sizes_keeps_radius_in_bins():
    mask = circular_mask(40, 64, 2, 0.8)
    assert mask.shape == (40, 33)
    low = mask > 0.5
    assert low.sum() == 6  # DC, (±1, 0), (0, 1), (±1, 1): inside radius 2 on the half spectrum
    assert mask[0, 2] == pytest.approx(1 / 3) and mask[2, 0] == pytest.approx(1 / 3)


def test_spam_masks_repeat_per_group_and_are_cached():
    masks = spam_masks(14, 14, 1, DEFAULT_LAMBDAS, (2, 2, 1))
    assert masks.shape == (5, 14, 8)
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    assert spam_masks(14, 14, 1, DEFAULT_LAMBDAS, (2, 2, 1)) is masks


def test_spectral_filter_keeps_dtype_and_runs_fp32_inside():
    x = torch.randn(1, 4, 8, 8, dtype=torch.bfloat16)
    out = spectral_filter(x, torch.ones(4, 8, 5))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), x.float(), atol=1e-2, rtol=1e-2)  # all-pass filter is the identity


def test_resize_filter_is_bicubic_align_corners_and_identity_at_same_size():
    w = torch.randn(3, 7, 4)
    assert resize_filter(w, 7, 4) is w
    out = resize_filter(w, 9, 5)
    expected = torch.nn.functional.interpolate(w[None], size=(9, 5), mode='bicubic', align_corners=True)[0]
    assert torch.equal(out, expected)
    torch.testing.assert_close(out[:, 0, 0], w[:, 0, 0])  # align_corners keeps the corners


def test_masks_first_built_in_inference_mode_still_train():
    """Trainer.validate / predict run under torch.inference_mode; a later fit must not meet cached inference tensors."""
    args = (10, 12, 3.0, (0.2, 0.8), (3, 1))
    with torch.inference_mode():
        first = spam_masks(*args)
    assert not first.is_inference() and spam_masks(*args) is first
    x = torch.randn(2, 4, 10, 12, requires_grad=True)
    spectral_filter(x, spam_masks(*args)).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
