"""``--model`` for the analyses: a variant name, a run's checkpoint, an official checkpoint or a folder of runs.

* ``spanetv2_nano_pure``: the variant with seeded random weights (the untrained baseline);
* ``logs/quickstart/version_0/checkpoints/last.ckpt``: a run of ``python -m spanet_pl fit`` (classification or
  segmentation); variant, ablation switches and data come from the checkpoint's hyper-parameters;
* ``spanetv2_s18_pure.pth`` or ``spanetv2_s18_pure=FILE``: an official checkpoint (any of the three layouts) or a
  plain state dict; without the ``VARIANT=`` prefix the variant is recognised from the tensor shapes;
* a folder: every run under it (``*/checkpoints/``, e.g. a grid's ``logs/<grid>``), its best checkpoint, else
  ``last.ckpt``; each is labelled with its folder (the grid's cell name).
"""
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..errors import MissingPathError, UserInputError
from ..models import VARIANTS, convert_official_state_dict, create_backbone, load_backbone_weights
from ..models.official import read_checkpoint
from .data import DATAMODULE_SOURCES

__all__ = ['LoadedModel', 'load_model', 'load_models', 'find_runs', 'run_name']

_logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready for analysis (eval mode, CPU) and what is known about it.

    Args:
        label: legend / file-name label.
        model: the network: a classifier, or a ``features_only`` pyramid for a segmentation run.
        variant: registered variant name.
        source: what ``--model`` said.
        classifier: whether ``model`` returns class logits (CAM needs it).
        mean, std: input normalisation: the run's data module's if it recorded one, else the variant's.
        data: ``(source, root)`` of the data the run was trained on, when known (see ``analysis.data``).
        input_size: the side of the square images the run was trained on, when known.
    """
    label: str
    model: nn.Module
    variant: str
    source: str
    classifier: bool
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    data: Optional[Tuple[str, Optional[str]]] = None
    input_size: Optional[int] = None


def _normalisation(model: nn.Module, data_hparams: Optional[Dict[str, Any]] = None):
    cfg = getattr(getattr(model, 'model', model), 'pretrained_cfg', {}) or {}
    mean, std = cfg.get('mean'), cfg.get('std')
    if data_hparams and data_hparams.get('mean') is not None and data_hparams.get('std') is not None:
        mean, std = data_hparams['mean'], data_hparams['std']
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _from_variant(name: str, label: str) -> LoadedModel:
    torch.manual_seed(0)  # the same "untrained" weights every time
    model = create_backbone(name)
    return LoadedModel(label, model.eval(), name, name, True, *_normalisation(model))


def _from_run(path: Path, label: str) -> LoadedModel:
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get('hyper_parameters') if isinstance(checkpoint, dict) else None
    if not hparams or 'backbone' not in hparams:
        raise UserInputError(f'{path} is not a checkpoint of a spanet_pl run (no hyper_parameters.backbone); for an '
                             f'official checkpoint or a plain state dict name the variant: VARIANT={path}')
    variant, kwargs = hparams['backbone'], dict(hparams.get('backbone_kwargs') or {})
    segmentation = 'Segmentation' in str(hparams.get('_class_path', '')) or 'head' in hparams
    if segmentation:
        model = create_backbone(variant, features_only=True, **kwargs)
    else:
        model = create_backbone(variant, num_classes=hparams.get('num_classes', 1000), **kwargs)
    load_backbone_weights(model, checkpoint)
    data_hparams = checkpoint.get('datamodule_hyper_parameters') or {}
    source = DATAMODULE_SOURCES.get(str(data_hparams.get('_class_path')))
    data = (source, data_hparams.get('root')) if source else None
    return LoadedModel(label, model.eval(), variant, str(path), not segmentation,
                       *_normalisation(model, data_hparams), data=data, input_size=_training_size(data_hparams))


def _training_size(data_hparams: Dict[str, Any]) -> Optional[int]:
    """The (short) side of the training images: ``img_size`` of a classification data module, ``crop_size`` of a
    segmentation one."""
    size = data_hparams.get('img_size') or data_hparams.get('crop_size')
    if isinstance(size, (list, tuple)):
        size = min(size)
    return int(size) if size else None


def _shapes(state: Dict[str, torch.Tensor]) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.startswith('head.') and not k.endswith('_extra_state')}


def _detect_variant(checkpoint, path: Path) -> str:
    """The registered variant (default settings) whose tensors have exactly the checkpoint's shapes."""
    for name in VARIANTS:
        with torch.device('meta'):
            model = create_backbone(name)
        try:
            converted = convert_official_state_dict(checkpoint, model)
        except UserInputError:  # the other family's layout
            continue
        if _shapes(converted) == _shapes(model.state_dict()):
            return name
    raise UserInputError(f'{path} fits no variant with default settings; name it: --model VARIANT={path} '
                         f'(with ablation switches, analyse the run\'s .ckpt instead)')


