"""The official-code harness shared by the benchmark, the test-suite and tools/.

* ``synthetic_state_dict`` / ``seeded_input``: deterministic, well-scaled weights for any state-dict layout and inputs,
  so that our models and the official ones can be compared on the same numbers (random init gives near-zero logits);
* ``official_module`` / ``build_official`` / ``official_weights``: the official SPANet / SPANetV2 model files imported
  at run time from local clones (never copied here), under shims for the old timm paths they import, without
  registering their model names with timm a second time.
"""
import contextlib
import functools
import importlib.util
import io
import math
import re
import sys
import types
import warnings
import zlib
from pathlib import Path
from typing import Dict, Iterable, Literal, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ['synthetic_state_dict', 'seeded_input', 'OFFICIAL_FILES', 'official_shims', 'official_module',
           'build_official', 'official_weights']

OfficialLayout = Literal['v1', 'v2', 'v2_ver4']
# the model file of each official layout inside its clone (v1: SPANet-official, v2 / v2_ver4: SPANetV2-official)
OFFICIAL_FILES = {
    'v1': 'image_classification/spanet.py',
    'v2': 'image_classification/models/spanetv2.py',
    'v2_ver4': 'image_classification/models/spanetv2_ver4.py',
}


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


@contextlib.contextmanager
def official_shims():
    """The old timm path the official files import from (``timm.models.layers.helpers``), and a no-op
    ``register_model`` so that their model names are not registered a second time; both restored on exit."""
    import timm.layers
    import timm.models.registry
    helpers = types.ModuleType('timm.models.layers.helpers')
    helpers.to_2tuple = timm.layers.to_2tuple
    saved_module = sys.modules.get('timm.models.layers.helpers')
    saved_register = timm.models.registry.register_model
    sys.modules['timm.models.layers.helpers'] = helpers
    timm.models.registry.register_model = lambda fn: fn
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)
            yield
    finally:
        timm.models.registry.register_model = saved_register
        if saved_module is None:
            sys.modules.pop('timm.models.layers.helpers', None)
        else:
            sys.modules['timm.models.layers.helpers'] = saved_module


@functools.lru_cache(maxsize=None)
def official_module(layout: OfficialLayout, root: Union[str, Path]) -> types.ModuleType:
    """The official model file of ``layout`` imported from the clone at ``root`` (once per process).

    Raises:
        FileNotFoundError: the clone has no such file.
    """
    path = Path(root) / OFFICIAL_FILES[layout]
    if not path.is_file():
        raise FileNotFoundError(f'official {layout} model file not found: {path}')
    spec = importlib.util.spec_from_file_location(f'official_spanet_{layout}', path)
    module = importlib.util.module_from_spec(spec)
    with official_shims():
        spec.loader.exec_module(module)
    return module


def build_official(layout: OfficialLayout, variant: str, root: Union[str, Path]) -> nn.Module:
    """The official model ``variant`` (its constructor function name) of ``layout``, in eval mode."""
    with contextlib.redirect_stdout(io.StringIO()):  # the official v1 prints its λ list in every SPAM
        return getattr(official_module(layout, str(root)), variant)().eval()


def official_weights(model: nn.Module, layout: OfficialLayout, seed: int = 0) -> Dict[str, Tensor]:
    """Synthetic weights for an official model (``synthetic_state_dict`` over its keys and shapes); v1's fixed
    spectral masks are stored as frozen parameters and kept as the model built them."""
    own = model.state_dict()
    weights = synthetic_state_dict([(k, tuple(v.shape)) for k, v in own.items()], seed)
    if layout == 'v1':
        weights.update({k: v for k, v in own.items() if k.endswith('.filter')})
    return weights
