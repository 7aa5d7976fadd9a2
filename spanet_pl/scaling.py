"""Time and peak memory against image size and batch, for ``python -m spanet_pl.benchmark scaling``.

For every model, size, batch and mode: the median seconds per call (the models of one configuration interleaved, as
``speed`` times them), the peak memory of one call and the spectral filters' share of the op time in one more call
under ``torch.profiler``; for every model, batch and mode, the exponent a of a least-squares fit time ~ pixels^a.

Configurations run in order of batch x pixels. Before each one, a model's peak memory is predicted, linear in
batch x pixels, from the largest configuration of that model and mode measured so far (the first from one call at
batch 1 and the smallest size), and the configuration is skipped when the prediction is over the memory limit, so
that a large configuration is reported as skipped instead of the process being killed for lack of memory.
"""
import argparse
import gc
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Literal, Optional, Sequence, get_args

import numpy as np
import torch
from tqdm import tqdm

from .errors import UserInputError, check_choice
from .models.dft import DFT_EVENTS
from .speed_benchmark import check_models, create_model, make_step
from .timing import Dtype, add_device_arguments, peak_memory_mb, sync, time_steps

__all__ = ['DEFAULT_SCALING_VARIANTS', 'CSV_COLUMNS', 'fit_exponent', 'fit_growth', 'spectral_share',
           'predict_memory_mb', 'memory_limit_gb', 'check_scaling', 'measure_scaling', 'plot_scaling',
           'add_scaling_arguments']

DEFAULT_SCALING_VARIANTS = ('spanet_small', 'spanetv2_s18_pure')
Mode = Literal['inference', 'train']
FFT_OPS = 'aten::_fft'  # the FFT kernels' ops: _fft_r2c, _fft_c2r, _fft_c2c (forward and backward)
MIN_SIZE = 32  # the backbones downsample 32x
MEMORY_FRACTION = 0.8
# CSV header -> row key: one line per model x size x batch x mode; the fitted exponent repeats on every line of its
# model x batch x mode
CSV_COLUMNS = {'model': 'model', 'mode': 'mode', 'batch': 'batch', 'size': 'size', 'pixels': 'pixels',
               's/call': 'seconds', 'img/s': 'img_s', 'ms/image': 'ms_image', 'peak memory MB': 'peak_memory_mb',
               'predicted memory MB': 'predicted_memory_mb', 'spectral share': 'spectral_share',
               'time exponent a': 'exponent', 'note': 'note'}


