from .checkpoints import LastCheckpoint
from .predictions import TopKPredictionWriter

__all__ = ['LastCheckpoint', 'TopKPredictionWriter']