def _from_weights(path: Path, label: str, variant: Optional[str]) -> LoadedModel:
    checkpoint = read_checkpoint(path)
    variant = variant or _detect_variant(checkpoint, path)
    probe = convert_official_state_dict(checkpoint, create_backbone(variant, num_classes=0))
    head = [v for k, v in probe.items() if k.startswith('head.') and k.endswith('weight') and v.ndim == 2]
    model = create_backbone(variant, num_classes=head[-1].shape[0] if head else 0)
    load_backbone_weights(model, checkpoint)
    return LoadedModel(label, model.eval(), variant, str(path), bool(head), *_normalisation(model))


def _best_checkpoint(folder: Path) -> Optional[Path]:
    best = sorted(folder.glob('best*.ckpt'), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    last = folder / 'last.ckpt'
    return last if last.is_file() else None


def find_runs(folder: Path) -> List[Tuple[str, Path]]:
    """``(label, checkpoint)`` of every run under ``folder``: a ``checkpoints/`` folder with a best or last
    checkpoint; the label is ``folder``'s name and the run folder inside it (``<grid>/<cell>/seed=<s>``), or
    ``run_name`` for ``folder`` itself, so runs of two grids never share a label."""
    runs = []
    for ckpt_dir in sorted({p.parent for p in folder.rglob('checkpoints/*.ckpt')}):
        path = _best_checkpoint(ckpt_dir)
        if path is not None:
            run_dir = ckpt_dir.parent
            inside = run_dir.relative_to(folder).as_posix()
            runs.append((run_name(run_dir) if inside == '.' else f'{folder.name}/{inside}', path))
    return runs


def load_model(spec: str, label: Optional[str] = None) -> List[LoadedModel]:
    """The model(s) one ``--model`` value names (a folder may hold several runs)."""
    variant, _, rest = spec.partition('=')
    if rest and variant in VARIANTS:
        path = Path(rest).expanduser()
        if not path.is_file():
            raise MissingPathError(f'checkpoint {path} does not exist')
        return [_from_weights(path, label or variant, variant)]
    if spec in VARIANTS:
        return [_from_variant(spec, label or f'{spec} (random init)')]
    path = Path(spec).expanduser()
    if path.is_dir():
        runs = find_runs(path)
        if not runs:
            raise UserInputError(f'{path} holds no run (no checkpoints/*.ckpt below it)')
        if label and len(runs) > 1:
            raise UserInputError(f'--label {label!r} names one model but {path} holds {len(runs)} runs')
        return [_from_run(ckpt, label or name) for name, ckpt in runs]
    if path.is_file():
        if path.suffix == '.ckpt':
            return [_from_run(path, label or _run_label(path))]
        return [_from_weights(path, label or path.stem, None)]
    if os.sep in spec or spec.endswith(('.ckpt', '.pth', '.pt')):
        raise MissingPathError(f'--model {spec}: no such file or folder')
    raise UserInputError(f'--model {spec!r} is neither a variant ({", ".join(VARIANTS)}) nor an existing checkpoint '
                         f'or run folder')


def run_name(run_dir: Path) -> str:
    """A run folder as a label: ``<grid>/<cell>/seed=<s>`` for a grid's seeded run, else ``<parent>/<run>``
    (``quickstart/version_0``)."""
    parts = [run_dir.parent.name, run_dir.name]
    if run_dir.name.startswith('seed='):
        parts.insert(0, run_dir.parent.parent.name)
    return '/'.join(parts)


def _run_label(path: Path) -> str:
    """The ``run_name`` of ``<run>/checkpoints/x.ckpt``; a checkpoint elsewhere -> its stem."""
    return run_name(path.parent.parent) if path.parent.name == 'checkpoints' else path.stem


def load_models(specs: Sequence[str], labels: Optional[Sequence[str]] = None) -> List[LoadedModel]:
    """Every model of every ``--model``, with ``--label`` (one per ``--model``) where given; labels made unique."""
    if labels and len(labels) != len(specs):
        raise UserInputError(f'{len(labels)} --label for {len(specs)} --model: give one label per model or none')
    models: List[LoadedModel] = []
    for i, spec in enumerate(specs):
        models.extend(load_model(spec, labels[i] if labels else None))
    seen: Dict[str, int] = {}
    for item in models:
        count = seen.get(item.label, 0)
        seen[item.label] = count + 1
        if count:
            item.label = f'{item.label} ({count + 1})'
    return models
