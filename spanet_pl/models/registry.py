"""One entry point for building any SPANet-family variant by name, with a clear error for unknown names."""
import difflib
import logging
import os
from typing import Dict, Mapping, Optional, Union

import timm
import torch
import torch.nn as nn

from ..errors import MissingPathError, UserInputError
from .official import convert_official_state_dict, load_official_checkpoint
from .spanet import SPANET_VARIANTS
from .spanetv2 import SPANETV2_VARIANTS, ExSPAM

__all__ = ['VARIANTS', 'OFFICIAL_VARIANTS', 'create_backbone', 'load_backbone_weights']

_logger = logging.getLogger(__name__)

VARIANTS = tuple(SPANET_VARIANTS) + tuple(SPANETV2_VARIANTS)
OFFICIAL_VARIANTS = tuple(name for name, cfg in {**SPANET_VARIANTS, **SPANETV2_VARIANTS}.items() if cfg.official)


def create_backbone(name: str, official_checkpoint: Optional[str] = None, **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` restricted to this project's variants.

    Args:
        name: a variant name (see ``VARIANTS``).
        official_checkpoint: optional path of an official (or our) checkpoint to load strictly.
        **kwargs: constructor arguments (``num_classes``, ``drop_path_rate``, ablation switches, ``features_only``).
    """
    if name not in VARIANTS:
        close = difflib.get_close_matches(name, VARIANTS, n=1)
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        raise UserInputError(f'unknown SPANet variant {name!r}{hint}; valid names: {", ".join(VARIANTS)}')
    model = timm.create_model(name, **kwargs)
    if official_checkpoint:
        if kwargs.get('features_only'):
            raise UserInputError('official_checkpoint cannot be combined with features_only; load, then wrap')
        load_official_checkpoint(model, official_checkpoint)
    return model


# keys of a classification checkpoint that a features_only backbone does not have: classifier and final norm
_CLASSIFIER_PREFIXES = ('head.', 'norm.')


def _read_checkpoint(source: Union[str, os.PathLike, Mapping]) -> Mapping:
    if not isinstance(source, (str, os.PathLike)):
        return source
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise MissingPathError(f'pretrained checkpoint {path!r} does not exist')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors all mean "not a checkpoint we can read"
        raise UserInputError(f'pretrained checkpoint {path!r} could not be read as a PyTorch checkpoint: '
                             f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}') from error


def _backbone_state_dict(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    """The backbone's tensors of a Lightning checkpoint, an official checkpoint or a plain state dict."""
    if not isinstance(checkpoint, Mapping):
        raise UserInputError(f'a pretrained checkpoint must hold a state dict, got {type(checkpoint).__name__}')
    for wrapper in ('state_dict', 'model'):
        if isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
            break
    state = {k.removeprefix('module.'): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith('backbone.') for k in state):  # one of our LightningModules (classification, segmentation)
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    if state and all(k.startswith('model.') for k in state):  # timm's features_only wrapper (FeatureGetterNet)
        state = {k[len('model.'):]: v for k, v in state.items()}
    if not state:
        raise UserInputError('the pretrained checkpoint holds no tensors')
    return state


def load_backbone_weights(backbone: nn.Module, source: Union[str, os.PathLike, Mapping]) -> nn.Module:
    """Load a backbone (a ``features_only`` wrapper or the plain model) from a checkpoint, strictly.

    Args:
        backbone: built by ``create_backbone(name, features_only=True, ...)`` (or without ``features_only``).
        source: a path or a mapping: an official SPANet/SPANetV2 checkpoint, one of our Lightning checkpoints
            (classification or segmentation: the ``backbone.`` tensors are taken), or a state dict in our layout.
            Classifier and final-norm tensors the pyramid does not have are dropped; every other key must match.
    Returns:
        ``backbone``, loaded.
    """
    model = getattr(backbone, 'model', backbone)  # FeatureGetterNet keeps the network under .model
    state = _backbone_state_dict(_read_checkpoint(source))
    layouts = {m: m.head_layout for m in model.modules() if isinstance(m, ExSPAM)}
    try:
        converted = convert_official_state_dict(state, model)
        own = model.state_dict()
        dropped = [k for k in converted if k not in own and k.startswith(_CLASSIFIER_PREFIXES)]
        converted = {k: v for k, v in converted.items() if k not in dropped}
        load_official_checkpoint(model, converted)
    except UserInputError as error:
        for module, head_layout in layouts.items():  # leave the model as it was
            module.head_layout = head_layout
        where = f' {os.fspath(source)!r}' if isinstance(source, (str, os.PathLike)) else ''
        raise UserInputError(f'pretrained checkpoint{where}: {error}') from error
    _logger.info('backbone: loaded %d tensors, dropped %d classifier tensors (%s)', len(converted), len(dropped),
                 ', '.join(dropped) or '-')
    return backbone
