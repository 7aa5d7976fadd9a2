"""Record the official SPANet/SPANetV2 code's logits for synthetic weights (tests/fixtures/official_reference.pt).

The official code is imported from local clones at run time through the harness in ``spanet_pl.testing`` and never
copied into this repository; what is stored is its key names, shapes and outputs. The test-suite rebuilds the same
weights (``synthetic_state_dict``), converts them with ``load_official_checkpoint`` and compares logits.

    python tools/make_official_reference.py --v1 PATH/SPANet-official --v2 PATH/SPANetV2-official
"""
import argparse
from pathlib import Path

import torch

from spanet_pl.testing import build_official, official_weights, seeded_input

CASES = [
    # (case name, official layout, official constructor = our variant, input size)
    ('v1_small_224', 'v1', 'spanet_small', 224),
    ('v2_s18_pure_224', 'v2', 'spanetv2_s18_pure', 224),
    ('v2_s18_pure_288', 'v2', 'spanetv2_s18_pure', 288),
    ('v2_s18_hybrid_224', 'v2', 'spanetv2_s18_hybrid', 224),
    ('v2_s18_hybrid_288', 'v2', 'spanetv2_s18_hybrid', 288),
    ('ver4_s18_pure_224', 'v2_ver4', 'spanetv2_s18_pure', 224),
    ('ver4_s18_pure_288', 'v2_ver4', 'spanetv2_s18_pure', 288),
    ('ver4_s18_hybrid_288', 'v2_ver4', 'spanetv2_s18_hybrid', 288),
]
SEED = 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--v1', type=Path, required=True, help='clone of DoranLyong/SPANet-official')
    parser.add_argument('--v2', type=Path, required=True, help='clone of DoranLyong/SPANetV2-official')
    parser.add_argument('--out', type=Path, default=Path('tests/fixtures/official_reference.pt'))
    args = parser.parse_args()
    roots = {'v1': args.v1, 'v2': args.v2, 'v2_ver4': args.v2}
    torch.set_grad_enabled(False)
    reference = {}
    for case, layout, variant, size in CASES:
        model = build_official(layout, variant, roots[layout])
        shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        model.load_state_dict(official_weights(model, layout, SEED))
        logits = model(seeded_input(2, (size, size), SEED))
        reference[case] = dict(layout=layout, variant=variant, size=size, seed=SEED, shapes=shapes, logits=logits)
        print(f'{case}: logits {tuple(logits.shape)}, |logits| mean {logits.abs().mean():.3f}')
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference, args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
