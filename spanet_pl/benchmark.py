"""Parameters, MACs and throughput of the SPANet family, optionally side by side with the official code.

    python -m spanet_pl.benchmark table [--variants NAME ...] [--size 224] [--markdown]
    python -m spanet_pl.benchmark speed [--variants NAME|TIMM_NAME ...] [--sizes 224] [--batch 8] [--device cpu]
        [--official-v1 PATH/SPANet-official] [--official-v2 PATH/SPANetV2-official] [--modes inference train]
        [--latency] [--compile [on|both]] [--compile-mode MODE] [--baseline MODEL] [--csv out.csv] [--json out.json]
    python -m spanet_pl.benchmark seg [--variant spanetv2_s18_pure] [--heads fpn upernet] [--size 512] [--train]
    python -m spanet_pl.benchmark scaling [--variants NAME|TIMM_NAME ...] [--sizes 224 384 512 1024] [--batch 1 8 32]
        [--modes inference train] [--max-memory-gb GB] [--csv out.csv] [--plot out.png]

``table`` counts trainable parameters and MACs (``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2, batch 1, eval)
and, separately, the FFTs of the spectral filters, which FlopCounterMode does not see (``spanet_pl.flops``).

``speed`` times inference (or, with ``--modes train``, forward + backward + SGD step; ``--latency``: batch 1) of our
variants and of any timm model (``caformer_s18``, ``convnext_tiny``, ...), every model's iterations interleaved so that
all see the same machine load, and reports images/s and ms/iter (medians), the peak memory of one call and the ratio
to ``--baseline`` with its quartiles over the rounds (each round's pair timed back to back, so drifting load cancels). Given local clones of DoranLyong/SPANet-official and/or DoranLyong/SPANetV2-official, it
imports their model files at run time (nothing of them is copied into this repository), builds the same variant,
loads one set of synthetic weights into both models (ours through ``load_official_checkpoint``; the harness is
``spanet_pl.testing``), prints the largest logit difference and times the official model beside ours.
``--compile both`` times every model eager and compiled side by side.

``seg`` times a backbone with the segmentation recipes' decode heads (``spanet_pl.seg_benchmark``), interleaved the
same way, and reports the peak memory.

``scaling`` times models over image sizes and batches (``spanet_pl.scaling``): seconds per call, peak memory and the
FFT's share of the op time (torch.profiler) per configuration, and the exponent a of time ~ pixels^a; a configuration
whose memory, predicted from the smaller ones, would pass ``--max-memory-gb`` is skipped.
"""
import argparse
import csv
import gc
import json
import os
import platform
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, get_args

import torch
from tqdm import tqdm

from .errors import check_choice
from .flops import count_flops
from .models import VARIANTS, create_backbone
from .scaling import (CSV_COLUMNS as SCALING_CSV_COLUMNS, add_scaling_arguments, check_scaling, fit_growth,
                      measure_scaling, memory_limit_gb, plot_scaling)
from .seg_benchmark import add_segmentation_arguments, measure_segmentation, segmentation_cells
from .speed_benchmark import DEFAULT_SPEED_VARIANTS, Compile, check_models, measure_speed
from .testing import OFFICIAL_FILES
from .timing import add_device_arguments

__all__ = ['count_flops', 'measure_table', 'measure_speed', 'measure_segmentation_speed', 'measure_scaling',
           'format_table', 'main']

MACS_NOTE = (
    'Parameters: trainable, 1000-class head. MACs: torch.utils.flop_counter.FlopCounterMode FLOPs / 2 at batch 1, '
    '{size}x{size}, eval; it counts convolutions, matmuls and attention only, so FFTs and elementwise ops (norms, '
    'activations, spectral masks and SRFs, residuals) are not included.')
FFT_NOTE = (
    'FFT: analytic, per transform the model runs: 2.5 N log2 N FLOPs per real 2-D (i)rfft of N = H*W points '
    '(5 N log2 N per complex one), times the channels transformed.')
SCALING_NOTE = (
    's/call: median seconds of one call (the models of a configuration interleaved). peak MB: as speed measures it. '
    'predicted MB: linear in batch x pixels from the largest configuration of the model and mode measured before '
    '(the first from batch 1 at the smallest size). spectral %: time in the spectral filters (self time of the '
    'aten::_fft* ops plus the total time of the DFT-matrix filter, the CPU form for maps up to 64 px) over the self '
    'time of all ops in one more call under torch.profiler (CPU time; CUDA: kernel time). a: least-squares slope of '
    'log(s/call) against log(pixels) over the measured sizes.')


