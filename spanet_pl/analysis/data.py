"""Images for the analyses: the validation split of a data set the CLI trains on, or image files given by path.

Images are read with PIL, converted to RGB, resized to a square (bicubic) and normalised with the model's mean/std,
so every feature map a backbone makes of them is square. From a data set, ``count`` images are taken evenly spaced
over its sorted validation files, so an ImageFolder split (sorted by class) gives every class a share.
"""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import MissingPathError, UserInputError

__all__ = ['DATA_SOURCES', 'DATAMODULE_SOURCES', 'ImageSet', 'dataset_images', 'path_images', 'read_pictures',
           'normalise']

_logger = logging.getLogger(__name__)

DATA_SOURCES = ('digits', 'scenes', 'imagenet', 'ade20k')
# The CLI's data modules (class path in a run's checkpoint) -> the data source they read.
DATAMODULE_SOURCES = {
    'datamodules.DigitsDataModule': 'digits',
    'datamodules.DigitScenesDataModule': 'scenes',
    'datamodules.ImageNetDataModule': 'imagenet',
    'datamodules.ADE20KDataModule': 'ade20k',
}


@dataclass
class ImageSet:
    """Image files and, for ImageFolder layouts, their class names (index = label)."""
    paths: List[str]
    description: str
    class_names: Optional[List[str]] = field(default=None)

    def subset(self, count: int) -> 'ImageSet':
        """``count`` files evenly spaced over the list (all of them when there are fewer)."""
        if count < 1:
            raise UserInputError(f'the number of images must be at least 1, got {count}')
        if count >= len(self.paths):
            return self
        picks = np.linspace(0, len(self.paths) - 1, count).round().astype(int)
        return ImageSet([self.paths[i] for i in picks], self.description, self.class_names)


def _image_folder_split(split_dir: Path, description: str) -> ImageSet:
    from datamodules._files import list_class_dirs, list_image_files
    if not split_dir.is_dir():
        raise MissingPathError(f'{split_dir} does not exist; expected the validation split <root>/val/<class>/*')
    paths = list_image_files(split_dir)
    if not paths:
        raise UserInputError(f'{split_dir} holds no image file')
    return ImageSet(paths, description, list_class_dirs(split_dir))


def dataset_images(source: str, root: Optional[str] = None) -> ImageSet:
    """The validation images of a data source.

    Args:
        source: ``digits`` / ``scenes`` (the embedded quick-start data, written on first use), ``imagenet``
            (``root/val/<class>/*``) or ``ade20k`` (``root[/ADEChallengeData2016]/images/validation/*``).
        root: data root; required for imagenet/ade20k, optional cache folder for the embedded ones.
    """
    if source not in DATA_SOURCES:
        raise UserInputError(f'unknown data source {source!r}; choose from {", ".join(DATA_SOURCES)}')
    if source in ('imagenet', 'ade20k') and not root:
        raise UserInputError(f'--data {source} needs --data-root (the folder the data module reads)')
    if source == 'digits':
        from datamodules import materialize_digits
        return _image_folder_split(materialize_digits(root) / 'val', 'digits (validation split)')
    if source == 'imagenet':
        return _image_folder_split(Path(root).expanduser() / 'val', f'ImageNet validation images under {root}')
    from datamodules.ade20k import find_ade20k_root
    if source == 'scenes':
        from datamodules import materialize_digit_scenes
        root = str(materialize_digit_scenes(root))
    from datamodules._files import list_image_files
    folder = find_ade20k_root(Path(root).expanduser()) / 'images' / 'validation'
    paths = list_image_files(folder)
    if not paths:
        raise UserInputError(f'{folder} holds no image file')
    return ImageSet(paths, f'{source} validation images under {folder}')


def path_images(paths: Sequence[str]) -> ImageSet:
    """Image files given directly: files, or folders searched recursively."""
    from datamodules._files import is_image_file, list_image_files
    found: List[str] = []
    for name in paths:
        path = Path(name).expanduser()
        if path.is_dir():
            found.extend(list_image_files(path))
        elif path.is_file():
            if not is_image_file(path.name):
                raise UserInputError(f'{path} is not an image file (expected .jpg, .png, ...)')
            found.append(str(path))
        else:
            raise MissingPathError(f'image path {path} does not exist')
    if not found:
        raise UserInputError(f'no image file in {", ".join(map(str, paths))}')
    return ImageSet(found, f'{len(found)} image file(s)')


def read_pictures(paths: Sequence[str], size: int) -> Tuple[Tensor, List[str]]:
    """Read and resize to ``size`` x ``size`` (bicubic).

    Returns:
        ``(pictures, kept)``: (N, size, size, 3) float32 RGB in [0, 1] and the paths that were read (an unreadable
        file is logged and skipped; only when none can be read is it an error).
    """
    if size < 1:
        raise UserInputError(f'--img-size must be positive, got {size}')
    pictures, kept = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert('RGB').resize((size, size), Image.Resampling.BICUBIC)
        except (OSError, ValueError) as error:  # one bad file never stops an analysis: report it and go on
            _logger.warning('skipped unreadable image %s: %s', path, error)
            continue
        pictures.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0))
        kept.append(str(path))
    if not pictures:
        raise UserInputError(f'none of the {len(paths)} images could be read (first: {paths[0]})')
    return torch.stack(pictures), kept


def normalise(pictures: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(N, H, W, 3) pictures in [0, 1] -> normalised (N, 3, H, W) network inputs."""
    mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    return ((pictures - mean_t) / std_t).permute(0, 3, 1, 2).contiguous()
