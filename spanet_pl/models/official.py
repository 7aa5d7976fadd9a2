"""Official SPANet / SPANetV2 checkpoints -> this project's module layout.

Three layouts are recognised from their key names:
  * ``v1``: DoranLyong/SPANet-official ``spanet.py`` (``patch_embed.proj``, ``network.{i}``, frozen ``sps.{g}.filter``);
  * ``v2``: DoranLyong/SPANetV2-official ``models/spanetv2.py`` (``local_conv_{i}`` and ``filter_{i}`` per head);
  * ``v2_ver4``: ``models/spanetv2_ver4.py`` (``local_convs.{i}``, one ``filter``, ``scale.alpha``).

``v2`` feeds heads to the grouped projection interleaved, ``v2_ver4`` concatenated; the loader sets each ExSPAM's
``head_layout`` so the model computes what the checkpoint was trained with. Loading is strict: every key of the model
must be filled with a tensor of its shape, and nothing may be left over.
"""
import logging
import os
import re
from typing import Dict, Mapping, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import MissingPathError, UserInputError
from .spanet import SPANet
from .spanetv2 import ExSPAM, SPANetV2

__all__ = ['detect_layout', 'convert_official_state_dict', 'load_official_checkpoint']

_logger = logging.getLogger(__name__)
StateDict = Dict[str, Tensor]


def _unwrap(source: Union[str, os.PathLike, Mapping]) -> StateDict:
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise MissingPathError(f'official checkpoint {os.fspath(source)!r} does not exist')
        source = torch.load(source, map_location='cpu', weights_only=True)
    if not isinstance(source, Mapping):
        raise TypeError(f'expected a checkpoint path or a state dict, got {type(source).__name__}')
    for wrapper in ('state_dict', 'model'):
        if wrapper in source and isinstance(source[wrapper], Mapping):
            source = source[wrapper]
            break
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in source.items()}


def detect_layout(state_dict: Mapping[str, Tensor]) -> str:
    """'v1', 'v2', 'v2_ver4' for official layouts, 'ours' for this project's, else a ValueError."""
    keys = set(state_dict)
    if 'stem.conv.weight' in keys:
        return 'ours'
    if 'patch_embed.proj.weight' in keys:
        return 'v1'
    if 'downsample_layers.0.conv.weight' in keys:
        if any(re.search(r'\.token_mixer\.local_convs\.\d+\.', k) for k in keys):
            return 'v2_ver4'
        return 'v2'
    raise UserInputError(
        'unrecognised checkpoint layout: expected official SPANet keys (patch_embed.proj.weight), official SPANetV2 '
        f'keys (downsample_layers.0.conv.weight) or this project\'s (stem.conv.weight); first keys: {sorted(keys)[:5]}')


def _convert_v1(state_dict: StateDict) -> StateDict:
    out = {}
    for key, value in state_dict.items():
        if re.search(r'\.token_mixer\.sps\.\d+\.filter$', key):
            continue  # fixed masks stored as frozen parameters; ours are derived from the input size
        key = key.replace('patch_embed.proj.', 'stem.conv.')
        m = re.match(r'network\.(\d+)\.(.*)', key)
        if m:
            index, rest = int(m.group(1)), m.group(2)
            if index % 2 == 0:  # even entries are stages, odd entries the downsampling between them
                key = f'stages.{index // 2}.blocks.{rest}'
            else:
                key = f'stages.{index // 2 + 1}.downsample.conv.{rest.removeprefix("proj.")}'
        out[key] = value
    return out