def _check_variants(names: Optional[Sequence[str]], default: Sequence[str]) -> List[str]:
    names = list(names) if names else list(default)
    for name in names:
        check_choice(name, VARIANTS, 'SPANet variant')
    return names


def measure_table(variants: Optional[Sequence[str]] = None, size: int = 224, progress: bool = True) -> List[dict]:
    """Trainable parameters, MACs and analytic FFT FLOPs of each variant, built one at a time.

    Args:
        variants: variant names; all registered variants when None.
        size: square input size.
        progress: show a tqdm bar (stderr).
    Returns:
        One dict per variant: variant, size, params, macs (FlopCounterMode FLOPs // 2), fft_flops.
    """
    rows = []
    x = torch.randn(1, 3, size, size)
    for name in tqdm(_check_variants(variants, VARIANTS), desc='table', disable=not progress, file=sys.stderr):
        model = create_backbone(name)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        flops = count_flops(model, x)
        rows.append(dict(variant=name, size=size, params=params, macs=flops['dense'] // 2, fft_flops=flops['fft']))
        del model
        gc.collect()
    return rows


def measure_segmentation_speed(**kwargs) -> List[dict]:
    """Segmentation images/s and peak memory per decode head: ``spanet_pl.seg_benchmark.measure_segmentation``."""
    return measure_segmentation(**kwargs)


def _segmentation(parser: argparse.ArgumentParser, args: argparse.Namespace):
    try:
        _check_variants([args.variant], VARIANTS)
        if args.device == 'cuda' and not torch.cuda.is_available():
            raise ValueError('--device cuda given but CUDA is not available')
    except ValueError as e:
        sys.exit(f'{parser.prog}: error: {e}')
    settings = {k: v for k, v in vars(args).items() if k not in ('command', 'json')}
    load_before = os.getloadavg()[0]
    rows = measure_segmentation_speed(**settings)
    environment = _environment(args.device, load_before)
    title, headers, cells = segmentation_cells(rows, settings, environment)
    print(title + '\n' + format_table(cells, headers, left=(0, 1, 3)))
    _write_json(args.json, dict(command='seg', settings=settings, environment=environment, results=rows))


def _scaling(parser: argparse.ArgumentParser, args: argparse.Namespace):
    settings = {k: v for k, v in vars(args).items() if k not in ('command', 'csv', 'plot')}
    try:
        check_scaling(args.variants, args.sizes, args.batches, args.modes, args.device, args.dtype, args.warmup,
                      args.iters, args.max_memory_gb)
    except ValueError as e:
        sys.exit(f'{parser.prog}: error: {e}')
    if settings['max_memory_gb'] is None:
        settings['max_memory_gb'] = memory_limit_gb(torch.device(args.device))
    load_before = os.getloadavg()[0]
    rows = measure_scaling(**settings)
    title = _print_scaling(rows, settings, _environment(args.device, load_before))
    if args.csv is not None:
        write_csv(args.csv, rows, SCALING_CSV_COLUMNS)
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        print(f'wrote {plot_scaling(rows, args.plot, title)}', file=sys.stderr)


def _print_scaling(rows: List[dict], settings: dict, environment: dict) -> str:
    """Print the measurements and the fitted exponents; return the settings line (the plot's title)."""
    title = (f'scaling: seconds per call, median of {settings["iters"]} interleaved calls after {settings["warmup"]} '
             f'warm-up; {settings["dtype"]}, {environment["device"]} ({settings["device"]}, {environment["threads"]} '
             f'threads), torch {environment["torch"]}, channels_last={settings["channels_last"]}, memory limit '
             + _fmt(settings['max_memory_gb'], '.3g', ' GB'))
    print(f'# {title}\n# 1-min load average before: {{}} (after, this run included: {{}}) on {{}} cores'.format(
        *environment['load_avg_1min'], environment['cpu_count']))
    cells = [[r['model'], r['mode'], str(r['batch']), str(r['size']), _fmt(r['seconds'], '.4f'),
              _fmt(r['img_s'], '.2f'), _fmt(r['ms_image'], '.1f'), _fmt(r['peak_memory_mb'], '.0f'),
              _fmt(r['predicted_memory_mb'], '.0f'),
              _fmt(None if r['spectral_share'] is None else 100 * r['spectral_share'], '.1f'), r['note'] or '']
             for r in rows]
    print(format_table(cells, ['model', 'mode', 'batch', 'size', 's/call', 'img/s', 'ms/image', 'peak MB',
                               'predicted MB', 'spectral %', 'note'], left=(0, 1, 10)))
    fits = [[f['model'], f['mode'], str(f['batch']), ' '.join(map(str, f['sizes'])), _fmt(f['exponent'], '.2f')]
            for f in fit_growth(rows)]
    print('\n# growth: time per call ~ pixels^a, fitted over the measured sizes')
    print(format_table(fits, ['model', 'mode', 'batch', 'sizes', 'a'], left=(0, 1, 3)))
    print('\n' + SCALING_NOTE)
    return title


def format_table(rows: List[List[str]], headers: Sequence[str], markdown: bool = False,
                 left: Sequence[int] = (0,)) -> str:
    """Rows of cells as an aligned text table (columns ``left`` left-aligned, the rest right) or a GitHub table."""
    if markdown:
        lines = ['| ' + ' | '.join(headers) + ' |', '|' + '|'.join([':---'] + ['---:'] * (len(headers) - 1)) + '|']
        return '\n'.join(lines + ['| ' + ' | '.join(row) + ' |' for row in rows])
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]

    def line(cells):
        padded = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return '  '.join(padded).rstrip()
    return '\n'.join([line(headers), line(['-' * w for w in widths])] + [line(row) for row in rows])


def _print_table(rows: List[dict], size: int, markdown: bool):
    if markdown:
        cells = [[f'`{r["variant"]}`', f'{r["params"] / 1e6:.2f}', f'{r["macs"] / 1e9:.2f}'] for r in rows]
        print(format_table(cells, ['variant', 'params (M)', 'MACs (G)'], markdown=True))
        print('\n' + MACS_NOTE.format(size=size) + ' The FFT cost is listed by `python -m spanet_pl.benchmark table`.')
        return
    cells = [[r['variant'], f'{r["params"] / 1e6:.2f}', f'{r["macs"] / 1e9:.3f}', f'{r["fft_flops"] / 1e9:.3f}']
             for r in rows]
    print(f'# trainable parameters and MACs at {size}x{size}')
    print(format_table(cells, ['variant', 'params (M)', 'MACs (G)', 'FFT (GFLOPs)']))
    print('\n' + MACS_NOTE.format(size=size) + '\n' + FFT_NOTE)


def _fmt(value: Optional[float], spec: str, suffix: str = '') -> str:
    return 'n/a' if value is None else f'{value:{spec}}{suffix}'


def _environment(device: str, load_before: float) -> dict:
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else (platform.processor() or platform.machine())
    # Other processes on the CPU cores slow every timing (and OpenMP far more than their share): worth a record.
    return dict(torch=torch.__version__, device=name, threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                load_avg_1min=[round(load_before, 2), round(os.getloadavg()[0], 2)])


def _isolated(settings: dict) -> bool:
    return settings['device'] == 'cpu' if settings.get('isolate') is None else settings['isolate']


def _print_speed(rows: List[dict], settings: dict, environment: dict):
    print(f'# images/s (median of {settings["iters"]} interleaved iterations after {settings["warmup"]} warm-up): '
          f'batch {settings["batch"]}, {settings["dtype"]}, {environment["device"]} ({settings["device"]}, '
          f'{environment["threads"]} threads), torch {environment["torch"]}, channels_last={settings["channels_last"]}, '
          f'compile={settings["compile"]}' + (f' ({settings["compile_mode"]})' if settings["compile_mode"] else '')
          + (', one process per model' if _isolated(settings) else ', all models in one process'))
    print('# 1-min load average before: {} (after, this run included: {}) on {} cores'.format(
        *environment['load_avg_1min'], environment['cpu_count']))
    cells = [[r['model'], str(r['size']), r['mode'], str(r['batch']), _fmt(r['img_s'], '.2f'), _fmt(r['ms_iter'], '.1f'),
              _fmt(r['peak_memory_mb'], '.0f'), _fmt(r['ratio'], '.2f', 'x'), _quartiles(r),
              _fmt(r['max_abs_logit_diff'], '.2e'), r['note'] or ''] for r in rows]
    print(format_table(cells, ['model', 'size', 'mode', 'batch', 'img/s', 'ms/iter', 'peak MB',
                               f'vs {rows[0]["baseline"]}' if rows else 'ratio', 'rounds q1-q3', 'max|dlogit|',
                               'note'], left=(0, 2, 10)))
    print('\npeak MB: memory in use at the peak of one call beyond what was in use before it (CUDA: the allocator; '
          'CPU: resident set, sampled every ms). latency: inference at batch 1. rounds q1-q3: quartiles over the '
          'rounds of the ratio of each round\'s back-to-back calls (load drifting between rounds cancels).')
    if any(r['max_abs_logit_diff'] is not None for r in rows):
        print('max|dlogit|: largest |logit difference| ours vs official; same synthetic weights, batch 2, fp32.')


CSV_COLUMNS = ('model', 'size', 'mode', 'batch', 'img/s', 'ms/iter', 'peak memory MB', 'ratio', 'ratio q1',
               'ratio q3', 'baseline', 'max|dlogit|', 'note')
_SPEED_KEYS = ('model', 'size', 'mode', 'batch', 'img_s', 'ms_iter', 'peak_memory_mb', 'ratio', 'ratio_q1',
               'ratio_q3', 'baseline', 'max_abs_logit_diff', 'note')


def _quartiles(row: dict) -> str:
    if row.get('ratio_q1') is None:
        return '-'
    return f'{row["ratio_q1"]:.2f}-{row["ratio_q3"]:.2f}'


def write_csv(path: Path, rows: List[dict], columns: Optional[Dict[str, str]] = None):
    """One line per row, ``columns`` (header -> key of the row) in order; by default speed's: one line per model x
    size x mode (``CSV_COLUMNS``), where ``ratio`` is img/s over the baseline's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = columns or dict(zip(CSV_COLUMNS, _SPEED_KEYS))
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(['' if row[k] is None else (f'{row[k]:.4g}' if isinstance(row[k], float) else row[k])
                             for k in columns.values()])
    print(f'wrote {path}', file=sys.stderr)


def _write_json(path: Optional[Path], payload: dict):
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + '\n')
        print(f'wrote {path}', file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m spanet_pl.benchmark', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True, metavar='{table,speed,seg,scaling}')

    table = sub.add_parser('table', help='trainable parameters and MACs of every variant',
                           description='Trainable parameters and MACs (FlopCounterMode FLOPs / 2, batch 1, eval) '
                                       'of each variant, plus analytic FFT FLOPs, which FlopCounterMode omits.')
    table.add_argument('--variants', nargs='+', metavar='NAME', help='variants to list (default: all registered)')
    table.add_argument('--size', type=int, default=224, help='square input size (default: 224)')
    table.add_argument('--markdown', action='store_true',
                       help='print a GitHub markdown table (variant, params (M), MACs (G)) for the README')
    table.add_argument('--json', type=Path, metavar='PATH', help='also write the results as JSON')

    speed = sub.add_parser('speed', help='inference / training throughput, optionally against the official code',
                           description='Images/s (median over iterations) of our models and, given local clones, '
                                       'of the official SPANet/SPANetV2 code with identical weights.')
    speed.add_argument('--variants', nargs='+', metavar='NAME',
                       help='our variants and / or any timm model names (caformer_s18, convnext_tiny, ...), timed '
                            f'interleaved (default: {" ".join(DEFAULT_SPEED_VARIANTS)})')
    speed.add_argument('--sizes', nargs='+', type=int, default=[224], metavar='N',
                       help='square input sizes (default: 224); the official v1 is timed at 224 only')
    speed.add_argument('--batch', type=int, default=8, help='images per iteration (default: 8)')
    add_device_arguments(speed)
    speed.add_argument('--warmup', type=int, default=3, help='untimed iterations per model and size (default: 3)')
    speed.add_argument('--iters', type=int, default=10, help='timed iterations; the median is reported (default: 10)')
    speed.add_argument('--official-v1', metavar='PATH',
                       help='clone of DoranLyong/SPANet-official (imports image_classification/spanet.py)')
    speed.add_argument('--official-v2', metavar='PATH',
                       help='clone of DoranLyong/SPANetV2-official (imports image_classification/models/spanetv2.py)')
    speed.add_argument('--channels-last', action='store_true', help='channels-last models and inputs')
    speed.add_argument('--compile', nargs='?', const='on', default='off', choices=get_args(Compile),
                       help="torch.compile every model ('--compile' / 'on'), or 'both': each model eager and "
                            'compiled side by side (needs --warmup >= 1)')
    speed.add_argument('--compile-mode', choices=('default', 'reduce-overhead', 'max-autotune',
                                                  'max-autotune-no-cudagraphs'), help="torch.compile's mode")
    speed.add_argument('--train', action='store_true', help='shorthand for --modes train')
    speed.add_argument('--modes', nargs='+', choices=('inference', 'train'),
                       help='inference (no grad) and / or train (forward + cross-entropy backward + SGD step); '
                            'default inference')
    speed.add_argument('--latency', action='store_true', help='also time single images (mode latency, batch 1)')
    speed.add_argument('--baseline', metavar='MODEL',
                       help="the model the ratio column divides by, e.g. 'caformer_s18' or "
                            "'spanet_small (official)' (default: the first)")
    speed.add_argument('--no-memory', dest='memory', action='store_false', help='skip the peak-memory call')
    speed.add_argument('--isolate', action=argparse.BooleanOptionalAction, default=None,
                       help='every model in a worker process of its own, iterations still interleaved, so that no '
                            "model's time depends on another's heap (default: on for the CPU, off for CUDA)")
    speed.add_argument('--csv', type=Path, metavar='FILE',
                       help='also write one line per model x size x mode: ' + ', '.join(CSV_COLUMNS))
    speed.add_argument('--json', type=Path, metavar='PATH', help='also write the results as JSON')
    add_segmentation_arguments(sub.add_parser(
        'seg', help='segmentation images/s and peak memory per decode head (FPN, UperNet) at 512x512',
        description='Images/s (median, heads interleaved) and peak memory of a backbone with the segmentation '
                    "recipes' decode heads, inference or training (spanet_pl.seg_benchmark)."))
    add_scaling_arguments(sub.add_parser(
        'scaling', help='time, peak memory and spectral share against image size and batch, with the growth exponent',
        description='Seconds per call (median, models interleaved), images/s, peak memory and the spectral '
                    "filters' share of the op time (torch.profiler) per model, size, batch and mode, and per model, "
                    'batch and mode the least-squares exponent a of time ~ pixels^a (spanet_pl.scaling). '
                    'Configurations run from the smallest batch x pixels up; one whose peak memory, predicted '
                    'linearly from the largest measured before, is above --max-memory-gb is skipped and noted in the '
                    'table.'))
    return parser


def main(argv: Optional[Sequence[str]] = None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == 'seg':
        return _segmentation(parser, args)
    if args.command == 'scaling':
        return _scaling(parser, args)
    try:  # argument errors as one line, before minutes of model building
        if args.command == 'speed':
            check_models(args.variants)
            for family, root in (('v1', args.official_v1), ('v2', args.official_v2)):
                if root is not None and not (Path(root) / OFFICIAL_FILES[family]).is_file():
                    raise ValueError(f'--official-{family} {root}: {OFFICIAL_FILES[family]} not found in it')
            if args.device == 'cuda' and not torch.cuda.is_available():
                raise ValueError('--device cuda given but CUDA is not available')
            if args.compile != 'off' and args.warmup < 1:
                raise ValueError('--compile needs --warmup >= 1 (the first call compiles)')
        else:
            _check_variants(args.variants, VARIANTS)
    except ValueError as e:
        sys.exit(f'{parser.prog}: error: {e}')
    if args.command == 'table':
        rows = measure_table(args.variants, args.size)
        _print_table(rows, args.size, args.markdown)
        _write_json(args.json, dict(command='table', notes=[MACS_NOTE.format(size=args.size), FFT_NOTE], results=rows))
        return
    settings = dict(
        sizes=args.sizes, batch=args.batch, device=args.device, dtype=args.dtype, warmup=args.warmup, iters=args.iters,
        official_v1=args.official_v1, official_v2=args.official_v2, channels_last=args.channels_last,
        compile=args.compile, compile_mode=args.compile_mode, train=args.train, modes=args.modes,
        latency=args.latency, baseline=args.baseline, memory=args.memory, isolate=args.isolate)
    load_before = os.getloadavg()[0]
    rows = measure_speed(args.variants, **settings)
    environment = _environment(args.device, load_before)
    _print_speed(rows, settings, environment)
    if args.csv is not None:
        write_csv(args.csv, rows)
    _write_json(args.json, dict(command='speed', settings=settings, environment=environment, results=rows))


if __name__ == '__main__':
    main()
