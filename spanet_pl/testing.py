"""Helpers shared by the test-suite and tools/: deterministic synthetic weights for any state-dict layout."""
import math
import re
import zlib
from typing import Dict, Iterable, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ['synthetic_state_dict', 'seeded_input']


def synthetic_state_dict(shapes: Iterable[Tuple[str, Sequence[int]]], seed: int = 0) -> Dict[str, Tensor]:
    """Well-scaled random tensors for (key, shape) pairs, each a function of (seed, key) only.

    Matrices and conv kernels get std 1/sqrt(fan_in) so deep stacks stay finite; norm weights, scales and slopes
    1 + 0.1 N(0, 1); biases 0.1 N(0, 1); spectral filters N(0, 1) so the sigmoid spreads over (0, 1).
    """
    out = {}
    for key, shape in shapes:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        noise = torch.randn(tuple(shape), generator=gen)
        name = key.rsplit('.', 1)[-1]
        if re.fullmatch(r'filter(_\d+)?', name):
            value = noise
        elif len(shape) >= 2:
            value = noise / math.sqrt(max(math.prod(shape[1:]), 1))
        elif name in ('weight', 'scale', 'alpha'):
            value = 1 + 0.1 * noise
        else:
            value = 0.1 * noise
        out[key] = value
    return out


def seeded_input(batch: int, size: Tuple[int, int], seed: int = 0, channels: int = 3) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *size, generator=gen)
