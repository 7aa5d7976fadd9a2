"""Checkpoint layouts -> this project's key names: pure key maps, no model classes.

Recognised from their key names:
  * ``v1``: DoranLyong/SPANet-official ``spanet.py`` (``patch_embed.proj``, ``network.{i}``, frozen ``sps.{g}.filter``);
  * ``v2``: DoranLyong/SPANetV2-official ``models/spanetv2.py`` (``local_conv_{i}`` and ``filter_{i}`` per head);
  * ``v2_ver4``: ``models/spanetv2_ver4.py`` (``local_convs.{i}``, one ``filter``, ``scale.alpha``);
  * ``ours``: this project's layout, passed through.

``v2`` feeds heads to ExSPAM's grouped projection interleaved, ``v2_ver4`` concatenated (``HEAD_LAYOUT_OF``); the
model file turns that into each ExSPAM's ``head_layout`` state. Each model file's ``checkpoint_filter_fn`` calls
``to_ours``; loading into a model (which needs the classes) lives in ``registry.py``.
"""
import os
import re
from typing import Dict, Literal, Mapping, Tuple, Union

import torch
from torch import Tensor

from ..errors import MissingPathError, UserInputError

__all__ = ['read_checkpoint', 'unwrap', 'detect_layout', 'convert_v1', 'convert_v2', 'to_ours', 'HEAD_LAYOUT_OF']

StateDict = Dict[str, Tensor]
Source = Union[str, os.PathLike, Mapping]
Family = Literal['v1', 'v2']

# channel order of the ExSPAM heads each official SPANetV2 layout was trained with
HEAD_LAYOUT_OF = {'v2': 'interleave', 'v2_ver4': 'concat'}


def read_checkpoint(path: Union[str, os.PathLike]) -> Mapping:
    """``torch.load`` (weights only, on the CPU) with a one-line error naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingPathError(f'checkpoint {path!r} does not exist')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors all mean "not a checkpoint we can read"
        first = str(error).splitlines()[0] if str(error) else ''
        raise UserInputError(f'checkpoint {path!r} could not be read as a PyTorch checkpoint: '
                             f'{type(error).__name__}: {first}') from error


def unwrap(source: Source) -> StateDict:
    """The model tensors of a checkpoint path or mapping, in whatever layout it has.

    Removes a ``state_dict`` / ``model`` wrapper, DDP's ``module.`` prefix, a LightningModule's ``backbone.`` prefix
    (our classification and segmentation checkpoints: the backbone's tensors only) and the ``model.`` prefix of timm's
    ``features_only`` wrapper.
    """
    checkpoint = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(checkpoint, Mapping):
        raise UserInputError(f'a checkpoint must hold a state dict, got {type(checkpoint).__name__}')
    for wrapper in ('state_dict', 'model'):
        if isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
            break
    state = {k.removeprefix('module.'): v for k, v in checkpoint.items() if isinstance(v, Tensor)}
    if any(k.startswith('backbone.') for k in state):
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    if state and all(k.startswith('model.') for k in state):
        state = {k[len('model.'):]: v for k, v in state.items()}
    if not state:
        raise UserInputError('the checkpoint holds no tensors')
    return state


def detect_layout(state_dict: Mapping[str, Tensor]) -> str:
    """'v1', 'v2', 'v2_ver4' for official layouts, 'ours' for this project's, else a one-line UserInputError."""
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


def convert_v1(state_dict: Mapping[str, Tensor]) -> StateDict:
    """Official SPANet keys -> ours; the fixed masks stored as frozen parameters are dropped (ours are derived)."""
    out = {}
    for key, value in state_dict.items():
        if re.search(r'\.token_mixer\.sps\.\d+\.filter$', key):
            continue
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


def convert_v2(state_dict: Mapping[str, Tensor], keep_srf_slope: bool = False) -> StateDict:
    """Official SPANetV2 keys (either layout) -> ours.

    Args:
        state_dict: a ``v2`` or ``v2_ver4`` state dict.
        keep_srf_slope: keep ver4's ``scale.alpha`` as the learnable SRF slope (``srf_act='learnable_sigmoid'``);
            otherwise it is dropped: spanetv2_ver4.py always creates it, but its forward uses a plain sigmoid.
    """
    out, head_filters = {}, {}
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
            if not keep_srf_slope:
                continue
            key = key.replace('.token_mixer.scale.alpha', '.token_mixer.srf_act.alpha')
        out[key] = value
    for prefix, heads in head_filters.items():
        out[f'{prefix}.filter'] = torch.cat([heads[i] for i in sorted(heads)], dim=0)
    return out


def to_ours(source: Source, family: Family, model_name: str, keep_srf_slope: bool = False) -> Tuple[StateDict, str]:
    """Unwrap ``source``, check it belongs to ``family`` and convert it to our key names.

    Args:
        source: a checkpoint path or mapping in an official layout or ours.
        family: 'v1' (SPANet) or 'v2' (SPANetV2), the family of the model it is meant for.
        model_name: the model's class name, for the error message.
        keep_srf_slope: see ``convert_v2``.
    Returns:
        ``(state dict in our key names, detected layout)``.
    """
    state = unwrap(source)
    layout = detect_layout(state)
    if layout == 'ours':
        return state, layout
    if not layout.startswith(family):
        raise UserInputError(
            f'checkpoint has the official {"SPANet" if layout == "v1" else "SPANetV2"} layout ({layout}) but the '
            f'model is a {model_name}')
    return (convert_v1(state) if layout == 'v1' else convert_v2(state, keep_srf_slope)), layout
