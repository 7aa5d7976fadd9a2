"""Graph-spectral view of token mixing: why convolution windows pass high frequencies and attention does not.

SPANetV2 argues that a token mixer is an aggregation operator on a graph of tokens, and that its frequency response
in the graph's spectral basis tells how much of each frequency it passes; the official repositories have no code for
it, so this module builds the construction below (float64 throughout).

* **Nodes**: the N x N token grid, node index ``y * N + x``.
* **Window graph** (a k x k convolution window): nodes are joined when their Chebyshev distance is at most
  (k - 1) / 2, self-loops included. ``periodic=True`` (default) measures distance on the torus, so every node has
  k² neighbours; ``periodic=False`` uses the open grid, where border nodes have fewer.
* **Attention**: the complete graph; softmax over equal logits weights every token equally.
* **Operator**: row-normalised aggregation S = D⁻¹A (each token becomes the mean of its neighbours).
* **Basis**: eigenvectors of the Laplacian of the grid (the 4-neighbour lattice): on the torus the 2-D DFT vectors
  φ_uv(y, x) = exp(2πi (u y + v x) / N) / N with ω = 2πu / N, on the open grid products of DCT-II vectors with
  ω = πu / N.
* **Response**: h(u, v) = φ_uvᴴ S φ_uv, the share of frequency (u, v) the operator keeps.

On the torus S is circulant, so Φᴴ S Φ is diagonal and h factorises into the normalised Dirichlet kernel:
h_k(u, v) = d_k(ω_u) d_k(ω_v) with d_k(ω) = sin(kω / 2) / (k sin(ω / 2)) and d_k(0) = 1. So k = 1 passes
everything (h ≡ 1), a growing window attenuates high frequencies more (h(π, π) = 1 / k² for odd k), and the
complete graph keeps DC only: it is the k → N limit, an ideal low-pass filter.
"""
import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import UserInputError

__all__ = [
    'FULL', 'window_adjacency', 'complete_adjacency', 'aggregation_operator', 'grid_laplacian', 'laplacian_basis',
    'frequencies', 'graph_response', 'dirichlet', 'closed_form_response', 'mixer_responses', 'diagonal',
]

FULL = 'full'  # the name of the complete graph (attention) among the kernel sizes
_DENSE_LIMIT = 64


def _check(size: int, k: int) -> None:
    if size < 1:
        raise UserInputError(f'graph size must be a positive number of tokens per side, got {size}')
    if k < 1 or k % 2 == 0:
        raise UserInputError(f'window sizes must be positive odd integers, got {k}')
    if k > size:
        raise UserInputError(f'window {k}x{k} is larger than the {size}x{size} token grid; use sizes >= {k}')