def fit_exponent(pixels: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope a of log(seconds) against log(pixels), i.e. seconds ~ pixels^a.

    Raises:
        ValueError: fewer than two distinct pixel counts, lengths that differ, or a time that is not positive.
    """
    if len(pixels) != len(seconds) or len(set(pixels)) < 2 or min(seconds) <= 0:
        raise ValueError(f'need positive times at two or more pixel counts, got {list(pixels)}, {list(seconds)}')
    return float(np.polyfit(np.log(pixels), np.log(seconds), 1)[0])


def fit_growth(rows: Sequence[dict]) -> List[dict]:
    """The time exponent of every model x mode x batch of ``rows`` (in order of first appearance), fitted over its
    measured sizes: dicts of model, mode, batch, sizes and exponent (None with fewer than two measured sizes)."""
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault((row['model'], row['mode'], row['batch']), []).append(row)
    fits = []
    for (model, mode, batch), group in groups.items():
        measured = [r for r in group if r['seconds']]
        sizes = [r['size'] for r in measured]
        exponent = (fit_exponent([r['pixels'] for r in measured], [r['seconds'] for r in measured])
                    if len(set(sizes)) > 1 else None)
        fits.append(dict(model=model, mode=mode, batch=batch, sizes=sizes, exponent=exponent))
    return fits


def spectral_share(step: Callable, device: torch.device) -> float:
    """Share of the op time spent in the spectral filters, in one call of ``step`` under ``torch.profiler``: the self
    time of the FFT ops (names starting ``aten::_fft``) plus the total time of the DFT-matrix filter's forward scope
    and backward node (``dft.py``, the CPU form for maps up to ``DFT_MAX_SIDE``), over the self time of all ops. CPU
    time on the CPU; on CUDA (FFTs only there), the time of the kernels on the device."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    # Kineto logs two lines per profile at its highest level (and, on a machine without a GPU, an error about it);
    # it reads the level when it starts, which is the first profile of the process
    os.environ.setdefault('KINETO_LOG_LEVEL', '6')
    cuda = device.type == 'cuda'
    sync(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step()
        sync(device)
    events = prof.key_averages()
    if cuda:  # a CPU op's self device time is its kernels' time; the kernels' own events add up to the total
        total = sum(e.self_device_time_total for e in events
                    if e.device_type != DeviceType.CPU and not e.is_user_annotation)
        spectral = sum(e.self_device_time_total for e in events if e.key.startswith(FFT_OPS))
    else:
        total = sum(e.self_cpu_time_total for e in events)
        spectral = (sum(e.self_cpu_time_total for e in events if e.key.startswith(FFT_OPS))
                    + sum(e.cpu_time_total for e in events if e.key in DFT_EVENTS))
    return spectral / total if total > 0 else 0.0


def predict_memory_mb(measured: Dict[int, float], load: int) -> Optional[float]:
    """Peak memory (MB) of a call on ``load`` = batch x pixels, linear in the load from the largest measured load
    (``measured``: load -> peak MB): an upper bound wherever the peak is a fixed part plus a part proportional to the
    load. None when nothing is measured."""
    if not measured:
        return None
    reference = max(measured)
    return measured[reference] * load / reference


def memory_limit_gb(device: torch.device) -> Optional[float]:
    """80% of the memory there is to use, in GB (GiB): the GPU's free memory, or the RAM the kernel reports as
    available (``MemAvailable``); None where that is unknown."""
    if device.type == 'cuda':
        return MEMORY_FRACTION * torch.cuda.mem_get_info(device)[0] / 2 ** 30
    try:
        with open('/proc/meminfo') as f:
            available_kb = next(int(line.split()[1]) for line in f if line.startswith('MemAvailable:'))
    except (OSError, StopIteration):
        return None
    return MEMORY_FRACTION * available_kb / 2 ** 20


def check_scaling(variants: Optional[Sequence[str]], sizes: Sequence[int], batches: Sequence[int],
                  modes: Sequence[str], device: str, dtype: str, warmup: int, iters: int,
                  max_memory_gb: Optional[float]) -> List[str]:
    """The model names, after checking every setting (a ``UserInputError`` / ``ValueError`` naming the bad one)."""
    check_choice(dtype, Dtype, 'dtype')
    for mode in modes:
        check_choice(mode, Mode, 'mode')
    if not sizes or not batches or not modes:
        raise UserInputError('need at least one size, one batch and one mode')
    if min(sizes) < MIN_SIZE:
        raise UserInputError(f'image sizes must be >= {MIN_SIZE} (the backbones downsample 32x), got {min(sizes)}')
    if min(batches) < 1 or iters < 1 or warmup < 0:
        raise UserInputError(f'need batch >= 1, iters >= 1 and warmup >= 0, got {min(batches)}, {iters}, {warmup}')
    if max_memory_gb is not None and max_memory_gb <= 0:
        raise UserInputError(f'--max-memory-gb must be positive, got {max_memory_gb}')
    if torch.device(device).type == 'cuda' and not torch.cuda.is_available():
        raise UserInputError('device cuda given but CUDA is not available')
    return check_models(variants or DEFAULT_SCALING_VARIANTS)


def measure_scaling(
        variants: Optional[Sequence[str]] = None,
        sizes: Sequence[int] = (224, 384, 512, 1024),
        batches: Sequence[int] = (1, 8, 32),
        modes: Sequence[Mode] = ('inference',),
        device: str = 'cpu',
        dtype: Dtype = 'float32',
        channels_last: bool = False,
        warmup: int = 1,
        iters: int = 3,
        max_memory_gb: Optional[float] = None,
        progress: bool = True,
) -> List[dict]:
    """Time, peak memory and spectral share of every model at every size, batch and mode, with the time exponents.

    Args:
        variants: our variant names and / or timm model names (default: spanet_small, spanetv2_s18_pure).
        sizes: square input sizes (>= 32).
        batches: images per call.
        modes: 'inference' (forward without grad) and / or 'train' (forward + cross-entropy backward + SGD step).
        device: 'cpu' or 'cuda'.
        dtype: 'float32', or 'bfloat16' (torch.autocast).
        channels_last: run models and inputs in channels-last memory format.
        warmup: untimed calls per model and configuration.
        iters: timed calls, interleaved between the models; the median is reported.
        max_memory_gb: skip a configuration whose predicted peak memory is above this (default ``memory_limit_gb``).
        progress: show a tqdm bar over the configurations (stderr).
    Returns:
        One dict per model x mode x batch x size (in that order): model, mode, batch, size, pixels, seconds (median
        per call), img_s, ms_image, peak_memory_mb (``spanet_pl.timing.peak_memory_mb``), predicted_memory_mb,
        spectral_share (0..1), exponent (``fit_growth``) and note (why a configuration was skipped); a skipped
        configuration has None for what was not measured.
    """
    names = check_scaling(variants, sizes, batches, modes, device, dtype, warmup, iters, max_memory_gb)
    modes, sizes, batches = list(dict.fromkeys(modes)), sorted(set(sizes)), sorted(set(batches))
    dev = torch.device(device)
    limit_gb = max_memory_gb if max_memory_gb is not None else memory_limit_gb(dev)
    amp = dtype == 'bfloat16'
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    models = {name: create_model(name).to(dev).to(memory_format=memory_format) for name in names}

    def step_of(name: str, x: torch.Tensor, train: bool) -> Callable:
        model = models[name].train(train)
        return make_step(model, x, train, list(model.parameters()), amp, getattr(model, 'num_classes', 1000) or 1000)

    measured = {(name, mode): {} for name in names for mode in modes}  # batch x pixels -> peak MB
    for mode in modes:  # the first prediction's reference: one call at batch 1 and the smallest size
        x = torch.randn(1, 3, sizes[0], sizes[0], device=dev).contiguous(memory_format=memory_format)
        for name in names:
            step = step_of(name, x, mode == 'train')
            step()
            peak = peak_memory_mb(step, dev)
            if peak is not None and peak > 0:
                measured[name, mode][sizes[0] ** 2] = peak
    x = step = None
    configs = sorted(((m, s, b) for m in modes for s in sizes for b in batches),
                     key=lambda c: (modes.index(c[0]), c[2] * c[1] ** 2, c[2]))
    rows = []
    bar = tqdm(configs, desc='scaling', disable=not progress, file=sys.stderr)
    for mode, size, batch in bar:
        bar.set_postfix_str(f'{mode} {size}x{size} batch {batch}')
        load, x, entries = batch * size ** 2, None, []
        for name in names:
            predicted = predict_memory_mb(measured[name, mode], load)
            row = dict(model=name, mode=mode, batch=batch, size=size, pixels=size ** 2, seconds=None, img_s=None,
                       ms_image=None, peak_memory_mb=None, predicted_memory_mb=predicted, spectral_share=None,
                       exponent=None, note=None)
            rows.append(row)
            if limit_gb is not None and predicted is not None and predicted > limit_gb * 1024:
                row['note'] = f'skipped: predicted {predicted / 1024:.3g} GB > limit {limit_gb:.3g} GB'
                continue
            if x is None:
                x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=memory_format)
            entries.append((row, step_of(name, x, mode == 'train')))
        for (row, step), seconds in zip(entries, time_steps([e[1] for e in entries], warmup, iters, dev)):
            peak = peak_memory_mb(step, dev)
            row.update(seconds=seconds, img_s=batch / seconds, ms_image=seconds * 1e3 / batch, peak_memory_mb=peak,
                       spectral_share=spectral_share(step, dev))
            if peak is not None and peak > 0:
                measured[row['model'], mode][load] = peak
        x = entries = step = None  # the input and the steps' optimizers go before the next configuration's
        gc.collect()
    bar.close()
    rows.sort(key=lambda r: (names.index(r['model']), modes.index(r['mode']), r['batch'], r['size']))
    exponents = {(f['model'], f['mode'], f['batch']): f['exponent'] for f in fit_growth(rows)}
    for row in rows:
        row['exponent'] = exponents[row['model'], row['mode'], row['batch']]
    models.clear()
    gc.collect()
    if dev.type == 'cuda':
        torch.cuda.empty_cache()
    return rows


def plot_scaling(rows: Sequence[dict], path: Path, title: str = '') -> Path:
    """Log-log time per call and peak memory against pixels, one line per model x mode x batch (PNG)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    fig = Figure(figsize=(12, 4.6), dpi=100, layout='constrained')
    time_ax, memory_ax = fig.subplots(1, 2)
    models = list(dict.fromkeys(r['model'] for r in rows))
    batches = sorted({r['batch'] for r in rows})
    several_modes = len({r['mode'] for r in rows}) > 1
    for fit in fit_growth(rows):
        group = [r for r in rows if (r['model'], r['mode'], r['batch']) == (fit['model'], fit['mode'], fit['batch'])
                 and r['seconds']]
        if not group:
            continue
        style = dict(color=colormaps['tab10'](models.index(fit['model']) % 10), marker='os^Dv'[batches.index(
            fit['batch']) % 5], ls='--' if fit['mode'] == 'train' else '-', lw=1.3, ms=4)
        label = f'{fit["model"]}{" " + fit["mode"] if several_modes else ""}, batch {fit["batch"]}'
        exponent = '' if fit['exponent'] is None else f' (a = {fit["exponent"]:.2f})'
        time_ax.plot([r['pixels'] for r in group], [r['seconds'] * 1e3 for r in group], label=label + exponent,
                     **style)
        memory = [(r['pixels'], r['peak_memory_mb']) for r in group if r['peak_memory_mb'] and r['peak_memory_mb'] > 0]
        if memory:
            memory_ax.plot(*zip(*memory), label=label, **style)
    sizes = sorted({r['size'] for r in rows})
    for ax, ylabel in ((time_ax, 'ms per call (median)'), (memory_ax, 'peak memory of one call (MB)')):
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xticks([s * s for s in sizes], [f'{s}²' for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel('pixels per image')
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which='both')
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.savefig(path)
    return Path(path)


def add_scaling_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``scaling`` subcommand's options."""
    parser.add_argument('--variants', nargs='+', metavar='NAME',
                        help='our variants and / or any timm model names, timed interleaved (default: '
                             f'{" ".join(DEFAULT_SCALING_VARIANTS)})')
    parser.add_argument('--sizes', nargs='+', type=int, default=[224, 384, 512, 1024], metavar='N',
                        help=f'square input sizes, >= {MIN_SIZE} (default: 224 384 512 1024)')
    parser.add_argument('--batch', dest='batches', nargs='+', type=int, default=[1, 8, 32], metavar='B',
                        help='images per call (default: 1 8 32)')
    parser.add_argument('--modes', nargs='+', choices=get_args(Mode), default=['inference'],
                        help='inference (no grad) and / or train (forward + cross-entropy backward + SGD step); '
                             'default inference')
    add_device_arguments(parser)
    parser.add_argument('--channels-last', action='store_true', help='channels-last models and inputs')
    parser.add_argument('--warmup', type=int, default=1, help='untimed calls per model and configuration (default: 1)')
    parser.add_argument('--iters', type=int, default=3, help='timed calls; the median is reported (default: 3)')
    parser.add_argument('--max-memory-gb', type=float, metavar='GB',
                        help='skip a configuration whose predicted peak memory (linear in batch x pixels from the '
                             'largest one of the model and mode measured before it) is above this (default: 80%% of '
                             "the available RAM, or of the GPU's free memory)")
    parser.add_argument('--csv', type=Path, metavar='FILE',
                        help='also write one line per model x size x batch x mode: ' + ', '.join(CSV_COLUMNS) +
                             ' (the time exponent a of the model x batch x mode repeated on each of its lines)')
    parser.add_argument('--plot', type=Path, metavar='FILE.png',
                        help='also draw time and peak memory against pixels, log-log, one line per model x batch')
