from .classification import ClassificationModule

__all__ = ['ClassificationModule']
