"""``python -m spanet_pl export (--ckpt RUN.ckpt | --model NAME) --format onnx|exported-program|torchscript --out FILE``

Exports a classifier (a variant, randomly initialised or from an official checkpoint, or a classification run) or a
segmentation run's network (backbone + decode head, logits at the input's resolution):

* ``onnx``: ``torch.onnx.export(dynamo=True)``; the spectral filters are written as DFT-matrix products
  (``models.dft``, the default: onnxruntime runs ``DFT`` nodes of 56/28/14/7 points about 5x slower than the whole
  eager model) or, with ``--onnx-dft dft``, as the exporter's lowering of rfft2/irfft2 to ONNX ``DFT`` nodes;
* ``exported-program``: ``torch.export`` (``.pt2``, load with ``torch.export.load``);
* ``torchscript``: ``torch.jit.script`` of a classifier (``torch.jit.load``); a segmentation network is traced at
  ``--img-size`` (tracing keeps the stage sizes of that input: run it at that size only).

Every export is checked against eager PyTorch on a random batch (onnxruntime for ONNX) and the largest absolute
difference is printed.
"""
import argparse
import logging
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .errors import UserInputError, check_choice
from .models.dft import matmul_dft

__all__ = ['FORMATS', 'export_model', 'check_export', 'benchmark', 'build_network', 'main']

FORMATS = ('onnx', 'exported-program', 'torchscript')
ONNX_DFT = ('matmul', 'dft')
# onnxscript's constant folder warns once per node it cannot fold (harmless: the node stays as it is)
_ONNX_FOLDING_LOGGER = 'onnxscript.optimizer._constant_folding'


def build_network(ckpt: Optional[str] = None, model: Optional[str] = None, official: Optional[str] = None,
                  num_classes: Optional[int] = None) -> Tuple[nn.Module, str]:
    """The network to export and its kind ('classification' or 'segmentation'), in eval mode.

    Args:
        ckpt: a classification or segmentation run's checkpoint.
        model: a variant name (random weights unless ``official`` is given).
        official: an official SPANet/SPANetV2 checkpoint for ``model``.
        num_classes: classifier outputs for ``model`` (default: the variant's 1000).
    """
    if (ckpt is None) == (model is None):
        raise UserInputError('give exactly one of --ckpt RUN.ckpt or --model NAME')
    if ckpt is not None:
        from .tasks.restore import restore_run
        run = restore_run(ckpt)
        return run.network, run.kind
    from .models import create_backbone
    kwargs = {} if num_classes is None else {'num_classes': num_classes}
    return create_backbone(model, official_checkpoint=official, **kwargs).eval(), 'classification'


def _dynamic_shapes(dynamic_batch: bool):
    return ({0: torch.export.Dim('batch', min=1, max=4096)},) if dynamic_batch else None


