"""Known-answer tests for the spectral analysis math: fourier curves, graph responses, filter spectra (float64)."""
import math

import pytest
import torch

from spanet_pl.analysis import graph
from spanet_pl.analysis.filters import full_spectrum, radial_profile
from spanet_pl.analysis.fourier import EPS, LogAmplitudeMean, diagonal_frequencies, relative_log_amplitude
from spanet_pl.errors import UserInputError
from spanet_pl.models.spectral import circular_mask


def impulse(size: int, channels: int = 1, batch: int = 1) -> torch.Tensor:
    x = torch.zeros(batch, channels, size, size, dtype=torch.float64)
    x[..., 0, 0] = 1.0
    return x


def circular_box3(x: torch.Tensor) -> torch.Tensor:
    """A 3x3 mean filter with periodic boundary."""
    return sum(torch.roll(x, (dy, dx), dims=(-2, -1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9


def d3(omega: torch.Tensor) -> torch.Tensor:
    return (1 + 2 * torch.cos(omega)) / 3


def box_curve(size: int) -> torch.Tensor:
    """log(d3(2πm/N)² + 1e-6) - log(1 + 1e-6) for m = 0 .. N - N//2 - 1."""
    omega = 2 * math.pi * torch.arange(size - size // 2, dtype=torch.float64) / size
    return torch.log(d3(omega) ** 2 + EPS) - math.log(1 + EPS)


# ---- fourier ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', [8, 7, 16])
def test_impulse_gives_flat_zero_curve(size):
    curve = relative_log_amplitude(impulse(size, channels=5, batch=2))
    assert curve.shape == (size - size // 2,)
    assert torch.equal(curve, torch.zeros_like(curve))


@pytest.mark.parametrize('size', [16, 15])
def test_box_filter_known_answer(size):
    curve = relative_log_amplitude(circular_box3(impulse(size)))
    torch.testing.assert_close(curve, box_curve(size), atol=1e-9, rtol=0)
    assert curve[-1] < -1  # a box filter is low-pass


def test_mean_of_logs_over_channels():
    x = torch.cat([impulse(16), circular_box3(impulse(16))], dim=1)  # channels [impulse, box]
    torch.testing.assert_close(relative_log_amplitude(x), box_curve(16) / 2, atol=1e-9, rtol=0)


def test_circular_shift_and_layout_change_nothing():
    x = torch.randn(3, 4, 12, 12, dtype=torch.float64)
    reference = relative_log_amplitude(x)
    torch.testing.assert_close(relative_log_amplitude(torch.roll(x, (5, -3), dims=(-2, -1))), reference)
    torch.testing.assert_close(relative_log_amplitude(x.permute(0, 2, 3, 1), channels_last=True), reference)


def test_non_square_maps_are_refused():
    with pytest.raises(UserInputError, match='square'):
        relative_log_amplitude(torch.randn(1, 2, 8, 6))
    with pytest.raises(UserInputError, match='4-D'):
        relative_log_amplitude(torch.randn(2, 8, 8))


@pytest.mark.parametrize('size', [12, 9])
def test_equals_the_notebook_recipe_on_the_full_spectrum(size):
    """fft2 of every channel, log(|F| + 1e-6), mean over batch and channels, fftshift, diagonal from DC, minus DC."""
    x = torch.randn(3, 5, size, size, dtype=torch.float64)
    mean_log = torch.log(torch.fft.fft2(x).abs() + EPS).mean(dim=(0, 1))
    diagonal = torch.fft.fftshift(mean_log).diagonal()[size // 2:]
    torch.testing.assert_close(relative_log_amplitude(x), diagonal - diagonal[0], atol=1e-10, rtol=0)


def test_running_mean_equals_one_call():
    x = torch.randn(6, 3, 10, 10, dtype=torch.float64)
    mean = LogAmplitudeMean()
    for part in x.split(2):
        mean.update(part)
    torch.testing.assert_close(mean.curve(), relative_log_amplitude(x))
    with pytest.raises(UserInputError, match='changed size'):
        mean.update(torch.randn(1, 3, 8, 8))


def test_frequency_axis():
    assert diagonal_frequencies(4) == [0.0, 1 / 3, 2 / 3, 1.0]
    assert diagonal_frequencies(1) == [0.0]


# ---- graph ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('periodic', [True, False])
def test_basis_diagonalises_the_grid_laplacian(periodic):
    basis, _ = graph.laplacian_basis(6, periodic)
    eye = torch.eye(36, dtype=basis.dtype)
    torch.testing.assert_close(basis.conj().T @ basis, eye, atol=1e-12, rtol=0)
    projected = basis.conj().T @ graph.grid_laplacian(6, periodic).to(basis.dtype) @ basis
    off_diagonal = projected - torch.diag(torch.diagonal(projected))
    assert off_diagonal.abs().max() < 1e-12


@pytest.mark.parametrize('periodic', [True, False])
def test_window_one_is_all_pass_and_dc_is_kept(periodic):
    responses = graph.mixer_responses(8, (1, 3, 5, 7, graph.FULL), periodic=periodic)
    torch.testing.assert_close(responses['k=1'], torch.ones(8, 8, dtype=torch.float64), atol=1e-12, rtol=0)
    for name, response in responses.items():
        assert abs(response[0, 0] - 1) < 1e-12, name


@pytest.mark.parametrize('periodic', [True, False])
def test_complete_graph_passes_only_dc(periodic):
    response = graph.mixer_responses(6, (graph.FULL,), periodic=periodic)[graph.FULL]
    assert abs(response[0, 0] - 1) < 1e-12
    rest = response.flatten()[1:]
    assert rest.abs().max() < 1e-12


@pytest.mark.parametrize('size', [8, 9])
def test_torus_operator_is_diagonal_and_matches_closed_form(size):
    basis, _ = graph.laplacian_basis(size, True)
    for k in (3, 5, 7):
        operator = graph.aggregation_operator(graph.window_adjacency(size, k))
        projected = basis.conj().T @ operator.to(basis.dtype) @ basis
        assert (projected - torch.diag(torch.diagonal(projected))).abs().max() < 1e-12
        torch.testing.assert_close(torch.diagonal(projected).real.reshape(size, size),
                                   graph.closed_form_response(size, k), atol=1e-12, rtol=0)


def test_highest_frequency_falls_as_one_over_k_squared():
    size = 10
    responses = graph.mixer_responses(size, (1, 3, 5, 7, 9, graph.FULL))
    nyquist = [float(responses[f'k={k}'][size // 2, size // 2]) for k in (1, 3, 5, 7, 9)]
    for k, value in zip((1, 3, 5, 7, 9), nyquist):
        assert value == pytest.approx(1 / k ** 2, abs=1e-12)
    assert all(a > b for a, b in zip(nyquist, nyquist[1:]))
    assert abs(responses[graph.FULL][size // 2, size // 2]) < 1e-12
    freq, values = graph.diagonal(responses['k=3'])
    assert freq[0] == 0 and freq[-1] == pytest.approx(1.0) and values[-1] == pytest.approx(1 / 9)


def test_graph_bad_input():
    with pytest.raises(UserInputError, match='odd'):
        graph.window_adjacency(8, 4)
    with pytest.raises(UserInputError, match='larger than'):
        graph.window_adjacency(5, 7)
    with pytest.raises(UserInputError, match='closed form'):
        graph.mixer_responses(8, (3,), periodic=False, dense=False)


# ---- filters ----------------------------------------------------------------------------------------------------

def official_circle_filter(height: int, width: int, radius: float, lam: float) -> torch.Tensor:
    """The official SPANet mask construction (centred full spectrum), re-derived from its definition: distance of
    each bin (row i, column j) to (W//2, H//2), λ inside the radius, 1 - λ outside, 1/3 on the circle."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing='ij')
    dist = torch.sqrt(((rows - width // 2) ** 2 + (cols - height // 2) ** 2).float())
    mask = (dist < radius).float() * lam + (dist > radius).float() * (1 - lam)
    mask[(dist == radius)] = 1 / 3
    return mask


def test_spf_mask_known_values():
    lam = 0.7
    full = full_spectrum(circular_mask(56, 56, 2, lam), 56)
    centre = 28
    assert full[centre, centre] == pytest.approx(lam)
    inside = full[centre - 1:centre + 2, centre - 1:centre + 2]
    torch.testing.assert_close(inside, torch.full((3, 3), lam))
    for dy, dx in ((2, 0), (-2, 0), (0, 2), (0, -2)):
        assert full[centre + dy, centre + dx] == pytest.approx(1 / 3)
    assert (full == 1 / 3).sum() == 4 and (full == torch.tensor(lam)).sum() == 9
    assert full[0, 0] == pytest.approx(1 - lam)


@pytest.mark.parametrize('size,radius,lam', [(56, 2, 0.7), (28, 2, 0.8), (14, 1, 0.9), (7, 1, 0.7), (9, 2, 0.8)])
def test_spf_mask_equals_official_construction(size, radius, lam):
    ours = full_spectrum(circular_mask(size, size, radius, lam), size)
    torch.testing.assert_close(ours, official_circle_filter(size, size, radius, lam))


@pytest.mark.parametrize('height,width', [(8, 8), (7, 9), (6, 5)])
def test_full_spectrum_mirrors_the_half_spectrum(height, width):
    x = torch.randn(height, width, dtype=torch.float64)
    mirrored = full_spectrum(torch.fft.rfft2(x).abs(), width)
    torch.testing.assert_close(mirrored, torch.fft.fftshift(torch.fft.fft2(x).abs()))


def test_radial_profile_of_an_ideal_low_pass():
    size = 16
    fy = torch.arange(size) - size // 2
    radius = torch.sqrt(fy[:, None].double() ** 2 + fy[None].double() ** 2).round()
    ideal = (radius <= 3).double()
    freq, mean = radial_profile(ideal)
    assert len(freq) == size // 2 + 1 and freq[-1] == 1.0 and freq[4] == pytest.approx(0.5)
    assert mean[:4] == [1.0] * 4 and mean[4:] == [0.0] * (len(mean) - 4)
