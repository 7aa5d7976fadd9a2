"""One entry point for building any SPANet-family variant by name, with a clear error for unknown names."""
import difflib
from typing import Optional

import timm
import torch.nn as nn

from ..errors import UserInputError
from .official import load_official_checkpoint
from .spanet import SPANET_VARIANTS
from .spanetv2 import SPANETV2_VARIANTS

__all__ = ['VARIANTS', 'OFFICIAL_VARIANTS', 'create_backbone']

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
