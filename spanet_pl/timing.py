"""Timing and memory of benchmark steps, shared by the classification and segmentation benchmarks: steps timed
interleaved (every model sees the same machine load), and the peak memory of one step (CUDA allocator or CPU
resident set)."""
import argparse
import ctypes
import functools
import gc
import os
import statistics
import threading
import time
from typing import Callable, List, Literal, Optional, Sequence, Tuple, get_args

import torch

__all__ = ['Dtype', 'add_device_arguments', 'sync', 'timed_call', 'interleaved_rounds', 'interleaved_times',
           'time_steps',
           'paired_ratio_quartiles', 'peak_memory_mb']

Dtype = Literal['float32', 'bfloat16']


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--device`` and ``--dtype`` options every benchmark subcommand takes."""
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='default: cuda when available')
    parser.add_argument('--dtype', choices=get_args(Dtype), default='float32',
                        help='bfloat16 runs under torch.autocast (default: float32)')


def sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed_call(step: Callable, device: torch.device) -> float:
    """Seconds of one call of ``step``, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def interleaved_rounds(timers: Sequence[Callable[[], float]], warmup: int, iters: int) -> List[List[float]]:
    """What every timer returns (seconds of one call it times), ``warmup`` untimed calls each first, then ``iters``
    rounds in which every timer runs once, back to back with the others: value i of every timer is from round i.

    Round i starts with timer i mod n and goes on in the given order, so that over n rounds every timer runs in every
    position once (the cyclic order, and so each timer's predecessor within a round, stays the same)."""
    for timer in timers:
        for _ in range(warmup):
            timer()
    times = [[] for _ in timers]
    for i in range(iters):
        for j in range(len(timers)):
            k = (i + j) % len(timers)
            times[k].append(timers[k]())
    return times


def interleaved_times(steps: List[Callable], warmup: int, iters: int, device: torch.device) -> List[List[float]]:
    """Seconds of every timed call of each step in this process (``interleaved_rounds``)."""
    return interleaved_rounds([functools.partial(timed_call, step, device) for step in steps], warmup, iters)


def time_steps(steps: List[Callable], warmup: int, iters: int, device: torch.device) -> List[float]:
    """Median seconds per call of each step, iterations alternating between the steps."""
    return [statistics.median(record) for record in interleaved_times(steps, warmup, iters, device)]


def paired_ratio_quartiles(baseline: Sequence[float], times: Sequence[float]) -> Tuple[float, float]:
    """Lower and upper quartile over rounds of ``baseline[i] / times[i]``: the speed ratio of each round's pair of
    back-to-back calls, so that load drifting between rounds cancels. A quartile range that straddles 1 says the
    two are level within the machine's noise."""
    ratios = [b / t for b, t in zip(baseline, times)]
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method='inclusive')
    return q1, q3


def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _malloc_trim():
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def peak_memory_mb(step: Callable, device: torch.device) -> Optional[float]:
    """Peak memory of one call of ``step`` beyond what was in use before it, in MiB: CUDA, the allocator's
    ``max_memory_allocated``; CPU, the process's resident set sampled every millisecond after glibc's
    ``malloc_trim`` returned freed pages (Linux; None elsewhere)."""
    if device.type == 'cuda':
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    if not os.path.exists('/proc/self/statm'):
        return None
    gc.collect()
    _malloc_trim()  # hand freed heap pages back, so that the step's allocations show in the resident set again
    before = _rss_bytes()
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        step()
    finally:
        done.set()
        sampler.join()
    return (max(peak[0], _rss_bytes()) - before) / 2 ** 20
