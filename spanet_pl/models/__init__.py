"""SPANet and SPANetV2 backbones; importing this package registers every variant with timm."""
from .official import detect_layout
from .registry import (OFFICIAL_VARIANTS, VARIANTS, convert_official_state_dict, create_backbone,
                       load_backbone_weights, load_official_checkpoint)
from .spanet import SPAM, SPANET_VARIANTS, SPANet
from .spanetv2 import SPANETV2_VARIANTS, Attention, ExSPAM, MixAttention, SPANetV2

__all__ = [
    'SPAM', 'SPANet', 'ExSPAM', 'Attention', 'MixAttention', 'SPANetV2', 'SPANET_VARIANTS', 'SPANETV2_VARIANTS',
    'VARIANTS', 'OFFICIAL_VARIANTS', 'create_backbone', 'load_backbone_weights', 'load_official_checkpoint',
    'convert_official_state_dict', 'detect_layout',
]
