"""spanet_pl: PyTorch Lightning experiments for the SPANet family of vision backbones."""
from . import models  # noqa: F401  (registers every variant with timm)
from .models import VARIANTS, create_backbone, load_official_checkpoint

__version__ = '0.1.0'
__all__ = ['VARIANTS', 'create_backbone', 'load_official_checkpoint', '__version__']
