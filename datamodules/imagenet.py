"""ImageNet-style classification data: ImageFolder layout, timm transforms, robust decoding, Mixup/CutMix.

Layout: ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*`` (any extension torchvision's ``ImageFolder``
accepts), the same class folders in both splits.
"""
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader
from typing_extensions import override

from spanet_pl.errors import MissingPathError, UserInputError, check_choice

from ._base import ImagePathDataset, RobustLoading, SplitDataModule
from ._files import IMG_EXTENSIONS, first_names, has_image_file, list_class_dirs

__all__ = ['ImageNetDataModule', 'RobustImageFolder', 'ImagePathDataset', 'Interpolation']

_logger = logging.getLogger(__name__)

DEFAULT_CROP_PCT = 0.875
DEFAULT_INTERPOLATION = 'bicubic'
Interpolation = Literal['bilinear', 'bicubic', 'nearest', 'lanczos', 'box', 'hamming', 'random']


class RobustImageFolder(RobustLoading, ImageFolder):
    """``torchvision.datasets.ImageFolder`` that skips unreadable images instead of raising.

    Args:
        root: a split folder, ``<root>/<class>/<image>``.
        transform: applied to the decoded PIL image.
        classes: class folder names in label order; default: the sorted sub-folders (``ImageFolder``'s rule).
        loader: path → PIL image.
        max_consecutive_failures: raise once this many files in a row are unreadable.
    """

    def __init__(
            self,
            root: str,
            transform: Optional[Callable] = None,
            classes: Optional[Sequence[str]] = None,
            loader: Callable[[str], Any] = default_loader,
            max_consecutive_failures: int = 50,
    ):
        self._given_classes = list(classes) if classes is not None else None
        self.max_consecutive_failures = max_consecutive_failures
        self.bad_files = {}
        super().__init__(root, transform=transform, loader=loader)

    @override
    def find_classes(self, directory: str) -> Tuple[List[str], Dict[str, int]]:
        if self._given_classes is None:
            return super().find_classes(directory)
        return self._given_classes, {name: i for i, name in enumerate(self._given_classes)}

    def _path(self, index: int) -> str:
        return self.samples[index][0]

    @override
    def __getitem__(self, index: int) -> Tuple[Any, int]:
        # Only decoding is guarded: a failing transform is a bug and must surface, not be skipped.
        index, image = self._load(index)
        target = self.targets[index]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


def scan_image_folder_layout(root: Path) -> List[str]:
    """Check ``root/{train,val}/<class>/`` cheaply and return the sorted class names.

    Stops at the first image of every class folder, so 1000 ImageNet classes cost two ``scandir`` calls each.

    Args:
        root: the data set root.

    Raises:
        FileNotFoundError: ``root``, ``root/train`` or ``root/val`` is missing.
        ValueError: no class folders, class folders that differ between the splits, or a class without images.
    """
    expected = f'expected {root}/train/<class>/<image> and {root}/val/<class>/<image>'
    if not root.is_dir():
        raise MissingPathError(f'data root {root} does not exist or is not a folder; {expected}')
    for split in ('train', 'val'):
        if not (root / split).is_dir():
            raise MissingPathError(f'data root {root} has no {split}/ folder; {expected}')
    train, val = list_class_dirs(root / 'train'), list_class_dirs(root / 'val')
    if not train:
        raise UserInputError(f'{root / "train"} has no class folders; {expected}')
    if train != val:
        only_train = sorted(set(train) - set(val))
        only_val = sorted(set(val) - set(train))
        parts = [f'only in {split}/: {first_names(names)}'
                 for split, names in (('train', only_train), ('val', only_val)) if names]
        raise UserInputError(f'class folders differ between {root}/train and {root}/val; {"; ".join(parts)}')
    for split in ('train', 'val'):
        for name in train:
            if not has_image_file(root / split / name):
                raise UserInputError(
                    f'class folder {root / split / name} has no image file; expected at least one '
                    f'{"/".join(IMG_EXTENSIONS)} file')
    return train


