"""``python -m spanet_pl hub save (--ckpt RUN.ckpt | --official FILE.pth --model VARIANT) --out DIR [--push REPO_ID]``

Writes timm's Hugging Face Hub layout with timm's own helpers (``save_for_hf``, ``generate_readme``,
``push_to_hf_hub``): ``config.json`` (architecture, num_classes, the constructor arguments, pretrained_cfg with the
run's preprocessing), ``model.safetensors`` and a ``README.md`` model card with the run's metrics and config.
``timm.create_model('local-dir:DIR', pretrained=True)`` (after ``import spanet_pl``) loads it back; ``--push`` uploads the same files.
"""
import argparse
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch.nn as nn

from .errors import MissingPathError, UserInputError

__all__ = ['save_model', 'model_card', 'main']

_PAPERS = {
    'SPANet': ('SPANet: Frequency-balancing Token Mixer using Spectral Pooling Aggregation Modulation (ICCV 2023)',
               'https://arxiv.org/abs/2308.11568', 'https://github.com/DoranLyong/SPANet-official'),
    'SPANetV2': ('SPANetV2: Spectral-Adaptive Modulation Networks (IEEE TPAMI 2026)',
                 'https://arxiv.org/abs/2503.23947', 'https://github.com/DoranLyong/SPANetV2-official'),
}


def _run_dir(ckpt: Path) -> Path:
    """The run's log folder (``<run>/checkpoints/x.ckpt`` -> ``<run>``)."""
    return ckpt.parent.parent if ckpt.parent.name == 'checkpoints' else ckpt.parent


def model_card(model: nn.Module, source: str, metrics: Optional[Dict[str, Any]] = None,
               config_text: Optional[str] = None, input_size: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """timm's model-card dict (``generate_readme``) for ``model``; metrics and config go in its comparison text."""
    title, paper, code = _PAPERS[type(model).__name__]
    cfg = model.pretrained_cfg
    input_size = input_size or cfg['input_size']
    card = {
        'license': cfg.get('license', 'other'),
        'description': f'A {type(model).__name__} image classifier ({cfg["architecture"]}) from spanet_pl; '
                       f'weights: {source}.',
        'details': {
            'Model Type': 'Image classification / feature backbone',
            'Model Stats': {'Params (M)': f'{sum(p.numel() for p in model.parameters()) / 1e6:.1f}',
                            'Image size': f'{input_size[1]} x {input_size[2]}'},
            'Papers': {title: paper},
            'Original': code,
        },
        'usage': ('```python\nimport timm, spanet_pl  # spanet_pl registers the architecture with timm\n'
                  "model = timm.create_model('local-dir:PATH/TO/THIS/FOLDER', pretrained=True).eval()  # or 'hf-hub:REPO_ID'\n```\n"),
    }
    sections = []
    if metrics:
        rows = [f'| {k} | {v} |' for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None]
        best = metrics.get('best') or {}
        if best:
            rows.insert(0, f'| best {metrics.get("monitor", "")} | {best.get("value")} (epoch {best.get("epoch")}) |')
        sections.append('### Training run metrics (metrics.json)\n\n| metric | value |\n|---|---|\n' + '\n'.join(rows))
    if config_text:
        sections.append(f'### Training config (config.yaml)\n\n```yaml\n{config_text.strip()}\n```')
    if sections:
        card['comparison'] = '\n\n'.join(sections) + '\n'
    return card


def _from_run(ckpt: str):
    from .tasks.restore import restore_run
    run = restore_run(ckpt)
    if run.kind != 'classification':
        raise UserInputError(f'{ckpt}: hub save takes classification runs (timm classifiers); export a '
                             f'segmentation run with `python -m spanet_pl export`')
    folder = _run_dir(Path(ckpt))
    metrics = json.loads((folder / 'metrics.json').read_text()) if (folder / 'metrics.json').is_file() else None
    config = (folder / 'config.yaml').read_text() if (folder / 'config.yaml').is_file() else None
    return run.network, f'run checkpoint {Path(ckpt).name}', metrics, config, run.data_hparams


def _data_config(data: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The run's preprocessing as timm's data config (input size, crop_pct, mean, std, interpolation)."""
    config = {}
    if data.get('img_size'):
        size = data['img_size']
        config['input_size'] = (3, *((size, size) if isinstance(size, int) else size))
    for key in ('crop_pct', 'mean', 'std', 'interpolation'):
        if data.get(key) is not None:
            config[key] = tuple(data[key]) if isinstance(data[key], list) else data[key]
    return config or None


def save_model(model: nn.Module, out: os.PathLike, source: str, metrics: Optional[Dict[str, Any]] = None,
               config_text: Optional[str] = None, data_config: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model`` (a timm SPANet/SPANetV2 classifier) in the Hub layout: config.json, model.safetensors,
    README.md."""
    from timm.models import save_for_hf
    from timm.models._hub import generate_readme
    out = Path(out)
    save_for_hf(model, out, safe_serialization=True, data_config=data_config)
    card = model_card(model, source, metrics, config_text, (data_config or {}).get('input_size'))
    (out / 'README.md').write_text(generate_readme(card, model.pretrained_cfg['architecture']), encoding='utf-8')
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m spanet_pl hub', description="Save a classifier in timm's Hugging Face Hub layout.",
        epilog='example: python -m spanet_pl hub save --official spanetv2_s18_pure.pth --model spanetv2_s18_pure '
               '--out hub/spanetv2_s18_pure')
    commands = parser.add_subparsers(dest='command', required=True)
    save = commands.add_parser('save', help='write config.json, model.safetensors and README.md')
    source = save.add_mutually_exclusive_group(required=True)
    source.add_argument('--ckpt', help='checkpoint of a classification run (metrics.json and config.yaml beside its '
                                       'checkpoints/ folder go in the model card)')
    source.add_argument('--official', help='official SPANet / SPANetV2 checkpoint (.pth); needs --model')
    save.add_argument('--model', help='variant of --official, e.g. spanetv2_s18_pure')
    save.add_argument('--out', required=True, help='output folder')
    save.add_argument('--push', metavar='REPO_ID', help='also upload to the Hugging Face Hub (needs a network and '
                                                        'a token: huggingface-cli login)')
    save.add_argument('--private', action='store_true', help='with --push: create the repository private')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = _parser().parse_args(argv)
    if args.official:
        if not args.model:
            raise UserInputError('--official needs --model VARIANT (the checkpoint\'s variant)')
        if not Path(args.official).is_file():
            raise MissingPathError(f'official checkpoint {args.official!r} does not exist')
        from .models import create_backbone
        model = create_backbone(args.model, official_checkpoint=args.official).eval()
        model, source, metrics, config, data = model, f'official checkpoint {Path(args.official).name}', None, None, {}
    else:
        model, source, metrics, config, data = _from_run(args.ckpt)
    out = save_model(model, args.out, source, metrics, config, _data_config(data))
    print(f'wrote {out}/config.json, model.safetensors, README.md; load with '
          f"timm.create_model('local-dir:{out}', pretrained=True) after import spanet_pl")
    if args.push:
        from timm.models import push_to_hf_hub
        data_config = _data_config(data)
        card = model_card(model, source, metrics, config, (data_config or {}).get('input_size'))
        push_to_hf_hub(model, args.push, private=args.private, model_card=card, safe_serialization=True,
                       data_config=data_config)
        print(f'pushed to https://huggingface.co/{args.push}')
    return out


if __name__ == '__main__':
    main()