def export_model(network: nn.Module, fmt: str, out: os.PathLike, img_size: Tuple[int, int] = (224, 224),
                 dynamic_batch: bool = False, opset: int = 18, kind: str = 'classification',
                 onnx_dft: str = 'matmul') -> Tensor:
    """Write ``network`` to ``out`` in ``fmt``; returns the example batch it was exported with.

    A dynamic batch is exported from a batch of 2 (torch.export specialises a batch of 1 to a constant).
    ``onnx_dft``: the spectral filters in ONNX as DFT-matrix products ('matmul', ``models.dft``: onnxruntime runs
    ONNX DFT nodes of non-power-of-two lengths slowly) or as the exporter's lowering of rfft2/irfft2 ('dft').
    """
    check_choice(onnx_dft, ONNX_DFT, 'ONNX spectral-filter form')
    check_choice(fmt, FORMATS, 'export format')
    network = network.eval()
    example = torch.randn(2 if dynamic_batch else 1, 3, *img_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if fmt == 'onnx':
            try:
                import onnxscript  # noqa: F401  (the dynamo exporter's op library)
            except ImportError as error:
                raise UserInputError('--format onnx needs onnx and onnxscript: pip install "spanet_pl[export]"') \
                    from error
            logging.getLogger(_ONNX_FOLDING_LOGGER).setLevel(logging.ERROR)
            with matmul_dft(onnx_dft == 'matmul'):
                torch.onnx.export(network, (example,), str(out), dynamo=True, opset_version=opset,
                                  dynamic_shapes=_dynamic_shapes(dynamic_batch), input_names=['images'],
                                  output_names=['logits'], optimize=True, verbose=False)
        elif fmt == 'exported-program':
            program = torch.export.export(network, (example,), dynamic_shapes=_dynamic_shapes(dynamic_batch))
            torch.export.save(program, str(out))
        elif kind == 'classification':
            torch.jit.script(network).save(str(out))
        else:
            # no re-trace check: the cached spectral masks enter the first trace as constants, so a second trace
            # differs in form (not in value); check_export compares the values with eager PyTorch
            with warnings.catch_warnings():  # the size-dependent branches are meant to be frozen at --img-size
                warnings.simplefilter('ignore', torch.jit.TracerWarning)
                torch.jit.trace(network, example, check_trace=False).save(str(out))
    return example


def _onnx_session(path: Path, threads: int = 0):
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise UserInputError('checking an ONNX export needs onnxruntime: pip install "spanet_pl[export]"') from error
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads  # 0: onnxruntime's default
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def benchmark(network: nn.Module, fmt: str, path: os.PathLike, images: Tensor, iters: int = 20,
              threads: int = 1) -> Tuple[float, float]:
    """Median latency in ms of eager PyTorch and of the exported file on ``images``, interleaved run by run,
    with ``threads`` intra-op threads for both."""
    torch.set_num_threads(threads)
    if fmt == 'onnx':
        session = _onnx_session(Path(path), threads)
        feed = {session.get_inputs()[0].name: images.numpy()}
        exported = lambda: session.run(None, feed)  # noqa: E731
    else:
        module = torch.export.load(str(path)).module() if fmt == 'exported-program' else torch.jit.load(str(path))
        exported = lambda: module(images)  # noqa: E731
    network = network.eval()
    with torch.inference_mode():
        network(images), exported()  # warm-up: caches, allocations
        eager, other = [], []
        for _ in range(iters):  # interleaved: both see the same machine load
            eager.append(_ms(lambda: network(images)))
            other.append(_ms(exported))
    return statistics.median(eager), statistics.median(other)


def check_export(network: nn.Module, fmt: str, path: os.PathLike, images: Tensor) -> float:
    """Largest absolute difference between eager ``network`` and the exported file on ``images``."""
    with torch.no_grad():
        expected = network.eval()(images)
        if fmt == 'onnx':
            session = _onnx_session(Path(path))
            got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])
        elif fmt == 'exported-program':
            got = torch.export.load(str(path)).module()(images)
        else:
            got = torch.jit.load(str(path))(images)
    return (got - expected).abs().max().item()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m spanet_pl export', description='Export a classifier or a segmentation run.',
        epilog='example: python -m spanet_pl export --model spanetv2_s18_pure --format onnx --out s18.onnx '
               '--dynamic-batch')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--ckpt', help='checkpoint of a classification or segmentation run')
    source.add_argument('--model', help='variant name (random weights unless --official)')
    parser.add_argument('--official', help='official checkpoint (.pth) loaded into --model')
    parser.add_argument('--num-classes', type=int, help='classifier outputs of --model (default 1000)')
    parser.add_argument('--format', required=True, choices=FORMATS)
    parser.add_argument('--out', required=True, help='output file (.onnx, .pt2, .pt)')
    parser.add_argument('--img-size', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'),
                        help='input height and width (default 224 224)')
    parser.add_argument('--dynamic-batch', action='store_true', help='any batch size (ONNX, exported-program)')
    parser.add_argument('--opset', type=int, default=18, help='ONNX opset (default 18; DFT needs 17 or later)')
    parser.add_argument('--onnx-dft', choices=ONNX_DFT, default='matmul',
                        help='spectral filters in ONNX as DFT-matrix products (default; fast in onnxruntime) or as '
                             'ONNX DFT nodes')
    parser.add_argument('--no-check', action='store_true', help='skip comparing the export with eager PyTorch')
    parser.add_argument('--bench', type=int, default=0, metavar='N',
                        help='also time eager PyTorch and the export, N runs each, interleaved (median)')
    parser.add_argument('--bench-batch', type=int, default=1, help='batch of --bench (default 1)')
    parser.add_argument('--threads', type=int, default=1, help='intra-op threads of --bench, both runtimes (default 1)')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = _parser().parse_args(argv)
    if args.official and not args.model:
        raise UserInputError('--official needs --model VARIANT')
    if min(args.img_size) < 32:
        raise UserInputError(f'--img-size must be at least 32 x 32 (four downsamplings), got {args.img_size}')
    network, kind = build_network(args.ckpt, args.model, args.official, args.num_classes)
    example = export_model(network, args.format, args.out, tuple(args.img_size), args.dynamic_batch, args.opset, kind,
                           args.onnx_dft)
    print(f'wrote {args.out} ({args.format}, {kind}, input (B, 3, {args.img_size[0]}, {args.img_size[1]}), '
          f'batch {"dynamic" if args.dynamic_batch else example.shape[0]})')
    if not args.no_check:
        images = torch.randn(3 if args.dynamic_batch else example.shape[0], *example.shape[1:])
        print(f'max |exported - eager| = {check_export(network, args.format, args.out, images):.3g} '
              f'(batch {images.shape[0]})')
    if args.bench:
        batch = args.bench_batch if args.dynamic_batch else example.shape[0]
        images = torch.randn(batch, *example.shape[1:])
        eager, exported = benchmark(network, args.format, args.out, images, args.bench, args.threads)
        print(f'latency, batch {batch} at {args.img_size[0]}x{args.img_size[1]}, {args.threads} thread(s), median of '
              f'{args.bench}: eager PyTorch {eager:.1f} ms, {args.format} {exported:.1f} ms ({eager / exported:.2f}x)')
    return Path(args.out)


if __name__ == '__main__':
    main()
