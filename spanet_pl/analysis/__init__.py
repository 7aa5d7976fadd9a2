"""Spectral analysis of SPANet-family backbones: the papers' evidence as plain functions, figures and a CLI
(``python -m spanet_pl.analysis {fourier,filters,context,graph,cam}``).

The math (``fourier``, ``filters``, ``context``, ``graph``, ``cam``) works on tensors and modules and is tested alone;
``plots`` draws, ``commands`` and ``__main__`` wire models, images and output files together.
"""
from .fourier import LayerCurve, LogAmplitudeMean, layer_curves, relative_log_amplitude, stage_high_frequency
from .filters import full_spectrum, radial_profile, spf_masks, srf_filters
from .layers import find_backbone, spectral_layers

__all__ = ['relative_log_amplitude', 'LogAmplitudeMean', 'LayerCurve', 'layer_curves', 'stage_high_frequency',
           'full_spectrum', 'radial_profile', 'spf_masks', 'srf_filters', 'find_backbone', 'spectral_layers']
