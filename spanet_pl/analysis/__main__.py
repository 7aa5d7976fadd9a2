"""``python -m spanet_pl.analysis {fourier,filters,context,graph,cam} [--model M ...] --out DIR``

Every subcommand writes PNG figures and the CSV numbers behind them into ``--out`` and prints their paths; bad input
ends with one ``spanet_pl.analysis: error:`` line (exit code 2) and writes nothing.
"""
import argparse
import logging
import sys

from ..errors import UserInputError
from .cam import CAM_METHODS
from .data import DATA_SOURCES

_MODEL_HELP = ('a variant name (random init), a run\'s .ckpt (classification or segmentation), an official '
               'checkpoint (FILE or VARIANT=FILE) or a folder of runs (a grid\'s logs/<grid>); repeat to compare')


def _common(parser: argparse.ArgumentParser, default_out: str, needs_model: bool = True) -> None:
    if needs_model:
        parser.add_argument('--model', action='append', required=True, metavar='MODEL', help=_MODEL_HELP)
        parser.add_argument('--label', action='append', metavar='TEXT', help='legend label, one per --model')
        parser.add_argument('--img-size', type=int,
                            help='square input side (default: the run\'s training size if the checkpoint records it, '
                                 'else 224)')
        parser.add_argument('--device', help='cpu, cuda, cuda:1 ... (default: cuda if available)')
    parser.add_argument('--out', default=default_out, help=f'output folder (default {default_out})')
    parser.add_argument('--seed', type=int, default=0, help='torch seed (default 0)')


def _images(parser: argparse.ArgumentParser, count: int) -> None:
    group = parser.add_argument_group('images')
    group.add_argument('--data', choices=DATA_SOURCES,
                       help='validation images of this data set (default: the data the first run was trained on, '
                            'else the embedded digits)')
    group.add_argument('--data-root', help='data root for --data imagenet / ade20k (cache folder for digits/scenes)')
    group.add_argument('--images', nargs='+', metavar='PATH', help='image files or folders instead of --data')
    group.add_argument('--num-images', type=int, default=count, help=f'images to use, evenly spaced (default {count})')
    group.add_argument('--batch-size', type=int, default=16, help='forward batch (default 16)')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m spanet_pl.analysis',
        description='Spectral analysis of SPANet-family models. Every command writes PNG figures and the CSV numbers '
                    'behind them into --out and prints their paths; bad input ends with one error line (exit code 2) '
                    'and writes nothing.',
        epilog='example: python -m spanet_pl.analysis fourier --model logs/quickstart/version_0/checkpoints/last.ckpt '
               '--model spanet_nano')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    fourier = commands.add_parser('fourier', help='relative log amplitude of every block\'s feature maps')
    _common(fourier, 'logs/analysis/fourier')
    _images(fourier, 64)

    filters = commands.add_parser('filters', help='SPANet masks / learned SPANetV2 SRF filters, spectra and '
                                                  'radial profiles')
    _common(filters, 'logs/analysis/filters')

    context = commands.add_parser('context', help='the modulating context of each stage over the input images')
    _common(context, 'logs/analysis/context')
    _images(context, 4)

    graph = commands.add_parser('graph', help='graph-spectral response of k x k windows vs attention')
    _common(graph, 'logs/analysis/graph', needs_model=False)
    graph.add_argument('--size', type=int, default=32, help='tokens per side of the grid (default 32)')
    graph.add_argument('--kernels', type=int, nargs='+', default=[1, 3, 5, 7, 9], help='window sizes (odd)')
    graph.add_argument('--boundary', choices=('periodic', 'open'), default='periodic',
                       help='torus (default; closed form checked) or open grid')

    cam = commands.add_parser('cam', help='class activation maps (grad-cam package) on the last stage')
    _common(cam, 'logs/analysis/cam')
    _images(cam, 4)
    cam.add_argument('--method', choices=CAM_METHODS, default='scorecam', help='CAM method (default scorecam)')
    cam.add_argument('--cam-batch-size', type=int, default=32, help='ScoreCAM/AblationCAM forward batch')
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    from .commands import run
    try:
        paths = run(args)
    except UserInputError as error:
        print(f'spanet_pl.analysis: error: {error}', file=sys.stderr)
        return 2
    for path in paths:
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
