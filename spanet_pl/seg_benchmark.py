"""Segmentation speed for ``python -m spanet_pl.benchmark seg``: images/s of a backbone with the recipes' decode heads
(Semantic FPN, UperNet + auxiliary FCN) at the papers' 512x512 crops, inference or training, and the peak memory.

The models are the ``SegmentationModule`` the recipes train (``num_classes`` 150, the heads' recipe widths), so the
numbers include the final upsampling to the input size and, in training, the auxiliary head and loss. Timing is the
benchmark's interleaved loop (``spanet_pl.timing``), so every head sees the same machine load.
"""
import argparse
import functools
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .errors import check_choice
from .timing import add_device_arguments, sync, time_steps

if TYPE_CHECKING:
    from .tasks.segmentation import SegmentationModule

__all__ = ['SEG_HEADS', 'measure_segmentation', 'segmentation_cells', 'add_segmentation_arguments']

# the recipes' heads (cli_configs/segmentation/{fpn,upernet}_spanetv2_*.yaml)
SEG_HEADS: Dict[str, Dict] = {
    'fpn': {'head': 'fpn', 'head_kwargs': {'fpn_channels': 256, 'head_channels': 128}},
    'upernet': {'head': 'upernet', 'head_kwargs': {'channels': 320}, 'aux_weight': 0.4},
}
NUM_CLASSES = 150


def _step(model: 'SegmentationModule', x: torch.Tensor, train: bool, amp: bool) -> Callable:
    """Inference: the task's evaluation path (``inference``: whole image, logits at the input size). Training:
    forward + decode (+ 0.4 auxiliary) loss + backward + AdamW step, as ``training_step`` runs them."""
    autocast = functools.partial(torch.autocast, x.device.type, dtype=torch.bfloat16, enabled=amp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None
    masks = torch.randint(0, NUM_CLASSES, (x.shape[0], *x.shape[-2:]), device=x.device)

    def step():
        if optimizer is None:
            with torch.inference_mode(), autocast():
                return model.inference(x)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss, _ = model.training_loss(x, masks)
        loss.backward()
        optimizer.step()
    return step


def _peak_memory(step: Callable, device: torch.device, before: int) -> Optional[int]:
    """Bytes allocated at the peak of one ``step`` beyond ``before`` (CUDA); None on the CPU."""
    if device.type != 'cuda':
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def measure_segmentation(
        variant: str = 'spanetv2_s18_pure',
        heads: Sequence[str] = ('fpn', 'upernet'),
        size: int = 512,
        batch: int = 2,
        device: str = 'cpu',
        dtype: str = 'float32',
        train: bool = False,
        warmup: int = 1,
        iters: int = 5,
) -> List[dict]:
    """Images/s and peak memory of ``variant`` with each head, the heads' iterations interleaved.

    Args:
        variant: backbone name.
        heads: keys of ``SEG_HEADS``.
        size: square input size.
        batch: images per iteration (training needs 2 or more: UperNet's 1x1 pooled BatchNorm).
        device: 'cpu' or 'cuda'.
        dtype: 'float32' or 'bfloat16' (torch.autocast, as the recipes' bf16-mixed).
        train: time training steps instead of inference.
        warmup: untimed iterations per head (at least 1: it also measures the memory).
        iters: timed iterations; the median is reported.
    Returns:
        One dict per head: variant, head, size, mode, batch, device, dtype, params, img_s, peak_mem_mb (CUDA: the
        allocator's peak during one step beyond what was allocated before the model was built; None on the CPU)
        and peak_rss_mb (the process's resident-set high-water mark so far: per head only when one head is timed).
    """
    for head in heads:
        check_choice(head, tuple(SEG_HEADS), 'segmentation head')
    if batch < 1 or iters < 1 or warmup < 1 or (train and batch < 2):
        raise ValueError(f'need iters >= 1, warmup >= 1 and batch >= 1 (>= 2 to train), got {iters}, {warmup}, {batch}')
    from .tasks.segmentation import SegmentationModule  # Lightning is imported only when a model is built
    dev = torch.device(device)
    amp = dtype == 'bfloat16'
    x = torch.randn(batch, 3, size, size, device=dev)
    rows, steps = [], []
    for head in heads:
        before = torch.cuda.memory_allocated(dev) if dev.type == 'cuda' else 0
        model = SegmentationModule(variant, num_classes=NUM_CLASSES, num_log_images=0, **SEG_HEADS[head])
        model = model.to(dev).train(train)
        step = _step(model, x, train, amp)
        memory = _peak_memory(step, dev, before)
        rows.append(dict(variant=variant, head=head, size=size, mode='train' if train else 'inference', batch=batch,
                         device=str(dev), dtype=dtype, params=sum(p.numel() for p in model.parameters()),
                         img_s=None, peak_mem_mb=None if memory is None else memory / 2 ** 20))
        steps.append(step)
    for row, seconds in zip(rows, time_steps(steps, warmup, iters, dev)):
        row['img_s'] = batch / seconds
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == 'darwin' else 2 ** 10)
    for row in rows:
        row['peak_rss_mb'] = rss
    return rows


def segmentation_cells(rows: List[dict], settings: dict, environment: dict) -> Tuple[str, List[str], List[List[str]]]:
    """Title line, header and cells of the ``seg`` table."""
    def mb(value: Optional[float]) -> str:
        return 'n/a' if value is None else f'{value:,.0f}'
    title = (f'# segmentation {rows[0]["mode"]} images/s (median of {settings["iters"]} after {settings["warmup"]} '
             f'warm-up, heads interleaved): batch {settings["batch"]}, {settings["size"]}x{settings["size"]}, '
             f'{settings["dtype"]}, {environment["device"]} ({settings["device"]}, {environment["threads"]} threads), '
             f'torch {environment["torch"]}; 1-min load average {environment["load_avg_1min"][0]} before, '
             f'{environment["load_avg_1min"][1]} after, on {environment["cpu_count"]} cores')
    cells = [[r['variant'], r['head'], str(r['size']), r['mode'], f'{r["params"] / 1e6:.2f}', f'{r["img_s"]:.2f}',
              mb(r['peak_mem_mb']), mb(r['peak_rss_mb'])] for r in rows]
    return title, ['variant', 'head', 'size', 'mode', 'params (M)', 'img/s', 'peak CUDA MB', 'peak RSS MB'], cells


def add_segmentation_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``seg`` subcommand's options."""
    parser.add_argument('--variant', default='spanetv2_s18_pure', help='backbone (default: spanetv2_s18_pure)')
    parser.add_argument('--heads', nargs='+', choices=tuple(SEG_HEADS), default=list(SEG_HEADS),
                        help='decode heads, timed interleaved (default: fpn upernet)')
    parser.add_argument('--size', type=int, default=512, help='square input size (default: 512, the recipes\' crop)')
    parser.add_argument('--batch', type=int, default=2, help='images per iteration (default: 2)')
    add_device_arguments(parser)
    parser.add_argument('--warmup', type=int, default=1, help='untimed iterations per head (default: 1)')
    parser.add_argument('--iters', type=int, default=5, help='timed iterations; the median is reported (default: 5)')
    parser.add_argument('--train', action='store_true',
                        help='time a training step (forward, decode + auxiliary loss, backward, AdamW step)')
    parser.add_argument('--json', type=Path, metavar='PATH', help='also write the results as JSON')