def _convert_v2(state_dict: StateDict, layout: str, model: SPANetV2) -> StateDict:
    out, head_filters = {}, {}
    learnable_srf = any(k.endswith('srf_act.alpha') for k in model.state_dict())
    for key, value in state_dict.items():
        m = re.match(r'downsample_layers\.(\d+)\.(pre_norm|post_norm|conv)\.(.*)', key)
        if m:
            index, part, rest = int(m.group(1)), m.group(2), m.group(3)
            prefix = 'stem' if index == 0 else f'stages.{index}.downsample'
            key = f'{prefix}.{"conv" if part == "conv" else "norm"}.{rest}'
        key = re.sub(r'^stages\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.', key)
        key = re.sub(r'\.local_conv_(\d+)\.', lambda mm: f'.local_convs.{int(mm.group(1)) - 1}.', key)
        m = re.match(r'(.*\.token_mixer)\.filter_(\d+)$', key)
        if m:  # per-head filters of models/spanetv2.py, stacked head-major below
            head_filters.setdefault(m.group(1), {})[int(m.group(2))] = value
            continue
        if key.endswith('.token_mixer.scale.alpha'):
            if not learnable_srf:
                # spanetv2_ver4.py always creates this slope, but its forward uses a plain sigmoid
                continue
            key = key.replace('.token_mixer.scale.alpha', '.token_mixer.srf_act.alpha')
        out[key] = value
    for prefix, heads in head_filters.items():
        out[f'{prefix}.filter'] = torch.cat([heads[i] for i in sorted(heads)], dim=0)
    return out


def convert_official_state_dict(state_dict: Mapping, model: nn.Module) -> StateDict:
    """Map an official state dict (any of the three layouts, or ours) onto ``model``'s keys.

    For the SPANetV2 layouts this also sets ``head_layout`` on every ExSPAM of ``model`` to the layout's channel order.
    """
    state_dict = _unwrap(state_dict)
    layout = detect_layout(state_dict)
    if layout == 'ours':
        return state_dict
    expected = 'v1' if isinstance(model, SPANet) else 'v2'
    if not layout.startswith(expected):
        raise UserInputError(
            f'checkpoint has the official {"SPANet" if layout == "v1" else "SPANetV2"} layout ({layout}) but the '
            f'model is a {type(model).__name__}')
    if layout == 'v1':
        return _convert_v1(state_dict)
    converted = _convert_v2(state_dict, layout, model)
    head_layout = 'interleave' if layout == 'v2' else 'concat'
    for module in model.modules():
        if isinstance(module, ExSPAM):
            module.head_layout = head_layout
    return converted


def _check_compatible(state_dict: StateDict, model: nn.Module):
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f'{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}'
                  for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    problems = []
    for label, keys in (('missing', missing), ('unexpected', unexpected), ('shape mismatch', mismatched)):
        if keys:
            more = f' (+{len(keys) - 5} more)' if len(keys) > 5 else ''
            problems.append(f'{label}: {", ".join(keys[:5])}{more}')
    if problems:
        raise UserInputError(
            f'checkpoint does not fit this {type(model).__name__} (is it another variant?): ' + '; '.join(problems))


def load_official_checkpoint(model: nn.Module, source: Union[str, os.PathLike, Mapping]) -> nn.Module:
    """Load an official SPANet/SPANetV2 checkpoint (or one of ours) into ``model``, strictly.

    Args:
        model: a SPANet or SPANetV2 built with the checkpoint's variant settings.
        source: a checkpoint path or a state dict, optionally wrapped in 'model' or 'state_dict'.
    Returns:
        ``model``, with the weights loaded (and, for SPANetV2 layouts, ``head_layout`` set to match).
    """
    if not isinstance(model, (SPANet, SPANetV2)):
        raise TypeError(f'load_official_checkpoint needs a SPANet or SPANetV2, got {type(model).__name__}')
    layouts = {m: m.head_layout for m in model.modules() if isinstance(m, ExSPAM)}
    converted = convert_official_state_dict(_unwrap(source), model)
    try:
        _check_compatible(converted, model)
    except ValueError:
        for module, head_layout in layouts.items():  # leave the model as it was
            module.head_layout = head_layout
        raise
    model.load_state_dict(converted, strict=True)
    _logger.info('loaded %d tensors into %s', len(converted), type(model).__name__)
    return model
