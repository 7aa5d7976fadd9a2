"""What the task data modules share: the loader settings and recipe, robust image decoding, the predict-image list,
and ``change_defaults`` for data modules that are another one with other defaults (the embedded digits)."""
import inspect
import logging
import struct
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import default_loader
from typing_extensions import override

from spanet_pl.errors import UserInputError

from ._files import predict_folder, predict_images

__all__ = ['SplitDataModule', 'RobustLoading', 'ImagePathDataset', 'change_defaults']

_logger = logging.getLogger(__name__)

# What PIL raises for unreadable, truncated or malformed files (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


class RobustLoading:
    """Decode with ``self.loader``; an unreadable file is logged once, remembered and replaced by the next one."""
    loader: Callable[[str], Any]
    max_consecutive_failures: int
    bad_files: Dict[str, str]

    def _path(self, index: int) -> str:
        raise NotImplementedError

    @property
    def num_skipped(self) -> int:
        """How many distinct files were found unreadable (in this process; each DataLoader worker has its own)."""
        return len(self.bad_files)

    def _load(self, index: int) -> Tuple[int, Any]:
        """The decoded image at ``index`` or, if that is unreadable, at the next readable index (wrapping around).

        Returns:
            ``(index actually loaded, image)``.
        """
        n = len(self)
        tries = min(self.max_consecutive_failures, n)
        for step in range(tries):
            i = (index + step) % n
            path = self._path(i)
            if path in self.bad_files:
                continue
            try:
                return i, self.loader(path)
            except _DECODE_ERRORS as e:
                self.bad_files[path] = f'{type(e).__name__}: {e}'
                _logger.warning('skipping unreadable image %s (%s)', path, self.bad_files[path])
        last = self.bad_files.get(self._path((index + tries - 1) % n), 'unknown error')
        raise RuntimeError(
            f'{tries} consecutive images starting at {self._path(index)} are unreadable (last error: {last}); '
            f'the data set looks broken, not just one bad file')


class ImagePathDataset(RobustLoading, Dataset):
    """A list of image files served as ``(image, index)``, the index pointing into ``paths``.

    An unreadable file is skipped like in ``RobustImageFolder``; the index then names the file actually served.

    Args:
        paths: image file paths.
        transform: applied to the decoded PIL image.
        loader: path → PIL image.
        max_consecutive_failures: raise once this many files in a row are unreadable.
    """

    def __init__(
            self,
            paths: Sequence[str],
            transform: Optional[Callable] = None,
            loader: Callable[[str], Any] = default_loader,
            max_consecutive_failures: int = 50,
    ):
        self.paths = list(paths)
        self.transform = transform
        self.loader = loader
        self.max_consecutive_failures = max_consecutive_failures
        self.bad_files = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _path(self, index: int) -> str:
        return self.paths[index]

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        index, image = self._load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, index


class SplitDataModule(LightningDataModule):
    """Serves ``train_dataset`` / ``val_dataset`` (also for test) / ``predict_dataset``, built by ``setup``.

    Holds the loader settings both task data modules take (checked here); subclasses set ``collate_fn`` where
    batches need it. Training batches shuffle and drop the last incomplete batch.

    Args:
        batch_size: training batch size per device.
        eval_batch_size: validation/test/predict batch size per device; default ``batch_size``.
        num_workers: DataLoader worker processes per device.
        pin_memory: pin host memory (only when an accelerator is present).
        persistent_workers: keep workers alive between epochs (only when ``num_workers > 0``).
        predict_root: folder whose images (recursive) ``predict`` serves; default the validation images.
    """

    collate_fn: Optional[Callable] = None
    train_dataset: Optional[Dataset] = None
    val_dataset: Optional[Dataset] = None
    predict_dataset: Optional[Dataset] = None
    predict_paths: Optional[List[str]] = None

    def __init__(self, batch_size: int, eval_batch_size: Optional[int], num_workers: int, pin_memory: bool,
                 persistent_workers: bool, predict_root: Optional[str]):
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        for key in ('batch_size', 'eval_batch_size'):
            if getattr(self, key) < 1:
                raise UserInputError(f'{key}={getattr(self, key)} must be >= 1')
        if num_workers < 0:
            raise UserInputError(f'num_workers={num_workers} must be >= 0')
        self.predict_root = predict_folder(predict_root)

    def _check_train_size(self, dataset: Dataset, folder: Path) -> Dataset:
        if len(dataset) < self.batch_size:
            raise UserInputError(f'{folder} has {len(dataset)} images, fewer than batch_size={self.batch_size}; '
                                 'with drop_last no training batch would remain')
        return dataset

    def _predict_paths(self, default: Callable[[], List[str]]) -> List[str]:
        """The images of ``predict_root`` (recursive, sorted), else ``default()`` (the validation images)."""
        return default() if self.predict_root is None else predict_images(self.predict_root)

    def _loader(self, dataset: Dataset, batch_size: int, train: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            # full batches only: Mixup pairs a batch with its reverse, and a batch of one breaks BatchNorm
            drop_last=train,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory and torch.accelerator.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup('fit')
        return self._loader(self.train_dataset, self.batch_size, train=True)

    @override
    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup('validate')
        return self._loader(self.val_dataset, self.eval_batch_size)

    @override
    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    @override
    def predict_dataloader(self) -> DataLoader:
        if self.predict_dataset is None:
            self.setup('predict')
        return self._loader(self.predict_dataset, self.eval_batch_size)


def change_defaults(**defaults) -> Callable[[type], type]:
    """Class decorator: the decorated data module takes exactly its parent's arguments, with ``defaults`` changed.

    Why: the embedded data sets (digits, digit scenes) are the ImageNet / ADE20K data modules with other defaults.
    Re-declaring some twenty arguments per subclass only to change a handful of defaults duplicates every signature
    and lets the copies drift. Here the parent's signature is copied with the new defaults, so LightningCLI, ``help``
    and ``--print_config`` show the real defaults, and a new parent argument reaches the subclass by itself. The
    class defines no ``__init__``; an optional ``adapt_arguments(arguments)`` static method may rewrite the complete
    argument dict (e.g. materialise ``root``) before the parent's ``__init__`` receives it, whose
    ``save_hyperparameters`` then records what was really used.
    """
    def decorate(cls: type) -> type:
        parent = cls.__mro__[1]
        if '__init__' in vars(cls):
            raise TypeError(f'{cls.__name__} takes its arguments from {parent.__name__}: define adapt_arguments, '
                            'not __init__')
        parent_signature = inspect.signature(parent.__init__)
        unknown = sorted(set(defaults) - set(parent_signature.parameters))
        if unknown:
            raise TypeError(f'{cls.__name__}: {", ".join(unknown)} are not arguments of {parent.__name__}')
        signature = parent_signature.replace(parameters=[
            p.replace(default=defaults[p.name]) if p.name in defaults else p
            for p in parent_signature.parameters.values()])
        adapt = getattr(cls, 'adapt_arguments', None)

        def __init__(self, *args, **kwargs):
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            del arguments['self']
            parent.__init__(self, **(adapt(arguments) if adapt else arguments))

        __init__.__signature__ = signature
        __init__.__qualname__ = f'{cls.__qualname__}.__init__'
        cls.__init__ = __init__
        return cls
    return decorate
