"""Building any SPANet-family variant by name, and loading weights into one: the place that knows the classes.

``official.py`` maps key names; each model file's ``checkpoint_filter_fn`` applies the map of its family (timm calls
it for ``pretrained=True``); the loaders here pick that function by model class, check the result against the model
and load it strictly, with one-line errors.
"""
import logging
import os
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import timm
import torch.nn as nn
from torch import Tensor

from ..errors import UserInputError, check_choice
from . import spanet, spanetv2
from .official import read_checkpoint
from .spanet import SPANET_VARIANTS, SPANet
from .spanetv2 import SPANETV2_VARIANTS, SPANetV2

__all__ = ['VARIANTS', 'OFFICIAL_VARIANTS', 'create_backbone', 'convert_official_state_dict',
           'load_official_checkpoint', 'load_backbone_weights']

_logger = logging.getLogger(__name__)

VARIANTS = tuple(SPANET_VARIANTS) + tuple(SPANETV2_VARIANTS)
OFFICIAL_VARIANTS = tuple(name for name, cfg in {**SPANET_VARIANTS, **SPANETV2_VARIANTS}.items() if cfg.official)

StateDict = Dict[str, Tensor]
Source = Union[str, os.PathLike, Mapping]
_FILTERS: Dict[type, Callable] = {SPANet: spanet.checkpoint_filter_fn, SPANetV2: spanetv2.checkpoint_filter_fn}
# keys a target may lack (a features_only pyramid) or hold at another size (another num_classes): classifier, final norm
_CLASSIFIER_PREFIXES = ('head.', 'norm.')


def create_backbone(name: str, official_checkpoint: Optional[str] = None, **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` restricted to this project's variants.

    Args:
        name: a variant name (see ``VARIANTS``).
        official_checkpoint: optional path of an official (or our) checkpoint to load strictly.
        **kwargs: constructor arguments (``num_classes``, ``drop_path_rate``, ablation switches, ``features_only``).
    """
    check_choice(name, VARIANTS, 'SPANet variant')
    model = timm.create_model(name, **kwargs)
    if official_checkpoint:
        if kwargs.get('features_only'):
            raise UserInputError('official_checkpoint cannot be combined with features_only; load, then wrap')
        load_official_checkpoint(model, official_checkpoint)
    return model


def _filter_fn(model: nn.Module) -> Callable:
    for cls, fn in _FILTERS.items():
        if isinstance(model, cls):
            return fn
    raise TypeError(f'expected a SPANet or SPANetV2, got {type(model).__name__}')


def convert_official_state_dict(source: Source, model: nn.Module) -> StateDict:
    """``source`` (an official layout or ours, a path or a mapping) in ``model``'s key names; for the SPANetV2 layouts
    it carries each ExSPAM's ``head_layout`` state. Nothing is loaded."""
    return _filter_fn(model)(source, model)


def _check_compatible(state_dict: Mapping[str, Tensor], model: nn.Module) -> None:
    own = model.state_dict()
    # an absent `_extra_state` (ExSPAM's head_layout) keeps the model's own value
    missing = [k for k in own if k not in state_dict and not k.endswith('._extra_state')]
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


def load_official_checkpoint(model: nn.Module, source: Source) -> nn.Module:
    """Load an official SPANet/SPANetV2 checkpoint (or one of ours) into ``model``, strictly.

    Args:
        model: a SPANet or SPANetV2 built with the checkpoint's variant settings.
        source: a checkpoint path or a state dict, optionally wrapped in 'model' or 'state_dict'.
    Returns:
        ``model``, with the weights loaded (and, for SPANetV2 layouts, ``head_layout`` set to match). Nothing is
        changed when the checkpoint does not fit.
    """
    state = convert_official_state_dict(source, model)
    _check_compatible(state, model)
    model.load_state_dict(state, strict=True)
    _logger.info('loaded %d tensors into %s', len(state), type(model).__name__)
    return model


def _fit_classifier(state: StateDict, model: nn.Module) -> Tuple[StateDict, list, list]:
    """Classifier / final-norm tensors the model lacks are dropped; those the checkpoint lacks (a segmentation
    backbone) or holds at another size (another num_classes) stay the model's own. Returns the state, the dropped
    and the kept keys."""
    own = model.state_dict()
    dropped = [k for k, v in state.items() if k.startswith(_CLASSIFIER_PREFIXES)
               and (k not in own or (k.startswith('head.') and own[k].shape != v.shape))]
    state = {k: v for k, v in state.items() if k not in dropped}
    kept = [k for k in own if k.startswith(_CLASSIFIER_PREFIXES) and k not in state]
    state.update({k: own[k] for k in kept})
    return state, dropped, kept


def load_backbone_weights(model: nn.Module, source: Source) -> nn.Module:
    """Load weights into a backbone (the plain model or its ``features_only`` wrapper), strictly but for the classifier.

    Args:
        model: built by ``create_backbone(name, ...)``, with or without ``features_only=True``.
        source: a path or a mapping: an official SPANet/SPANetV2 checkpoint (any of the three layouts), one of our
            Lightning checkpoints (classification or segmentation: the ``backbone.`` tensors are taken), or a state
            dict in our layout. Classifier and final-norm tensors the model lacks are dropped; those the checkpoint
            lacks or holds at another size (another ``num_classes``) stay the model's own; every other key must
            match.
    Returns:
        ``model``, loaded. Nothing is changed when the checkpoint does not fit.
    """
    network = getattr(model, 'model', model)  # timm's FeatureGetterNet keeps the network under .model
    checkpoint = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source  # errors name the file
    try:
        state, dropped, kept = _fit_classifier(convert_official_state_dict(checkpoint, network), network)
        _check_compatible(state, network)
    except UserInputError as error:
        where = f' {os.fspath(source)!r}' if isinstance(source, (str, os.PathLike)) else ''
        raise UserInputError(f'pretrained checkpoint{where}: {error}') from error
    network.load_state_dict(state, strict=True)
    _logger.info('backbone: loaded %d tensors; classifier tensors dropped: %s; kept from the model: %s',
                 len(state) - len(kept), ', '.join(dropped) or '-', ', '.join(kept) or '-')
    return model