def _offsets(size: int, periodic: bool) -> Tuple[Tensor, Tensor]:
    """|dy|, |dx| between every pair of nodes, (N², N²) each."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing='ij')
    y, x = y.reshape(-1), x.reshape(-1)
    dy, dx = (y[:, None] - y[None]).abs(), (x[:, None] - x[None]).abs()
    if periodic:
        dy, dx = torch.minimum(dy, size - dy), torch.minimum(dx, size - dx)
    return dy, dx


def window_adjacency(size: int, k: int, periodic: bool = True) -> Tensor:
    """(N², N²) 0/1 adjacency of the k x k window graph on an N x N grid, self-loops included."""
    _check(size, k)
    dy, dx = _offsets(size, periodic)
    return (torch.maximum(dy, dx) <= (k - 1) // 2).double()


def complete_adjacency(size: int) -> Tensor:
    """(N², N²) adjacency of the complete graph with self-loops: attention with equal logits."""
    return torch.ones(size * size, size * size, dtype=torch.float64)


def aggregation_operator(adjacency: Tensor) -> Tensor:
    """S = D⁻¹A: every row of the adjacency divided by its degree."""
    return adjacency / adjacency.sum(dim=1, keepdim=True)


def grid_laplacian(size: int, periodic: bool = True) -> Tensor:
    """(N², N²) combinatorial Laplacian L = D - A of the 4-neighbour N x N lattice (torus or open grid)."""
    dy, dx = _offsets(size, periodic)
    adjacency = ((dy + dx) == 1).double()
    return torch.diag(adjacency.sum(dim=1)) - adjacency


def frequencies(size: int, periodic: bool) -> Tensor:
    """ω of each 1-D basis index, in radians: 2πu/N wrapped into (-π, π] on the torus, πu/N on the open grid."""
    u = torch.arange(size, dtype=torch.float64)
    if periodic:
        u = torch.where(u <= size // 2, u, u - size)
        return 2 * math.pi * u / size
    return math.pi * u / size


def laplacian_basis(size: int, periodic: bool = True) -> Tuple[Tensor, Tensor]:
    """Orthonormal eigenvectors of ``grid_laplacian`` as columns, (N², N²), column ``u * N + v`` = φ_uv, and the
    1-D frequencies ω_u (radians, (N,)). Complex DFT vectors on the torus, real DCT-II products on the open grid."""
    coords = torch.arange(size, dtype=torch.float64)
    omega = frequencies(size, periodic)
    if periodic:
        one_d = torch.exp(1j * omega[None, :] * coords[:, None]) / math.sqrt(size)  # (position, u)
    else:
        one_d = torch.cos(omega[None, :] * (coords[:, None] + 0.5))
        one_d = one_d / one_d.norm(dim=0, keepdim=True)
    # φ_uv(y, x) = e_u(y) e_v(x): row y * N + x, column u * N + v
    return torch.einsum('yu,xv->yxuv', one_d, one_d).reshape(size * size, size * size), omega


def graph_response(operator: Tensor, basis: Tensor) -> Tensor:
    """h(u, v) = φ_uvᴴ S φ_uv for every basis vector, as an (N, N) real tensor indexed [u, v]."""
    size = math.isqrt(basis.shape[1])
    quad = torch.einsum('iu,ij,ju->u', basis.conj(), operator.to(basis.dtype), basis)
    return quad.real.reshape(size, size)


def dirichlet(omega: Tensor, k: int) -> Tensor:
    """Normalised Dirichlet kernel d_k(ω) = sin(kω/2) / (k sin(ω/2)), with its limit 1 where sin(ω/2) = 0."""
    omega = torch.as_tensor(omega, dtype=torch.float64)
    half = torch.sin(omega / 2)
    safe = torch.where(half.abs() < 1e-12, torch.ones_like(half), half)
    return torch.where(half.abs() < 1e-12, torch.ones_like(half), torch.sin(k * omega / 2) / (k * safe))


def closed_form_response(size: int, k: int) -> Tensor:
    """h_k(u, v) = d_k(ω_u) d_k(ω_v) on the N x N torus, (N, N) indexed [u, v] in FFT order."""
    _check(size, k)
    d = dirichlet(frequencies(size, True), k)
    return d[:, None] * d[None, :]


def mixer_responses(size: int, kernels: Sequence = (1, 3, 5, 7, 9, FULL), periodic: bool = True,
                    dense: bool = True) -> Dict[str, Tensor]:
    """Response (N, N) of each window size and of the complete graph (``'full'``), keyed by its name.

    Args:
        size: tokens per side.
        kernels: odd window sizes and/or ``'full'``.
        periodic: torus (default) or open grid.
        dense: build S and Φ and compute Φᴴ S Φ; otherwise the torus closed form (periodic only). The open grid
            has no closed form, so it is always dense (N ≤ 64).
    """
    if not dense and not periodic:
        raise UserInputError('the open grid has no closed form; compute it densely')
    if dense and size > _DENSE_LIMIT:
        raise UserInputError(f'dense graph responses need N² x N² matrices; size {size} is over {_DENSE_LIMIT}')
    basis = laplacian_basis(size, periodic)[0] if dense else None
    out = {}
    for k in kernels:
        name = FULL if str(k) == FULL else f'k={int(k)}'
        if name == FULL:
            if dense:
                out[name] = graph_response(aggregation_operator(complete_adjacency(size)), basis)
            else:
                out[name] = torch.zeros(size, size, dtype=torch.float64)
                out[name][0, 0] = 1.0
        elif dense:
            out[name] = graph_response(aggregation_operator(window_adjacency(size, int(k), periodic)), basis)
        else:
            out[name] = closed_form_response(size, int(k))
    return out


def diagonal(response: Tensor, periodic: bool = True) -> Tuple[List[float], List[float]]:
    """(ω / π, h) along the diagonal u = v from DC to the highest frequency: u = 0..N//2 on the torus
    (ω = 2πu/N, ending at π for an even N), u = 0..N-1 on the open grid (ω = πu/N)."""
    size = response.shape[-1]
    stop = size // 2 + 1 if periodic else size
    omega = frequencies(size, periodic)[:stop].abs() / math.pi
    return omega.tolist(), response.diagonal()[:stop].tolist()
