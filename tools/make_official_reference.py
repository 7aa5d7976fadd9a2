"""Record the official SPANet/SPANetV2 code's logits for synthetic weights (tests/fixtures/official_reference.pt).

The official code is imported from local clones at run time and never copied into this repository; what is stored is
its key names, shapes and outputs. The test-suite rebuilds the same weights (spanet_pl.testing.synthetic_state_dict),
converts them with load_official_checkpoint and compares logits.

    python tools/make_official_reference.py --v1 PATH/SPANet-official --v2 PATH/SPANetV2-official
"""
import argparse
import contextlib
import importlib.util
import io
import sys
import types
from pathlib import Path

import torch
import timm.layers
import timm.models.registry

from spanet_pl.testing import seeded_input, synthetic_state_dict

CASES = [
    # (case name, official module, official constructor, our variant, input size)
    ('v1_small_224', 'v1', 'spanet_small', 'spanet_small', 224),
    ('v2_s18_pure_224', 'v2', 'spanetv2_s18_pure', 'spanetv2_s18_pure', 224),
    ('v2_s18_pure_288', 'v2', 'spanetv2_s18_pure', 'spanetv2_s18_pure', 288),
    ('v2_s18_hybrid_224', 'v2', 'spanetv2_s18_hybrid', 'spanetv2_s18_hybrid', 224),
    ('v2_s18_hybrid_288', 'v2', 'spanetv2_s18_hybrid', 'spanetv2_s18_hybrid', 288),
    ('ver4_s18_pure_224', 'v2_ver4', 'spanetv2_s18_pure', 'spanetv2_s18_pure', 224),
    ('ver4_s18_pure_288', 'v2_ver4', 'spanetv2_s18_pure', 'spanetv2_s18_pure', 288),
    ('ver4_s18_hybrid_288', 'v2_ver4', 'spanetv2_s18_hybrid', 'spanetv2_s18_hybrid', 288),
]
SEED = 0


def _import(path: Path, name: str):
    # Old timm import paths used by the official files, and no second registration of their model names.
    helpers = types.ModuleType('timm.models.layers.helpers')
    helpers.to_2tuple = timm.layers.to_2tuple
    sys.modules['timm.models.layers.helpers'] = helpers
    timm.models.registry.register_model = lambda fn: fn
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--v1', type=Path, required=True, help='clone of DoranLyong/SPANet-official')
    parser.add_argument('--v2', type=Path, required=True, help='clone of DoranLyong/SPANetV2-official')
    parser.add_argument('--out', type=Path, default=Path('tests/fixtures/official_reference.pt'))
    args = parser.parse_args()
    modules = {
        'v1': _import(args.v1 / 'image_classification/spanet.py', 'official_spanet'),
        'v2': _import(args.v2 / 'image_classification/models/spanetv2.py', 'official_spanetv2'),
        'v2_ver4': _import(args.v2 / 'image_classification/models/spanetv2_ver4.py', 'official_spanetv2_ver4'),
    }
    torch.set_grad_enabled(False)
    reference = {}
    for case, layout, ctor, variant, size in CASES:
        with contextlib.redirect_stdout(io.StringIO()):  # the official v1 prints its λ list
            model = getattr(modules[layout], ctor)().eval()
        own = model.state_dict()
        shapes = [(k, tuple(v.shape)) for k, v in own.items()]
        weights = synthetic_state_dict(shapes, SEED)
        for key in own:
            if key.endswith('.filter') and layout == 'v1':
                weights[key] = own[key]  # v1's fixed masks are part of the model, not of the weights
        model.load_state_dict(weights)
        logits = model(seeded_input(2, (size, size), SEED))
        reference[case] = dict(layout=layout, variant=variant, size=size, seed=SEED, shapes=shapes, logits=logits)
        print(f'{case}: logits {tuple(logits.shape)}, |logits| mean {logits.abs().mean():.3f}')
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference, args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