class ImageNetDataModule(SplitDataModule):
    """ImageNet-style classification data with timm's training recipe (RandAugment, RandomErasing, Mixup/CutMix).

    The folder layout is checked in ``__init__``, so a bad path fails before any log or checkpoint folder is made.
    ``mean``/``std``/``crop_pct``/``interpolation`` left at ``None`` are taken in ``setup`` from the attached
    LightningModule's ``data_config`` dict (as ``timm.data.resolve_model_data_config`` returns it), else from ImageNet
    defaults. Training batches are ``(images, targets)``: targets are int64 class indices, or soft ``(B, num_classes)``
    float targets (label smoothing included) when Mixup/CutMix is on.

    Args:
        root: data set root holding ``train/`` and ``val/``.
        batch_size: training batch size per device (even when Mixup/CutMix is on).
        eval_batch_size: validation/test/predict batch size per device; default ``batch_size``.
        num_workers: DataLoader worker processes per device.
        pin_memory: pin host memory (only when an accelerator is present).
        persistent_workers: keep workers alive between epochs (only when ``num_workers > 0``).
        img_size: square training and evaluation crop size.
        crop_pct: evaluation centre-crop fraction (resize to ``img_size / crop_pct``, then crop).
        mean: normalisation mean.
        std: normalisation standard deviation.
        interpolation: ``'bicubic'``, ``'bilinear'``, ... or ``'random'`` (training only; evaluation then bicubic).
        auto_augment: timm auto-augment policy string, e.g. ``'rand-m9-mstd0.5-inc1'``; ``None`` for none.
        re_prob: RandomErasing probability.
        hflip: horizontal flip probability.
        scale: RandomResizedCrop area range.
        color_jitter: colour jitter strength (timm ignores it while a RandAugment policy is on).
        mixup_alpha: Mixup beta parameter; 0 disables Mixup.
        cutmix_alpha: CutMix beta parameter; 0 disables CutMix.
        mixup_prob: probability of mixing a batch at all.
        mixup_switch_prob: probability of CutMix instead of Mixup when both are on.
        label_smoothing: smoothing folded into Mixup's soft targets (without Mixup the model applies it).
        predict_root: folder whose images (recursive) ``predict`` serves; default the val split.
    """

    def __init__(
            self,
            root: str,
            batch_size: int = 128,
            eval_batch_size: Optional[int] = None,
            num_workers: int = 8,
            pin_memory: bool = True,
            persistent_workers: bool = True,
            img_size: int = 224,
            crop_pct: Optional[float] = None,
            mean: Optional[Tuple[float, float, float]] = None,
            std: Optional[Tuple[float, float, float]] = None,
            interpolation: Optional[Interpolation] = None,
            auto_augment: Optional[str] = 'rand-m9-mstd0.5-inc1',
            re_prob: float = 0.25,
            hflip: float = 0.5,
            scale: Tuple[float, float] = (0.08, 1.0),
            color_jitter: float = 0.4,
            mixup_alpha: float = 0.8,
            cutmix_alpha: float = 1.0,
            mixup_prob: float = 1.0,
            mixup_switch_prob: float = 0.5,
            label_smoothing: float = 0.1,
            predict_root: Optional[str] = None,
    ):
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers, predict_root)
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.img_size = img_size
        self.crop_pct = crop_pct
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.interpolation = interpolation
        self.auto_augment = auto_augment or None
        self.re_prob = re_prob
        self.hflip = hflip
        self.scale = tuple(scale)
        self.color_jitter = color_jitter
        self.label_smoothing = label_smoothing

        self.classes = scan_image_folder_layout(self.root)
        self.num_classes = len(self.classes)
        self.mixup_active = mixup_alpha > 0 or cutmix_alpha > 0
        self._check_arguments()
        self.mixup_fn = Mixup(
            mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mixup_prob, switch_prob=mixup_switch_prob,
            label_smoothing=label_smoothing, num_classes=self.num_classes,
        ) if self.mixup_active else None
        # Building the transforms once with the fallback values rejects a bad policy string before training starts.
        self._build_transforms(self._resolve_data_config(None))

        self.data_config: Optional[Dict[str, Any]] = None
        self.train_transform = self.eval_transform = None
    def _check_arguments(self) -> None:
        if self.img_size < 1:
            raise UserInputError(f'img_size={self.img_size} must be >= 1')
        if self.mixup_active and self.batch_size % 2:
            raise UserInputError(f'batch_size={self.batch_size} must be even while Mixup/CutMix is on (timm mixes a '
                             f'batch with its reverse)')
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise UserInputError(f'crop_pct={self.crop_pct} must be in (0, 1]')
        if self.interpolation is not None:
            check_choice(self.interpolation, Interpolation, 'interpolation')
        if not 0 < self.scale[0] <= self.scale[1]:
            raise UserInputError(f'scale={self.scale} must be (min, max) with 0 < min <= max')

    def _model_data_config(self) -> Optional[Mapping[str, Any]]:
        module = getattr(self.trainer, 'lightning_module', None) if self.trainer is not None else None
        config = getattr(module, 'data_config', None)
        return config if isinstance(config, Mapping) else None

    def _resolve_data_config(self, model_config: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        model_config = model_config or {}

        def pick(own, key, default):
            if own is not None:
                return own
            return model_config[key] if model_config.get(key) is not None else default

        return {
            'input_size': (3, self.img_size, self.img_size),
            'interpolation': pick(self.interpolation, 'interpolation', DEFAULT_INTERPOLATION),
            'mean': tuple(float(v) for v in pick(self.mean, 'mean', IMAGENET_DEFAULT_MEAN)),
            'std': tuple(float(v) for v in pick(self.std, 'std', IMAGENET_DEFAULT_STD)),
            'crop_pct': float(pick(self.crop_pct, 'crop_pct', DEFAULT_CROP_PCT)),
        }

    def _build_transforms(self, config: Mapping[str, Any]) -> Tuple[Callable, Callable]:
        interpolation = config['interpolation']
        common = dict(input_size=self.img_size, mean=config['mean'], std=config['std'])
        try:
            train = create_transform(
                is_training=True, scale=self.scale, hflip=self.hflip, color_jitter=self.color_jitter or None,
                auto_augment=self.auto_augment, re_prob=self.re_prob, interpolation=interpolation, **common)
            evaluation = create_transform(
                is_training=False, crop_pct=config['crop_pct'],
                interpolation=DEFAULT_INTERPOLATION if interpolation == 'random' else interpolation, **common)
        except (AssertionError, KeyError, ValueError) as e:
            raise UserInputError(
                f'cannot build transforms with auto_augment={self.auto_augment!r}, interpolation={interpolation!r}, '
                f're_prob={self.re_prob}, hflip={self.hflip}, scale={self.scale}: {e}') from e
        return train, evaluation

    def _split(self, split: str, transform: Callable) -> RobustImageFolder:
        return RobustImageFolder(str(self.root / split), transform=transform, classes=self.classes)

    @override
    def setup(self, stage: Optional[str] = None) -> None:
        if self.data_config is None:
            model_config = self._model_data_config()
            self.data_config = self._resolve_data_config(model_config)
            self.train_transform, self.eval_transform = self._build_transforms(self.data_config)
            _logger.info('data config (unset keys from %s): %s',
                         'the model' if model_config is not None else 'ImageNet defaults', self.data_config)
        if stage in (None, 'fit') and self.train_dataset is None:
            self.train_dataset = self._check_train_size(self._split('train', self.train_transform), self.root / 'train')
        if stage in (None, 'fit', 'validate', 'test') and self.val_dataset is None:
            self.val_dataset = self._split('val', self.eval_transform)
        if stage in (None, 'predict') and self.predict_dataset is None:
            self.predict_paths = self._predict_paths(lambda: [path for path, _ in self._split('val', None).samples])
            self.predict_dataset = ImagePathDataset(self.predict_paths, transform=self.eval_transform)

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Mixing on the device keeps the workers' output plain and the mixing cheap.
        if self.mixup_fn is not None and self.trainer is not None and self.trainer.training:
            images, targets = batch
            return self.mixup_fn(images, targets)
        return batch
